"""Voucher codes: 80 random bits, written `KSW-XXXX-XXXX-XXXX-XXXX` in Crockford base32.

Crockford's alphabet has no I, L, O or U, so a code read aloud or copied by hand survives:
input is upper-cased, dashes and spaces are dropped, and O/I/L are read as 0/1/1.
"""

from __future__ import annotations

import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
PREFIX = "KSW"
GROUPS = 4
GROUP_LENGTH = 4
RANDOM_CHARS = GROUPS * GROUP_LENGTH  # 16 characters x 5 bits = 80 bits
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_code() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CHARS))
    return _format(body)


def normalize(text: str) -> str | None:
    """The canonical form of what a person typed, or None if it cannot be a voucher code."""
    compact = "".join(text.upper().split()).replace("-", "")
    if len(compact) == len(PREFIX) + RANDOM_CHARS and compact.startswith(PREFIX):
        compact = compact[len(PREFIX) :]
    compact = compact.translate(_LOOKALIKES)
    if len(compact) != RANDOM_CHARS or any(char not in ALPHABET for char in compact):
        return None
    return _format(compact)


def _format(body: str) -> str:
    groups = [body[i : i + GROUP_LENGTH] for i in range(0, RANDOM_CHARS, GROUP_LENGTH)]
    return "-".join([PREFIX, *groups])
