"""Leases: what each gateway may serve of a session.

`rules` is the arithmetic (pure, property-tested), `repository` the queries, `ledger` the
steps the rest of the domain calls, one call per step (re-exported here).
"""

from kswifi.control.gateways.leases.ledger import (
    DesiredLeases,
    Exhaustion,
    for_desired_state,
    grant,
    has_undelivered_holds,
    note_exhausted,
    record_served,
    release_holds,
    stamp_for_desired_state,
)

__all__ = [
    "DesiredLeases",
    "Exhaustion",
    "for_desired_state",
    "grant",
    "has_undelivered_holds",
    "note_exhausted",
    "record_served",
    "release_holds",
    "stamp_for_desired_state",
]
