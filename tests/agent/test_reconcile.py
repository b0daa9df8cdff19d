"""reconcile.diff is pure: exhaustive cases plus a property test over arbitrary actual states."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from kswifi.agent.actions import (
    AddPeer,
    ConfigureInterface,
    CreateSession,
    DeleteRate,
    DeleteSession,
    MapAddress,
    RemovePeer,
    SetQuota,
    SetRate,
    ShapeAddress,
    UnmapAddress,
    UnshapeAddress,
    UpdatePeer,
    apply_actions,
)
from kswifi.agent.desired import DesiredTracker, desired_from_state
from kswifi.agent.model import ActualState, InterfaceState, PeerState, SessionObjects
from kswifi.agent.reconcile import Scope, diff, followup_scope
from kswifi.protocol import DesiredState, GatewayInterface, PeerSpec

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
GW_KEY = base64.b64encode(bytes([9]) * 32).decode()


def key(n: int) -> str:
    return base64.b64encode(bytes([n % 256, n // 256]) + bytes(30)).decode()


def spec(
    n: int,
    session: str | None = "s1",
    quota: int = 1_000_000,
    speed: int = 10,
    psk: int = 100,
    expires_at: datetime | None = None,
    v6: bool = True,
) -> PeerSpec:
    allowed = [f"100.64.0.{n}/32"] + ([f"fd00::{n:x}/128"] if v6 else [])
    if session is None:  # the walled garden: a peer without a session's limits
        return PeerSpec(public_key=key(n), preshared_key=key(psk), allowed_ips=allowed)
    return PeerSpec(
        public_key=key(n),
        preshared_key=key(psk),
        allowed_ips=allowed,
        session_id=session,
        quota_bytes=quota,
        speed_mbps=speed,
        expires_at=expires_at,
    )


def desired_state(*peers: PeerSpec, revision: int = 1) -> DesiredState:
    return DesiredState(
        revision=revision,
        interface=GatewayInterface(
            private_key=GW_KEY, public_key=key(999), listen_port=51820, addresses=["100.64.0.1/10"]
        ),
        peers=list(peers),
    )


def converge(state: DesiredState, actual: ActualState, now: datetime = NOW) -> ActualState:
    desired = desired_from_state(state, now)
    for _ in range(3):
        actions = diff(desired, actual)
        if not actions:
            return actual
        actual = apply_actions(actual, actions)
    raise AssertionError("did not converge in 3 passes")


EMPTY = ActualState(interface=None)


class TestFromEmpty:
    def test_one_peer_creates_everything_in_order(self) -> None:
        actions = diff(desired_from_state(desired_state(spec(2)), NOW), EMPTY)
        kinds = [type(a) for a in actions]
        assert kinds == [
            ConfigureInterface,
            CreateSession,
            MapAddress,
            MapAddress,
            AddPeer,
            SetRate,
            ShapeAddress,
            ShapeAddress,
        ]
        assert CreateSession("s1", 1_000_000, 0) in actions
        assert MapAddress("100.64.0.2", "s1") in actions
        assert MapAddress("fd00::2", "s1") in actions

    def test_converged_state_gives_no_actions(self) -> None:
        state = desired_state(spec(2), spec(3, session="s2"))
        actual = converge(state, EMPTY)
        assert diff(desired_from_state(state, NOW), actual) == []

    def test_devices_of_one_session_share_quota_and_rate(self) -> None:
        actions = diff(desired_from_state(desired_state(spec(2), spec(3)), NOW), EMPTY)
        assert sum(isinstance(a, CreateSession) for a in actions) == 1
        assert sum(isinstance(a, SetRate) for a in actions) == 1
        assert sum(isinstance(a, MapAddress) for a in actions) == 4

    def test_no_interface_in_desired_state_leaves_interface_alone(self) -> None:
        state = DesiredState(revision=1, peers=[spec(2)])
        actions = diff(desired_from_state(state, NOW), EMPTY)
        assert not any(isinstance(a, ConfigureInterface) for a in actions)

    def test_default_interface_used_when_control_plane_sends_none(self) -> None:
        default = InterfaceState("k", 51820, frozenset({"100.64.0.1/10"}))
        state = DesiredState(revision=1, peers=[])
        actions = diff(desired_from_state(state, NOW, default_interface=default), EMPTY)
        assert actions == [ConfigureInterface("k", 51820, frozenset({"100.64.0.1/10"}))]


class TestChanges:
    def setup_method(self) -> None:
        self.base = desired_state(spec(2), spec(3, session="s2"))
        self.actual = converge(self.base, EMPTY)

    def changed(self, *peers: PeerSpec) -> list[object]:
        return list(diff(desired_from_state(desired_state(*peers), NOW), self.actual))

    def test_preshared_key_change_is_an_update(self) -> None:
        assert self.changed(spec(2, psk=101), spec(3, session="s2")) == [
            UpdatePeer(key(2), key(101), frozenset({"100.64.0.2", "fd00::2"}))
        ]

    def test_key_rotation_keeps_address_mapping(self) -> None:
        rotated = spec(2).model_copy(update={"public_key": key(50)})
        actions = self.changed(rotated, spec(3, session="s2"))
        assert RemovePeer(key(2), "removed") in actions
        assert AddPeer(key(50), key(100), frozenset({"100.64.0.2", "fd00::2"}), "s1") in actions
        assert not any(isinstance(a, MapAddress | UnmapAddress | CreateSession) for a in actions)

    def test_removed_peer_is_unmapped_then_objects_deleted_next_pass(self) -> None:
        actions = self.changed(spec(3, session="s2"))
        assert actions.index(UnmapAddress("100.64.0.2", "removed")) < actions.index(
            RemovePeer(key(2), "removed")
        )
        assert not any(isinstance(a, DeleteSession) for a in actions)
        assert actions.index(UnshapeAddress("100.64.0.2")) < actions.index(DeleteRate("s1"))
        after = apply_actions(self.actual, actions)  # type: ignore[arg-type]
        second = diff(desired_from_state(desired_state(spec(3, session="s2")), NOW), after)
        assert second == [DeleteSession("s1")]

    def test_speed_tier_change_is_one_rate_change(self) -> None:
        assert self.changed(spec(2, speed=25), spec(3, session="s2")) == [SetRate("s1", 25)]

    def test_quota_raise_in_place_keeps_used(self) -> None:
        assert self.changed(spec(2, quota=2_000_000), spec(3, session="s2")) == [
            SetQuota("s1", 2_000_000, None)
        ]

    def test_quota_raise_after_exhaustion_resets_used_to_served(self) -> None:
        sessions = dict(self.actual.sessions)
        sessions["s1"] = SessionObjects(1_000_000, 1_003_000, 400_000, 599_000)
        self.actual = replace(self.actual, sessions=sessions, served={"s1": 999_000})
        assert self.changed(spec(2, quota=2_000_000), spec(3, session="s2")) == [
            SetQuota("s1", 2_000_000, 999_000)
        ]

    def test_recreated_quota_starts_at_bytes_already_served(self) -> None:
        sessions = dict(self.actual.sessions)
        del sessions["s1"]
        self.actual = replace(self.actual, sessions=sessions, served={"s1": 123})
        assert CreateSession("s1", 1_000_000, 123) in self.changed(spec(2), spec(3, session="s2"))

    def test_lease_override_raises_quota(self) -> None:
        desired = desired_from_state(self.base, NOW, lease_overrides={"s1": 5_000_000})
        assert diff(desired, self.actual) == [SetQuota("s1", 5_000_000, None)]

    def test_unknown_kernel_peer_is_removed(self) -> None:
        peers = dict(self.actual.peers)
        peers[key(77)] = PeerState(key(77), None, frozenset({"10.9.9.9"}))
        self.actual = replace(self.actual, peers=peers)
        assert self.changed(spec(2), spec(3, session="s2")) == [RemovePeer(key(77), "removed")]


class TestExpiry:
    def test_expired_session_is_cut_by_the_agent(self) -> None:
        soon = NOW + timedelta(seconds=1)
        state = desired_state(spec(2, expires_at=soon), spec(3, session="s2"))
        actual = converge(state, EMPTY, now=NOW)
        later = desired_from_state(state, soon)  # expires_at <= now: cut
        actions = diff(later, actual)
        assert UnmapAddress("100.64.0.2", "expired") in actions
        assert RemovePeer(key(2), "expired") in actions
        assert all(getattr(a, "session_id", "s1") != "s2" for a in actions)

    def test_not_yet_expired_session_stays(self) -> None:
        state = desired_state(spec(2, expires_at=NOW + timedelta(seconds=1)))
        actual = converge(state, EMPTY, now=NOW)
        assert diff(desired_from_state(state, NOW), actual) == []


# -- property: any actual state converges to any desired state ---------------------------------

KEYS = list(range(1, 9))
SESSIONS = ["s1", "s2", "s3", "s4"]
EXPIRIES = [None, NOW - timedelta(seconds=1), NOW + timedelta(days=1)]
RATES = [10, 25]
ADDRESSES = [f"100.64.0.{n}" for n in KEYS] + [f"fd00::{n:x}" for n in KEYS]


@st.composite
def desired_states(draw: st.DrawFn) -> DesiredState:
    chosen = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=6))
    peers = [
        spec(
            n,
            session=draw(st.sampled_from(SESSIONS)),
            quota=draw(st.integers(0, 5_000)),
            speed=draw(st.sampled_from([10, 25, 50])),
            psk=draw(st.integers(100, 102)),
            expires_at=draw(
                st.sampled_from([None, NOW - timedelta(seconds=1), NOW + timedelta(1)])
            ),
            v6=draw(st.booleans()),
        )
        for n in chosen
    ]
    return desired_state(*peers)


@st.composite
def actual_states(draw: st.DrawFn) -> ActualState:
    peers = {
        key(n): PeerState(
            key(n),
            draw(st.sampled_from([None, key(100), key(101)])),
            frozenset(draw(st.lists(st.sampled_from(ADDRESSES), max_size=3))),
        )
        for n in draw(st.lists(st.sampled_from([*KEYS, 40, 41]), unique=True, max_size=8))
    }
    sessions = {
        s: SessionObjects(draw(st.integers(0, 5_000)), draw(st.integers(0, 6_000)))
        for s in draw(st.lists(st.sampled_from([*SESSIONS, "old"]), unique=True))
    }
    mapping = st.dictionaries(st.sampled_from(ADDRESSES), st.sampled_from([*SESSIONS, "old"]))
    return ActualState(
        interface=draw(st.sampled_from([None, InterfaceState(GW_KEY, 1, frozenset())])),
        peers=peers,
        sessions=sessions,
        addresses=draw(mapping),
        rates=draw(
            st.dictionaries(st.sampled_from([*SESSIONS, "#tc:9"]), st.sampled_from([10, 25]))
        ),
        shaped=draw(mapping),
        served=draw(st.dictionaries(st.sampled_from(SESSIONS), st.integers(0, 6_000))),
    )


@settings(max_examples=100, deadline=None)
@given(desired_states(), actual_states())
def test_applying_the_diff_reaches_the_desired_state(
    state: DesiredState, actual: ActualState
) -> None:
    desired = desired_from_state(state, NOW)
    actions = diff(desired, actual)
    # Only peers the desired state leaves out are ever removed.
    for action in actions:
        if isinstance(action, RemovePeer):
            assert action.public_key not in desired.peers
    after = apply_actions(actual, actions)
    # One pass makes everything visible right: peers, maps, quotas, rates, filters, interface.
    assert {k: (p.preshared_key, p.allowed_ips) for k, p in after.peers.items()} == {
        k: (p.preshared_key, p.allowed_ips) for k, p in desired.peers.items()
    }
    assert dict(after.addresses) == dict(desired.addresses)
    assert dict(after.shaped) == dict(desired.addresses)
    assert {s: r for s, r in after.rates.items()} == {
        s: d.speed_mbps for s, d in desired.sessions.items()
    }
    for session_id, session in desired.sessions.items():
        assert after.sessions[session_id].quota_bytes == session.quota_bytes
    assert after.interface == desired.interface or desired.interface is None
    # The second pass only deletes objects of sessions that were unmapped in the first one.
    second = diff(desired, after)
    assert all(isinstance(a, DeleteSession) for a in second)
    final = apply_actions(after, second)
    assert set(final.sessions) == set(desired.sessions)
    assert diff(desired, final) == []


# -- incremental: the tracker and the scoped diff give exactly the full conversion and diff ----


def concerns(action: object) -> tuple[str, str] | None:
    """The item an action is about: ("peer", key), ("session", id) or ("address", address)."""
    if isinstance(action, AddPeer | UpdatePeer | RemovePeer):
        return "peer", action.public_key
    if isinstance(action, CreateSession | SetQuota | DeleteSession | SetRate | DeleteRate):
        return "session", action.session_id
    if isinstance(action, MapAddress | UnmapAddress | ShapeAddress | UnshapeAddress):
        return "address", action.address
    return None


def scope_of(actions: list[object], extra: Scope = Scope()) -> Scope:
    items = [item for item in map(concerns, actions) if item is not None]
    return extra | Scope(
        peers=frozenset(v for kind, v in items if kind == "peer"),
        sessions=frozenset(v for kind, v in items if kind == "session"),
        addresses=frozenset(v for kind, v in items if kind == "address"),
    )


extra_scopes = st.builds(
    Scope,
    peers=st.frozensets(st.sampled_from([key(n) for n in [*KEYS, 40]])),
    sessions=st.frozensets(st.sampled_from([*SESSIONS, "old", "#tc:9"])),
    addresses=st.frozensets(st.sampled_from(ADDRESSES)),
)


@settings(max_examples=300, deadline=None)
@given(desired_states(), actual_states(), extra_scopes)
def test_a_scope_holding_every_change_gives_the_full_diff(
    state: DesiredState, actual: ActualState, extra: Scope
) -> None:
    desired = desired_from_state(state, NOW)
    full = diff(desired, actual)
    assert diff(desired, actual, scope_of(full, extra)) == full
    # An empty scope looks at nothing but the interface.
    assert all(isinstance(a, ConfigureInterface) for a in diff(desired, actual, Scope()))


def test_scoped_diff_of_one_new_peer_reads_only_that_peer() -> None:
    state = desired_state(spec(2), spec(3, session="s2"))
    actual = converge(state, EMPTY)
    tracker = DesiredTracker()
    tracker.rebuild(state, NOW)
    bigger = desired_state(*state.peers, spec(4, session="s3"), revision=2)
    scope = tracker.update(bigger, NOW)
    assert scope == Scope(
        peers=frozenset({key(4)}),
        sessions=frozenset({"s3"}),
        addresses=frozenset({"100.64.0.4", "fd00::4"}),
    )
    actions = diff(tracker.desired, actual, scope)
    assert actions == diff(desired_from_state(bigger, NOW), actual)
    assert {type(a) for a in actions} == {CreateSession, MapAddress, AddPeer, SetRate, ShapeAddress}


@st.composite
def peer_specs(draw: st.DrawFn, n: int) -> PeerSpec:
    return spec(
        n,
        session=draw(st.sampled_from([*SESSIONS, None])),
        quota=draw(st.integers(0, 5_000)),
        speed=draw(st.sampled_from([10, 25, 50])),
        psk=draw(st.integers(100, 102)),
        expires_at=draw(st.sampled_from([*EXPIRIES, NOW + timedelta(seconds=5)])),
        v6=draw(st.booleans()),
    )


@st.composite
def histories(
    draw: st.DrawFn,
) -> list[tuple[DesiredState, datetime, dict[str, int]]]:
    """Successive desired states as the control plane sends them: a peer added, changed
    (keys, lease, tier, expiry, session) or removed, whole new states, the same state again
    while time passes (expiries), lease overrides coming and going, and now and then a state
    only a buggy control plane sends (two peers on one address or key: order decides)."""
    steps: list[tuple[DesiredState, datetime, dict[str, int]]] = []
    peers: list[PeerSpec] = []
    now = NOW - timedelta(seconds=2)
    for revision in range(1, draw(st.integers(2, 8)) + 1):
        kind = draw(st.sampled_from(["add", "change", "remove", "same", "new", "ambiguous"]))
        if kind == "add" or (kind in ("change", "remove") and not peers):
            taken = {p.allowed_ips[0] for p in peers}
            free = [n for n in KEYS if f"100.64.0.{n}/32" not in taken]
            if free:
                peers = [*peers, draw(peer_specs(draw(st.sampled_from(free))))]
        elif kind == "change":
            index = draw(st.integers(0, len(peers) - 1))
            n = int(peers[index].allowed_ips[0].removesuffix("/32").rsplit(".", 1)[1])
            changed = draw(peer_specs(n))
            if draw(st.booleans()):  # a rotation: same device, new key
                changed = changed.model_copy(update={"public_key": key(n + 50)})
            peers = [*peers[:index], changed, *peers[index + 1 :]]
        elif kind == "remove":
            index = draw(st.integers(0, len(peers) - 1))
            peers = peers[:index] + peers[index + 1 :]
        elif kind == "new":
            peers = list(draw(desired_states()).peers)
        now += timedelta(seconds=draw(st.sampled_from([0, 1, 3])))
        overrides = draw(st.dictionaries(st.sampled_from(SESSIONS), st.integers(0, 9_000)))
        if kind == "same" and steps:
            steps.append((steps[-1][0], now, overrides))
            continue
        if kind == "ambiguous" and peers:
            clash = draw(st.sampled_from(peers))
            twin = spec(7 if clash.public_key != key(7) else 8, session="s4")
            twin = twin.model_copy(update={"allowed_ips": list(clash.allowed_ips)})
            twins = [twin, clash] if draw(st.booleans()) else [clash]
            steps.append(
                (
                    DesiredState.model_construct(
                        revision=revision,
                        interface=desired_state().interface,
                        peers=[*peers, *twins],
                    ),
                    now,
                    overrides,
                )
            )
            continue
        steps.append((desired_state(*peers, revision=revision), now, overrides))
    return steps


@settings(max_examples=300, deadline=None)
@given(histories(), actual_states())
def test_the_tracker_and_scoped_diff_follow_any_history_like_the_full_diff(
    history: list[tuple[DesiredState, datetime, dict[str, int]]], start: ActualState
) -> None:
    """The agent's loop without a kernel: a full pass first, then every change through the
    tracker and the scoped diff (plus what the last apply left to follow up). Each step's view
    and actions are exactly the full conversion's and the full diff's."""
    tracker = DesiredTracker()
    actual = start
    followup = Scope()
    for number, (state, now, overrides) in enumerate(history):
        if number == 0:
            tracker.rebuild(state, now, overrides)
            scope = None
        else:
            scope = tracker.update(state, now, overrides)
        full_view = desired_from_state(state, now, lease_overrides=overrides)
        assert tracker.desired == full_view
        if scope is not None:
            scope |= followup
        actions = diff(tracker.desired, actual, scope)
        assert actions == diff(full_view, actual)
        followup = followup_scope(actions, actual)  # type: ignore[arg-type]
        actual = apply_actions(actual, actions)
    # Once the changes stop, the next pass only finishes what the last one started (a state
    # with two peers on one address never settles: WireGuard moves it to the last one set).
    state, now, overrides = history[-1]
    if tracker.ambiguous:
        return
    scope = tracker.update(state, now, overrides)
    assert scope is None or not (scope.peers or scope.addresses)
    last = diff(tracker.desired, actual, None if scope is None else scope | followup)
    assert all(isinstance(a, DeleteSession) for a in last)
    assert diff(tracker.desired, apply_actions(actual, last)) == []
