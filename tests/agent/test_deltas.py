"""Deltas on the agent's side: applying `make_delta` of any two states to a book of the first
gives the second, and the tracker fed a delta's changes sees exactly what the whole state's
conversion gives (and the scoped diff equals the full one), through any history."""

from __future__ import annotations

from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kswifi.agent.actions import apply_actions
from kswifi.agent.desired import DesiredTracker, desired_from_state
from kswifi.agent.model import ActualState
from kswifi.agent.reconcile import Scope, diff, followup_scope
from kswifi.protocol import DesiredDelta, DesiredState, PeerSpec
from kswifi.protocol.deltas import DeltaRefused, PeerBook, make_delta, peers_by_key
from kswifi.protocol.models import check_peers
from tests.agent.test_reconcile import actual_states, desired_states, histories


@settings(max_examples=300, deadline=None)
@given(st.lists(desired_states(), min_size=1, max_size=8))
def test_applying_deltas_gives_each_whole_state(states: list[DesiredState]) -> None:
    states = [state.model_copy(update={"revision": n}) for n, state in enumerate(states)]
    book = PeerBook.of(states[0], "t0")
    for number, state in enumerate(states[1:], start=1):
        delta = make_delta(book.specs, book.state.revision, state)
        # The wire: what the control plane sends is what the agent parses.
        delta = type(delta).model_validate_json(delta.model_dump_json())
        changes = book.apply(delta, f"t{number}")
        assert peers_by_key(book.state) == peers_by_key(state)
        assert book.state.revision == state.revision and book.tag == f"t{number}"
        assert book.state.interface == state.interface and book.state.garden == state.garden
        assert set(changes) == {peer.public_key for peer in delta.upsert} | set(delta.remove)
        assert book.owners == {
            address: peer.public_key for peer in state.peers for address in peer.allowed_ips
        }


def _one_peer_per_key_and_address(state: DesiredState) -> bool:
    try:
        check_peers(state.interface, state.peers)
    except ValueError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(histories(), actual_states())
def test_the_tracker_fed_deltas_follows_any_history_like_the_full_diff(
    history: list[tuple[DesiredState, datetime, dict[str, int]]], start: ActualState
) -> None:
    """As the agent runs: a whole state first, then each change as a delta (a delta the book
    refuses, such as one giving a peer another's address, makes it take the whole state).

    A state only a buggy control plane sends (two peers on one key or address) cannot be held
    in a book, one peer per key: it goes whole to the tracker, where order decides, and the
    next state is whole too."""
    tracker = DesiredTracker()
    book: PeerBook | None = None
    actual = start
    followup = Scope()
    for number, (state, now, overrides) in enumerate(history):
        changes: dict[str, PeerSpec | None] | None = None
        view = state
        if not _one_peer_per_key_and_address(state):
            book = None
        if book is not None:
            try:  # as the agent gets it: parsed (and checked) from the wire
                delta = DesiredDelta.model_validate_json(
                    make_delta(book.specs, book.state.revision, state).model_dump_json()
                )
                changes = book.apply(delta, str(number))
                view = book.state
            except (DeltaRefused, ValidationError):
                book = None
        if book is None and _one_peer_per_key_and_address(state):
            book = PeerBook.of(state, str(number))
        if number == 0:
            tracker.rebuild(view, now, overrides)
            scope = None
        else:
            scope = tracker.update(view, now, overrides, changes)
        full_view = desired_from_state(state, now, lease_overrides=overrides)
        assert tracker.desired == full_view
        if scope is not None:
            scope |= followup
        actions = diff(tracker.desired, actual, scope)
        assert actions == diff(full_view, actual)
        followup = followup_scope(actions, actual)  # type: ignore[arg-type]
        actual = apply_actions(actual, actions)
