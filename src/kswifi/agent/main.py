"""The agent loop: long-poll + reconcile, 1 s usage read and report, heartbeats, leases.

Tasks share one lock around the data plane. The agent keeps enforcing when the control
plane is unreachable: the last desired state is persisted (expiries keep cutting, quotas
keep their leases) and usage reports wait in the on-disk spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import structlog

from kswifi.agent import AGENT_VERSION
from kswifi.agent.actions import (
    Action,
    AddPeer,
    CreateSession,
    DeleteSession,
    RemovePeer,
    SetQuota,
    summarize,
)
from kswifi.agent.config import GatewaySettings
from kswifi.agent.dataplane import Dataplane, Observation
from kswifi.agent.desired import DesiredTracker
from kswifi.agent.drivers.nftables import NftReading
from kswifi.agent.errors import AgentError, AuthenticationError, ControlPlaneError
from kswifi.agent.firewall import Garden
from kswifi.agent.garden_redirect import GardenRedirect
from kswifi.agent.keys import generate_private_key
from kswifi.agent.metrics import AgentMetrics
from kswifi.agent.model import InterfaceState
from kswifi.agent.reconcile import Scope, diff, followup_scope
from kswifi.agent.usage import UsageTracker, write_atomic
from kswifi.protocol import (
    DesiredState,
    DesiredUpdate,
    GatewayHeartbeat,
    HeartbeatAck,
    LeaseGrant,
    LeaseResponse,
    PeerSpec,
    UsageAck,
    UsageReport,
)
from kswifi.protocol.deltas import DeltaRefused, PeerBook

log = structlog.get_logger("kswifi.agent")
PEER_LOG_LIMIT = 50


class ControlPlane(Protocol):
    """The calls the agent makes (ControlPlaneClient, or a fake in tests)."""

    async def desired_update(
        self, since: int | None = None, known: str | None = None
    ) -> DesiredUpdate: ...

    async def post_usage(self, report: UsageReport) -> UsageAck: ...

    async def heartbeat(self, heartbeat: GatewayHeartbeat) -> HeartbeatAck: ...

    async def leases(self, session_ids: list[str]) -> LeaseResponse: ...


def load_or_create_private_key(state_dir: Path) -> str:
    """The fallback interface key (used only if the control plane does not send one)."""
    path = state_dir / "private.key"
    if path.exists():
        return path.read_text().strip()
    key = generate_private_key()
    write_atomic(path, (key + "\n").encode())
    return key


@dataclass
class Throughput:
    rx_bps: int = 0
    tx_bps: int = 0


class Agent:
    """One gateway agent: owns the local data plane, nothing else."""

    def __init__(
        self,
        settings: GatewaySettings,
        dataplane: Dataplane,
        control: ControlPlane,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or AgentMetrics()
        self.dataplane = dataplane
        self.control = control
        self.clock = clock
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.state_dir, 0o700)
        self.tracker = UsageTracker(settings.state_dir)
        self.default_interface = InterfaceState(
            private_key=load_or_create_private_key(settings.state_dir),
            listen_port=settings.listen_port,
            addresses=frozenset(settings.addresses),
        )
        self.desired_state: DesiredState | None = self._load_desired_state()
        self.book: PeerBook | None = None
        """The state the control plane last sent, which its deltas apply to (none after a
        restart: the first answer is the whole state)."""
        self._store_pending = False
        self._store_task: asyncio.Task[None] | None = None
        self.pending_changes: dict[str, PeerSpec | None] | None = None
        """Peers changed by deltas since the last reconcile took the state (None: unknown,
        compare the whole state)."""
        self.applied_revision = 0
        self.reported_revision = 0  # the last applied revision a prompt heartbeat reported
        self.observation: Observation | None = None
        """The data plane as the last read or apply left it (None: read it in full next)."""
        self.desired = DesiredTracker(self.default_interface)
        """The desired view, followed change by change between full resyncs."""
        self.followup = Scope()
        """What the last apply left for the next pass (objects of sessions it unmapped)."""
        self.resync_due = False
        self.reconcile_seconds = 0.0
        self.lease_overrides: dict[str, int] = {}
        self.lease_revision = 0
        self.lease_asked_at: dict[str, float] = {}
        self.throughput = Throughput()
        self.control_plane_up: bool | None = None  # unknown until the first call
        self.lock = asyncio.Lock()
        self.reconcile_needed = asyncio.Event()
        self.desired_changed = asyncio.Event()
        self.report_ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.garden_bytes = (0, 0)
        """Bytes forwarded from and to walled-garden peers, as last read (kernel counters)."""
        self.garden_redirect = GardenRedirect()

    # -- persisted desired state -------------------------------------------------------------

    @property
    def desired_path(self) -> Path:
        return self.settings.state_dir / "desired-state.json"

    def _load_desired_state(self) -> DesiredState | None:
        try:
            return DesiredState.model_validate_json(self.desired_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("desired_state_file_unreadable", path=str(self.desired_path))
            return None

    def _store_desired_state(self, state: DesiredState) -> None:
        # Holds preshared keys and the interface key: 0600 (write_atomic), never logged.
        write_atomic(self.desired_path, state.model_dump_json().encode())

    def _store_soon(self) -> None:
        """Persist the latest desired state beside the reconcile, never before it: at 50,000
        peers it is megabytes of JSON. Changes that arrive during a write are written after
        it, together."""
        self._store_pending = True
        if self._store_task is None or self._store_task.done():
            self._store_task = asyncio.create_task(self._store_latest(), name="store")

    async def _store_latest(self) -> None:
        while self._store_pending:
            self._store_pending = False
            state = self.desired_state
            if state is not None:
                await asyncio.to_thread(self._store_desired_state, state)

    # -- reconcile ---------------------------------------------------------------------------

    def _harvest(self, reading: NftReading) -> UsageReport | None:
        if not reading.table_present:
            return None
        self.garden_bytes = reading.garden
        report = self.tracker.observe(reading.counters, reading.exhausted(), now=self.clock())
        if report is not None:
            self.report_ready.set()
        return report

    async def reconcile_once(self, full: bool = False) -> list[Action]:
        """Diff the desired state against the data plane and apply; returns the actions.

        The data plane is read in full only at start, on the periodic resync (`full`) and
        after a failed apply; otherwise the diff runs against the state the last apply left
        (kept in memory), refreshed by a usage read when quotas change or objects go. Between
        full reads the desired view is updated peer by peer and only what changed is diffed,
        so one new peer costs the same whatever the gateway holds; a full read (start,
        resync, after a failure) converts and diffs everything.
        """
        state = self.desired_state
        if state is None:
            return []  # never touch a data plane before knowing what it should be
        changes, self.pending_changes = self.pending_changes, {}
        try:
            return await self._reconcile(state, changes, full)
        except BaseException:
            self.pending_changes = None  # what the tracker followed is unknown: compare all
            raise

    async def _reconcile(
        self, state: DesiredState, changes: dict[str, PeerSpec | None] | None, full: bool
    ) -> list[Action]:
        async with self.lock:
            started = time.perf_counter()
            observation = None if full else self.observation
            if observation is None:
                observation = await asyncio.to_thread(self.dataplane.observe)
                self._harvest(observation.nft)
                fresh = True
            else:
                fresh = False
            garden = (
                Garden.from_spec(state.garden, self.settings.garden_port)
                if state.garden is not None
                else None
            )
            await asyncio.to_thread(self.dataplane.use_garden, garden)
            if self.lease_revision and state.revision >= self.lease_revision:
                self.lease_overrides.clear()
            now = self.clock()
            scope: Scope | None = None
            if full:
                self.desired.rebuild(state, now, self.lease_overrides)
            else:
                scope = self.desired.update(state, now, self.lease_overrides, changes)
            if fresh:
                scope = None  # a read of the whole data plane is diffed whole
            elif scope is not None:
                scope |= self.followup
            desired = self.desired.desired
            actual = observation.actual(self.tracker.served)
            actions = diff(desired, actual, scope)
            if not fresh and any(isinstance(a, SetQuota | DeleteSession) for a in actions):
                # Exhaustion decides how a quota changes, and deleted counters must have
                # been read one last time: read quotas and counters now (one dump).
                reading = await asyncio.to_thread(self.dataplane.read_usage)
                self._harvest(reading)
                observation = observation.with_usage(reading)
                actual = observation.actual(self.tracker.served)
                actions = diff(desired, actual, scope)
            followup = followup_scope(actions, actual)  # before the apply uses `actual` up
            if actions:
                self.observation = None  # unknown until the apply succeeded
                observation = await asyncio.to_thread(self.dataplane.apply, actions, observation)
                created = [a.session_id for a in actions if isinstance(a, CreateSession)]
                self.tracker.forget(created)
            self.followup = followup
            self.observation = observation
            self.applied_revision = state.revision
        self.reconcile_seconds = time.perf_counter() - started
        await self._serve_garden(state, desired.interface)
        if actions:
            self.metrics.reconcile_seconds.observe(self.reconcile_seconds)
        self._log_actions(actions, state.revision, self.reconcile_seconds)
        if self.followup:
            self.reconcile_needed.set()  # next pass deletes the unmapped sessions' objects
        return actions

    async def _serve_garden(self, state: DesiredState, interface: InterfaceState | None) -> None:
        """The redirect page of the walled garden, on the tunnel's addresses (see
        `garden_redirect`); closed when the control plane sends no garden."""
        if state.garden is None or interface is None:
            await self.garden_redirect.close()
            return
        await self.garden_redirect.serve(
            sorted(interface.addresses), self.settings.garden_port, state.garden.redirect_url
        )

    def _log_actions(self, actions: Sequence[Action], revision: int, seconds: float) -> None:
        if not actions:
            return
        # One line per peer for everyday changes; a bulk change (a restart onto 10,000 peers)
        # is summarized, or the log would cost more than the reconcile.
        peer_changes = sum(isinstance(a, AddPeer | RemovePeer) for a in actions)
        for action in actions if peer_changes <= PEER_LOG_LIMIT else ():
            if isinstance(action, AddPeer):
                log.info(
                    "peer_added", public_key=action.public_key[:8], session_id=action.session_id
                )
            elif isinstance(action, RemovePeer):
                log.info("peer_removed", public_key=action.public_key[:8], reason=action.reason)
        log.info(
            "reconciled",
            revision=revision,
            actions=summarize(actions),
            seconds=round(seconds, 3),
        )

    async def _reconcile_loop(self) -> None:
        while not self.stopping.is_set():
            await self.reconcile_needed.wait()
            self.reconcile_needed.clear()
            full, self.resync_due = self.resync_due, False
            try:
                await self.reconcile_once(full=full)
            except AgentError as exc:
                log.error("reconcile_failed", error=str(exc))
                await asyncio.sleep(1.0)
                self.reconcile_needed.set()

    async def _resync_loop(self) -> None:
        """Every `resync_interval_s`, read the whole data plane again (someone may have
        changed it behind the agent's back) and repair it."""
        while not self.stopping.is_set():
            await asyncio.sleep(self.settings.resync_interval_s)
            self.resync_due = True
            self.reconcile_needed.set()

    async def _expiry_loop(self) -> None:
        """Wake a reconcile the moment the next session expires (control plane or not)."""
        while not self.stopping.is_set():
            self.desired_changed.clear()
            next_expiry = self._next_expiry()
            timeout = None
            if next_expiry is not None:
                timeout = max(0.0, (next_expiry - self.clock()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.desired_changed.wait(), timeout)
                continue
            log.info("session_expiry_due", at=next_expiry.isoformat() if next_expiry else None)
            self.reconcile_needed.set()
            await asyncio.sleep(0.05)

    def _next_expiry(self) -> datetime | None:
        if self.desired_state is None:
            return None
        now = self.clock()
        upcoming = [
            peer.expires_at
            for peer in self.desired_state.peers
            if peer.expires_at is not None and peer.expires_at > now
        ]
        return min(upcoming, default=None)

    # -- control plane: desired state ---------------------------------------------------------

    async def _poll_loop(self) -> None:
        since: int | None = None
        backoff = 1.0
        while not self.stopping.is_set():
            asked_at = time.monotonic()
            known = self.book.tag if self.book is not None and since is not None else None
            try:
                update = await self.control.desired_update(since, known)
            except AuthenticationError as exc:
                self._control_plane_down(exc)
                await asyncio.sleep(30.0)
                continue
            except ControlPlaneError as exc:
                self._control_plane_down(exc)
                since = None  # a refused answer may have been a delta: start over whole
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self._control_plane_back()
            state = self._follow(update)
            if state is None:
                since = None  # a delta that does not follow: ask for the whole state
                await asyncio.sleep(backoff)  # never a tight loop against a broken server
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 1.0
            current = self.desired_state
            # A new revision differs: no need to compare 10,000 peers to know it.
            if current is None or state.revision != current.revision or state != current:
                log.info(
                    "desired_state", revision=state.revision, peers=len(state.peers),
                    kind=update.kind,
                )  # fmt: skip
                self.desired_state = state
                self.desired_changed.set()
                self.reconcile_needed.set()
                self._store_soon()
            elif time.monotonic() - asked_at < 0.5:
                # Same revision answered at once: a server that does not hold long-polls.
                await asyncio.sleep(1.0)
            since = state.revision

    def _follow(self, update: DesiredUpdate) -> DesiredState | None:
        """The state an answer makes: the whole one, or the one held with the delta applied
        (None: the delta does not follow from what is held, or would break it)."""
        if update.state is not None:
            self.book = PeerBook.of(update.state, update.tag)
            self.pending_changes = None
            return update.state
        if self.book is None or update.delta is None:
            return None
        try:
            changes = self.book.apply(update.delta, update.tag)
        except DeltaRefused as exc:
            log.warning("desired_delta_refused", error=str(exc), kept=self.book.state.revision)
            self.book = None
            return None
        if self.pending_changes is not None:
            self.pending_changes.update(changes)
        return self.book.state

    def _control_plane_down(self, exc: Exception) -> None:
        self.metrics.control_plane_errors.inc()
        if self.control_plane_up is not False:
            log.warning("control_plane_unreachable", error=str(exc), enforcing="last state")
        self.control_plane_up = False

    def _control_plane_back(self) -> None:
        if self.control_plane_up is not True:
            log.info("control_plane_reachable")
        self.control_plane_up = True

    # -- usage -------------------------------------------------------------------------------

    async def usage_once(self) -> UsageReport | None:
        """Read all counters once (one nft call), spool a report of what changed."""
        async with self.lock:
            reading = await asyncio.to_thread(self.dataplane.read_usage)
            report = self._harvest(reading)
            if self.observation is not None:
                # Someone removed the table: only a full read tells what is left.
                present = reading.table_present
                self.observation = self.observation.with_usage(reading) if present else None
        interval = self.settings.usage_interval_s
        if report is not None:
            self.throughput = Throughput(
                rx_bps=int(sum(d.rx_bytes for d in report.deltas) * 8 / interval),
                tx_bps=int(sum(d.tx_bytes for d in report.deltas) * 8 / interval),
            )
            self.metrics.bytes_served.labels("upload").inc(sum(d.rx_bytes for d in report.deltas))
            self.metrics.bytes_served.labels("download").inc(sum(d.tx_bytes for d in report.deltas))
            for delta in report.deltas:
                if delta.quota_exhausted:
                    self.metrics.quota_exhaustions.inc()
                    log.info("quota_exhausted", session_id=delta.session_id)
        else:
            self.throughput = Throughput()
        return report

    async def _usage_loop(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await self.usage_once()
                await self._refill_leases()
            except AgentError as exc:
                log.error("usage_read_failed", error=str(exc))
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.settings.usage_interval_s - elapsed))

    async def deliver_usage(self) -> int:
        """Send spooled reports oldest first; stops at the first failure. Returns how many."""
        sent = 0
        for report in await asyncio.to_thread(self.tracker.pending):
            try:
                ack = await self.control.post_usage(report)
            except ControlPlaneError as exc:
                self._control_plane_down(exc)
                break
            if not await asyncio.to_thread(self.tracker.acknowledge, report, ack):
                log.warning(
                    "usage_not_accepted",
                    sequence=report.sequence,
                    last_sequence=ack.last_sequence,
                )
                break
            sent += 1
            self._apply_lease_grants(ack.leases, None)
        return sent

    async def _sender_loop(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.report_ready.wait(), 1.0)
            self.report_ready.clear()
            try:
                await self.deliver_usage()
            except (AgentError, OSError, ValueError) as exc:
                log.error("usage_delivery_failed", error=str(exc))

    # -- leases ------------------------------------------------------------------------------

    async def _refill_leases(self) -> None:
        """Ask for more lease for sessions that used `lease_refill_fraction` of theirs."""
        state = self.desired_state
        if state is None:
            return
        now = time.monotonic()
        due: list[str] = []
        for peer in state.peers:
            session_id = peer.session_id
            if session_id is None:
                continue  # the walled garden: no lease
            quota = max(peer.quota_bytes, self.lease_overrides.get(session_id, 0))
            served = self.tracker.served.get(session_id, 0)
            # A lease of 0 (the session's budget is leased to other gateways) asks too.
            nearly_used = served >= quota * self.settings.lease_refill_fraction
            if nearly_used and now - self.lease_asked_at.get(session_id, 0.0) >= 10.0:
                due.append(session_id)
        due = sorted(set(due))
        if not due:
            return
        for session_id in due:
            self.lease_asked_at[session_id] = now
        try:
            response = await self.control.leases(due)
        except ControlPlaneError as exc:
            self._control_plane_down(exc)
            return
        self._apply_lease_grants(response.leases, response.revision)

    def _apply_lease_grants(self, grants: Sequence[LeaseGrant], revision: int | None) -> None:
        """Remember grants larger than the desired state's lease until a desired state at
        `revision` (or newer) includes them."""
        state = self.desired_state
        if state is None:
            return
        leased = {
            peer.session_id: peer.quota_bytes for peer in state.peers if peer.session_id is not None
        }
        raised = []
        for grant in grants:
            if grant.session_id not in leased:
                continue
            held = max(leased[grant.session_id], self.lease_overrides.get(grant.session_id, 0))
            if grant.quota_bytes > held:
                raised.append(grant)
        if not raised:
            return
        for grant in raised:
            self.lease_overrides[grant.session_id] = grant.quota_bytes
        self.lease_revision = max(self.lease_revision, revision or state.revision + 1)
        log.info("lease_granted", sessions=len(raised), revision=self.lease_revision)
        self.reconcile_needed.set()

    # -- heartbeat ---------------------------------------------------------------------------

    async def heartbeat_once(self) -> None:
        mode = self.dataplane.mode or "userspace"
        async with self.lock:
            reading = await asyncio.to_thread(self.dataplane.read_peers)
        heartbeat = GatewayHeartbeat(
            agent_version=AGENT_VERSION,
            interface_mode=mode,
            peer_count=len(reading.peers),
            rx_bps=self.throughput.rx_bps,
            tx_bps=self.throughput.tx_bps,
            applied_revision=self.applied_revision,
            handshakes={
                key: peer.latest_handshake
                for key, peer in reading.peers.items()
                if peer.latest_handshake is not None
            },
            garden_rx_bytes=self.garden_bytes[0],
            garden_tx_bytes=self.garden_bytes[1],
        )
        await self.control.heartbeat(heartbeat)

    async def _heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.heartbeat_once()
            except ControlPlaneError as exc:
                self._control_plane_down(exc)
            except AgentError as exc:
                log.error("heartbeat_failed", error=str(exc))
            await self._until_next_heartbeat(self.settings.heartbeat_interval_s)

    async def _until_next_heartbeat(self, seconds: float) -> None:
        """Wait the heartbeat interval, or less: a desired state that lowered a lease asks to
        hear as soon as it is applied (the bytes it gives back are free for other gateways
        only then)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0 and not self.stopping.is_set():
            state = self.desired_state
            if (
                state is not None
                and state.report_applied
                and self.applied_revision >= state.revision > self.reported_revision
            ):
                self.reported_revision = state.revision
                return
            await asyncio.sleep(min(left, 0.1))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Prepare the data plane (reusing a running interface) and enforce the last state."""
        mode = await asyncio.to_thread(self.dataplane.prepare)
        log.info(
            "gateway_started",
            version=AGENT_VERSION,
            interface=self.settings.interface,
            interface_mode=mode,
            state_dir=str(self.settings.state_dir),
            pending_reports=len(self.tracker.pending()),
            cached_revision=self.desired_state.revision if self.desired_state else None,
        )
        if self.desired_state is not None:
            await self.reconcile_once(full=True)
        return mode

    async def run(self) -> None:
        await self.start()
        tasks = [
            asyncio.create_task(coroutine, name=name)
            for name, coroutine in (
                ("poll", self._poll_loop()),
                ("reconcile", self._reconcile_loop()),
                ("resync", self._resync_loop()),
                ("expiry", self._expiry_loop()),
                ("usage", self._usage_loop()),
                ("sender", self._sender_loop()),
                ("heartbeat", self._heartbeat_loop()),
            )
        ]
        try:
            await self.stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._store_task is not None:
                await asyncio.gather(self._store_task, return_exceptions=True)
            # Final read so bytes counted up to now are spooled (the data plane stays up).
            with contextlib.suppress(AgentError):
                await self.usage_once()
            await self.garden_redirect.close()
            log.info("gateway_stopped")

    def stop(self) -> None:
        self.stopping.set()


def describe(settings: GatewaySettings) -> str:
    """Operator-facing summary of the settings (no secrets)."""
    data = settings.model_dump(mode="json", exclude={"token"})
    return json.dumps(data, sort_keys=True)
