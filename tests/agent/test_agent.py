"""The agent loop against in-memory fakes of the kernel and the control plane (no root)."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from kswifi.agent.actions import AddPeer, RemovePeer, SetQuota
from kswifi.agent.config import GatewaySettings
from kswifi.agent.errors import AgentError
from kswifi.agent.main import Agent
from kswifi.protocol import DesiredState, GatewayInterface, PeerSpec

from .fakes import FakeControlPlane, FakeDataplane, session_objects

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def peer(
    n: int, session: str, quota: int = 100_000, expires_at: datetime | None = None
) -> PeerSpec:
    return PeerSpec(
        public_key=key(n),
        preshared_key=key(100 + n),
        allowed_ips=[f"100.64.0.{n}/32"],
        session_id=session,
        quota_bytes=quota,
        speed_mbps=10,
        expires_at=expires_at,
    )


def desired(revision: int, *peers: PeerSpec) -> DesiredState:
    return DesiredState(
        revision=revision,
        interface=GatewayInterface(
            private_key=key(200),
            public_key=key(201),
            listen_port=51820,
            addresses=["100.64.0.1/10"],
        ),
        peers=list(peers),
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def setup(revision: int) -> tuple[FakeDataplane, FakeControlPlane, Clock]:
    return FakeDataplane(), FakeControlPlane([desired(revision, peer(2, "s1"))]), Clock()


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    return GatewaySettings(
        control_url="http://control.invalid",
        token="t0ken",
        endpoint="gw.example.net:51820",
        wan_interface="eth9",
        state_dir=tmp_path / "state",
        usage_interval_s=0.05,
        heartbeat_interval_s=0.05,
    )


def make_agent(
    settings: GatewaySettings, kernel: FakeDataplane, control: FakeControlPlane, clock: Clock
) -> Agent:
    return Agent(settings, kernel, control, clock=clock)


async def poll_once(agent: Agent) -> None:
    """One long-poll answer (a delta from the state held, if any) + reconcile, without
    running the loops."""
    book = agent.book
    since, known = (book.state.revision, book.tag) if book is not None else (None, None)
    state = agent._follow(await agent.control.desired_update(since, known))
    assert state is not None
    agent.desired_state = state
    agent._store_desired_state(state)
    await agent.reconcile_once()


class TestReconcileLoop:
    async def test_desired_state_is_applied_and_persisted(self, settings: GatewaySettings) -> None:
        kernel, control, clock = (
            FakeDataplane(),
            FakeControlPlane([desired(1, peer(2, "s1"))]),
            Clock(),
        )
        agent = make_agent(settings, kernel, control, clock)
        assert agent.desired_state is None
        await agent.start()
        assert kernel.applied == []  # nothing is touched before a desired state is known
        await poll_once(agent)
        assert key(2) in kernel.state.peers
        assert (settings.state_dir / "desired-state.json").stat().st_mode & 0o777 == 0o600

    async def test_reconcile_is_incremental_and_resync_reads_everything(
        self, settings: GatewaySettings
    ) -> None:
        kernel, control, clock = setup(1)
        agent = make_agent(settings, kernel, control, clock)
        await agent.start()
        await poll_once(agent)
        assert kernel.observed == 1  # the first reconcile reads the kernel
        control.states.append(desired(2, peer(2, "s1"), peer(3, "s2")))
        await poll_once(agent)
        assert kernel.observed == 1  # adding a peer diffs against the state in memory
        assert [type(a).__name__ for a in kernel.applied[-1]].count("AddPeer") == 1
        assert key(3) in kernel.state.peers
        # Persisted beside the reconcile (never before it), and written before the agent stops.
        assert DesiredState.model_validate_json(agent.desired_path.read_bytes()).revision == 2
        await poll_once(agent)
        assert kernel.applied[-1] != [] and len(kernel.applied) == 2  # no-op: nothing applied
        await agent.reconcile_once(full=True)
        assert kernel.observed == 2

    async def test_a_change_is_diffed_in_its_scope_and_resync_diffs_everything(
        self, settings: GatewaySettings
    ) -> None:
        kernel, control, clock = setup(1)
        agent = make_agent(settings, kernel, control, clock)
        await agent.start()
        control.states.append(desired(2, peer(2, "s1"), peer(3, "s2")))
        await poll_once(agent)
        # Something the last change did not touch is wrong in the agent's picture: a change
        # elsewhere does not look at it (one new peer costs the same whatever the gateway
        # holds) ...
        assert agent.observation is not None
        del agent.observation.wireguard.peers[key(2)]
        del kernel.state.peers[key(2)]  # type: ignore[attr-defined]
        control.states.append(desired(3, peer(2, "s1"), peer(3, "s2"), peer(4, "s3")))
        await poll_once(agent)
        assert {getattr(a, "public_key", None) for a in kernel.applied[-1]} == {None, key(4)}
        assert key(2) not in kernel.state.peers
        # ... and the periodic resync reads and diffs everything.
        await agent.reconcile_once(full=True)
        assert key(2) in kernel.state.peers and key(4) in kernel.state.peers

    async def test_removal_reads_counters_before_deleting_the_objects(
        self, settings: GatewaySettings
    ) -> None:
        kernel, control, clock = setup(1)
        agent = make_agent(settings, kernel, control, clock)
        await agent.start()
        await poll_once(agent)
        kernel.count("s1", up=3000)
        control.states.append(desired(2))
        await poll_once(agent)  # unmaps and removes the peer
        reads = kernel.usage_reads
        await agent.reconcile_once()  # deletes the objects after one last counter read
        assert kernel.usage_reads == reads + 1
        assert "s1" not in kernel.state.sessions
        assert agent.tracker.served["s1"] == 3000
        assert kernel.observed == 1

    async def test_failed_apply_forgets_the_state_in_memory(
        self, settings: GatewaySettings
    ) -> None:
        kernel, control, clock = setup(1)
        agent = make_agent(settings, kernel, control, clock)
        await agent.start()
        await poll_once(agent)
        kernel.fail_next_apply = True
        control.states.append(desired(2, peer(2, "s1"), peer(3, "s2")))
        with pytest.raises(AgentError):
            await poll_once(agent)
        assert agent.observation is None
        await poll_once(agent)
        assert kernel.observed == 2 and key(3) in kernel.state.peers

    async def test_restart_keeps_peers_and_applies_nothing(self, settings: GatewaySettings) -> None:
        kernel, control, clock = (
            FakeDataplane(),
            FakeControlPlane([desired(1, peer(2, "s1"))]),
            Clock(),
        )
        await poll_once(make_agent(settings, kernel, control, clock))
        control.up = False
        applied_before = len(kernel.applied)
        restarted = make_agent(settings, kernel, control, clock)
        await restarted.start()  # control plane down: enforces the cached state
        assert len(kernel.applied) == applied_before
        assert key(2) in kernel.state.peers

    async def test_expiry_is_enforced_while_control_plane_is_down(
        self, settings: GatewaySettings
    ) -> None:
        clock = Clock()
        state = desired(1, peer(2, "s1", expires_at=T0 + timedelta(seconds=5)), peer(3, "s2"))
        kernel, control = FakeDataplane(), FakeControlPlane([state])
        agent = make_agent(settings, kernel, control, clock)
        await poll_once(agent)
        control.up = False
        clock.now = T0 + timedelta(seconds=5)
        actions = await agent.reconcile_once()
        assert RemovePeer(key(2), "expired") in actions
        assert set(kernel.state.peers) == {key(3)}
        await agent.reconcile_once()  # the follow-up pass deletes the expired session's objects
        assert "s1" not in kernel.state.sessions

    async def test_expiry_loop_wakes_reconcile_on_time(self, settings: GatewaySettings) -> None:
        clock = Clock()
        clock.now = datetime.now(UTC)
        soon = clock.now + timedelta(milliseconds=200)
        control = FakeControlPlane([desired(1, peer(2, "s1", expires_at=soon))])
        agent = make_agent(settings, FakeDataplane(), control, clock)
        await poll_once(agent)
        task = asyncio.create_task(agent._expiry_loop())
        try:
            await asyncio.sleep(0.05)
            assert not agent.reconcile_needed.is_set()
            clock.now = soon
            await asyncio.wait_for(agent.reconcile_needed.wait(), 2)
        finally:
            agent.stop()
            task.cancel()


class TestUsage:
    async def test_usage_is_spooled_while_down_and_delivered_in_order(
        self, settings: GatewaySettings
    ) -> None:
        kernel, control, clock = (
            FakeDataplane(),
            FakeControlPlane([desired(1, peer(2, "s1"))]),
            Clock(),
        )
        agent = make_agent(settings, kernel, control, clock)
        await poll_once(agent)
        kernel.count("s1", up=3000, down=10_000)
        await agent.usage_once()
        assert await agent.deliver_usage() == 1
        control.up = False
        for _ in range(3):
            kernel.count("s1", down=5000)
            await agent.usage_once()
        assert await agent.deliver_usage() == 0
        # Agent restarts while the control plane is still down: the spool is on disk.
        restarted = make_agent(settings, kernel, control, clock)
        await restarted.start()
        control.up = True
        assert await restarted.deliver_usage() == 3
        assert [r.sequence for r in control.reports] == [1, 2, 3, 4]
        assert control.totals == {"s1": 28_000}

    async def test_quota_exhaustion_and_lease_refill(self, settings: GatewaySettings) -> None:
        kernel, control, clock = (
            FakeDataplane(),
            FakeControlPlane([desired(1, peer(2, "s1"))]),
            Clock(),
        )
        control.grants["s1"] = 150_000
        agent = make_agent(settings, kernel, control, clock)
        await poll_once(agent)
        served = kernel.count("s1", down=120_000)
        assert served < 100_000  # the kernel quota stopped it
        report = await agent.usage_once()
        assert report is not None and report.deltas[0].quota_exhausted
        await agent._refill_leases()
        assert control.lease_requests == [["s1"]]
        actions = await agent.reconcile_once()
        assert SetQuota("s1", 150_000, served) in actions
        assert kernel.count("s1", down=20_000) == 20_000


class TestHeartbeatAndLogs:
    async def test_heartbeat_reports_mode_peers_and_revision(
        self, settings: GatewaySettings
    ) -> None:
        kernel, control, clock = (
            FakeDataplane(),
            FakeControlPlane([desired(4, peer(2, "s1"))]),
            Clock(),
        )
        agent = make_agent(settings, kernel, control, clock)
        await poll_once(agent)
        await agent.heartbeat_once()
        beat = control.heartbeats[-1]
        assert (beat.interface_mode, beat.peer_count, beat.applied_revision) == ("userspace", 1, 4)

    async def test_a_state_that_lowers_a_lease_is_reported_applied_at_once(
        self, settings: GatewaySettings
    ) -> None:
        kernel, control, clock = (
            FakeDataplane(),
            FakeControlPlane([desired(4, peer(2, "s1", quota=100_000))]),
            Clock(),
        )
        agent = make_agent(settings, kernel, control, clock)
        await poll_once(agent)
        with pytest.raises(TimeoutError):  # an ordinary state: the next beat after the interval
            await asyncio.wait_for(agent._until_next_heartbeat(30), 0.3)
        lowered = desired(5, peer(2, "s1", quota=50_000))
        control.states.append(lowered.model_copy(update={"report_applied": True}))
        await poll_once(agent)
        assert session_objects(kernel.state, "s1").quota_bytes == 50_000
        await asyncio.wait_for(agent._until_next_heartbeat(30), 1.0)  # at once
        await agent.heartbeat_once()
        assert control.heartbeats[-1].applied_revision == 5
        with pytest.raises(TimeoutError):  # reported once, then the interval again
            await asyncio.wait_for(agent._until_next_heartbeat(30), 0.3)

    async def test_logs_never_contain_private_or_preshared_keys(
        self, settings: GatewaySettings
    ) -> None:
        kernel, control, clock = (
            FakeDataplane(),
            FakeControlPlane([desired(1, peer(2, "s1"))]),
            Clock(),
        )
        with structlog.testing.capture_logs() as logs:
            agent = make_agent(settings, kernel, control, clock)
            await poll_once(agent)
            await agent.start()
        text = repr(logs) + repr(kernel.applied)
        assert any(entry["event"] == "peer_added" for entry in logs)
        for secret in (key(200), key(102), agent.default_interface.private_key or "?"):
            assert secret not in text
        assert any(isinstance(a, AddPeer) for batch in kernel.applied for a in batch)


class TestRunLoop:
    async def test_run_polls_reconciles_reports_and_stops(self, settings: GatewaySettings) -> None:
        kernel, control = FakeDataplane(), FakeControlPlane([desired(1, peer(2, "s1"))])
        agent = Agent(settings, kernel, control)
        task = asyncio.create_task(agent.run())
        for _ in range(100):
            await asyncio.sleep(0.02)
            if key(2) in kernel.state.peers and control.heartbeats:
                break
        kernel.count("s1", down=5000)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if control.totals.get("s1") == 5000:
                break
        # A change reaches the running agent as a delta (the first answer was whole).
        control.states.append(desired(2, peer(2, "s1"), peer(3, "s2")))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if key(3) in kernel.state.peers:
                break
        assert agent.book is not None and agent.book.state.revision == 2
        assert [kind for kind, _ in control.answers] == [
            "full",
            *["delta"] * (len(control.answers) - 1),
        ]
        agent.stop()
        await asyncio.wait_for(task, 5)
        assert control.totals == {"s1": 5000}
        assert key(2) in kernel.state.peers  # stopping the agent never tears down the data plane
        assert key(3) in kernel.state.peers
