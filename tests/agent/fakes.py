"""In-memory fakes that implement the agent's real interfaces (Dataplane, ControlPlane)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from kswifi.agent.actions import Action, CreateSession, DeleteSession, apply_actions
from kswifi.agent.dataplane import Observation
from kswifi.agent.drivers.nftables import NftReading
from kswifi.agent.drivers.tc_layout import (
    DeviceReading,
    FilterEntry,
    TcReading,
    bucket_class,
    bucket_of,
)
from kswifi.agent.drivers.wireguard import InterfaceMode, WireguardReading
from kswifi.agent.errors import ControlPlaneError, DriverError
from kswifi.agent.firewall import Garden
from kswifi.agent.model import ActualState, Direction, SessionObjects
from kswifi.protocol import (
    DesiredState,
    DesiredUpdate,
    GatewayHeartbeat,
    HeartbeatAck,
    LeaseGrant,
    LeaseResponse,
    UsageAck,
    UsageReport,
)
from kswifi.protocol.deltas import make_delta, peers_by_key
from kswifi.protocol.models import PeerSpec


@dataclass
class FakeDataplane:
    """A kernel that does exactly what the actions say (`actions.apply_actions`), with
    counters the test drives through `count()`. Survives agent restarts like the kernel."""

    state: ActualState = field(default_factory=lambda: ActualState(interface=None))
    counters: dict[tuple[str, Direction], tuple[int, int]] = field(default_factory=dict)
    minors: dict[str, int] = field(default_factory=dict)
    applied: list[list[Action]] = field(default_factory=list)
    next_handle: int = 100
    prepared: int = 0
    observed: int = 0
    usage_reads: int = 0
    fail_next_apply: bool = False
    garden: Garden | None = None

    @property
    def mode(self) -> InterfaceMode | None:
        return "userspace"

    def prepare(self) -> InterfaceMode:
        self.prepared += 1
        return "userspace"

    def _nft(self) -> NftReading:
        return NftReading(
            sessions=dict(self.state.sessions),
            addresses=dict(self.state.addresses),
            counters=dict(self.counters),
        )

    def observe(self) -> Observation:
        self.observed += 1
        return self._observation()

    def _observation(self) -> Observation:
        filters = {
            address: FilterEntry(4, 0, 0, self.minors[session])
            for address, session in self.state.shaped.items()
            if session in self.minors
        }
        classes = {self.minors[s]: rate for s, rate in self.state.rates.items()}
        routes = {
            address: FilterEntry(4, 0, 0, bucket_class(bucket_of(entry.minor)))
            for address, entry in filters.items()
        }
        buckets = {bucket_of(minor) for minor in classes}
        device = DeviceReading(classes, filters, True, routes, buckets)
        return Observation(
            WireguardReading(self.state.interface, dict(self.state.peers)),  # type: ignore[arg-type]
            self._nft(),
            TcReading(device, device),
            {s: self.minors[s] for s in self.state.rates},
        )

    def apply(self, actions: Sequence[Action], observation: Observation) -> Observation:
        if self.fail_next_apply:
            self.fail_next_apply = False
            raise DriverError("injected failure")
        self.applied.append(list(actions))
        self.state = apply_actions(self.state, actions)
        for session in self.state.rates:
            self.minors.setdefault(session, len(self.minors) + 1)
        for action in actions:
            if isinstance(action, CreateSession):
                for direction in ("up", "down"):
                    self.counters[(action.session_id, direction)] = (self.next_handle, 0)  # type: ignore[index]
                    self.next_handle += 1
            elif isinstance(action, DeleteSession):
                self.counters.pop((action.session_id, "up"), None)
                self.counters.pop((action.session_id, "down"), None)
        return self._observation()

    def read_usage(self) -> NftReading:
        self.usage_reads += 1
        return self._nft()

    def use_garden(self, garden: Garden | None) -> None:
        self.garden = garden

    def read_peers(self) -> WireguardReading:
        return WireguardReading(self.state.interface, dict(self.state.peers))  # type: ignore[arg-type]

    def count(self, session_id: str, up: int = 0, down: int = 0) -> int:
        """Traffic through the quota like the kernel: returns bytes let through."""
        objects = self.state.sessions[session_id]
        allowed = 0
        for direction, amount in (("up", up), ("down", down)):
            for _ in range(amount // 1000):
                used = objects.used_bytes + 1000
                objects = replace(objects, used_bytes=used)
                if used >= objects.quota_bytes:
                    continue  # dropped: counted by the quota, not by the counter
                handle, value = self.counters[(session_id, direction)]  # type: ignore[index]
                self.counters[(session_id, direction)] = (handle, value + 1000)  # type: ignore[index]
                allowed += 1000
        sessions = dict(self.state.sessions)
        sessions[session_id] = objects
        self.state = replace(self.state, sessions=sessions)
        return allowed


@dataclass
class FakeControlPlane:
    """The gateway protocol's server half, in memory; `up=False` makes every call fail."""

    states: list[DesiredState] = field(default_factory=list)
    up: bool = True
    last_sequence: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    reports: list[UsageReport] = field(default_factory=list)
    heartbeats: list[GatewayHeartbeat] = field(default_factory=list)
    lease_requests: list[list[str]] = field(default_factory=list)
    grants: dict[str, int] = field(default_factory=dict)

    def _check(self) -> None:
        if not self.up:
            raise ControlPlaneError("connection refused")

    sent: dict[str, tuple[int, dict[str, PeerSpec]]] = field(default_factory=dict)
    """tag -> (revision, peers) of every answer given: a later ask names one to get a delta."""
    answers: list[tuple[str, int]] = field(default_factory=list)
    """(kind, revision) of every desired-state answer, in order."""

    async def desired_update(
        self, since: int | None = None, known: str | None = None
    ) -> DesiredUpdate:
        """The last state: whole, or as a delta from the answer `known` names."""
        self._check()
        state = self.states[-1]
        tag = f"t{len(self.sent) + 1}"
        base = self.sent.get(known) if since is not None and known is not None else None
        self.sent[tag] = (state.revision, peers_by_key(state))
        self.answers.append(("full" if base is None else "delta", state.revision))
        if base is None:
            return DesiredUpdate(kind="full", tag=tag, state=state)
        return DesiredUpdate(kind="delta", tag=tag, delta=make_delta(base[1], base[0], state))

    async def post_usage(self, report: UsageReport) -> UsageAck:
        self._check()
        if report.sequence <= self.last_sequence:
            return UsageAck(accepted=False, duplicate=True, last_sequence=self.last_sequence)
        self.last_sequence = report.sequence
        self.reports.append(report)
        for delta in report.deltas:
            total = self.totals.get(delta.session_id, 0)
            self.totals[delta.session_id] = total + delta.rx_bytes + delta.tx_bytes
        return UsageAck(accepted=True, duplicate=False, last_sequence=report.sequence)

    async def heartbeat(self, heartbeat: GatewayHeartbeat) -> HeartbeatAck:
        self._check()
        self.heartbeats.append(heartbeat)
        return HeartbeatAck(ok=True, server_time=datetime.now(UTC))

    async def leases(self, session_ids: list[str]) -> LeaseResponse:
        self._check()
        self.lease_requests.append(session_ids)
        return LeaseResponse(
            revision=self.states[-1].revision + 1,
            leases=[
                LeaseGrant(session_id=s, quota_bytes=self.grants[s])
                for s in session_ids
                if s in self.grants
            ],
        )


def session_objects(state: ActualState, session_id: str) -> SessionObjects:
    return state.sessions[session_id]
