"""Answers built from the changed people alone (`desired.desired_update`): after the first
whole state, each answer reads only the devices of the people recorded with the revisions since
(plus those whose session ran out, or whom a lease hold concerns), and what the agent builds
from them is what the whole state says at the same moment. A change nobody recorded still
reaches the gateway within `answers.WHOLE_EVERY`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from kswifi.control.deps import AppContext
from kswifi.control.gateways import answers, repository
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.models import (
    DataSession,
    DesiredChange,
    Device,
    DeviceStatus,
    GatewayLease,
    utcnow,
)
from kswifi.protocol import DesiredUpdate
from kswifi.protocol.deltas import PeerBook, peers_by_key
from tests.control.gateways.conftest import World, new_key, public_key_of


class Reads:
    """The people each `live_peers` call read the devices of (None: every device)."""

    def __init__(self) -> None:
        self.calls: list[set[str] | None] = []


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    seen = Reads()
    real = repository.live_peers

    async def spy(
        db: object, gateway_id: str, now: datetime, users: Iterable[str] | None = None
    ) -> list[repository.PeerRow]:
        seen.calls.append(set(users) if users is not None else None)
        return await real(db, gateway_id, now, users)  # type: ignore[arg-type]

    monkeypatch.setattr(repository, "live_peers", spy)
    yield seen


class Follower:
    """An agent's side: the book it holds, checked against the whole state at every step."""

    def __init__(self, ctx: AppContext, gateway_id: str, reads: Reads) -> None:
        self.ctx, self.gateway_id, self.reads = ctx, gateway_id, reads
        self.book: PeerBook | None = None
        self.answer_reads: list[set[str] | None] = []  # what the last answer read

    async def ask(self, now: datetime | None = None) -> DesiredUpdate:
        now = now or utcnow()
        known = self.book.tag if self.book is not None else None
        self.reads.calls.clear()
        async with self.ctx.db.transaction() as db:
            answer = await gateway_desired.desired_update(
                db, self.ctx.secrets, self.gateway_id, now, None, self.ctx.settings, known
            )
        self.answer_reads = list(self.reads.calls)
        if answer.kind == "full":
            assert answer.state is not None
            self.book = PeerBook.of(answer.state, answer.tag)
        else:
            assert self.book is not None and answer.delta is not None
            self.book.apply(answer.delta, answer.tag)
        async with self.ctx.db.transaction() as db:
            whole = await gateway_desired.desired_state(
                db, self.ctx.secrets, self.gateway_id, now, None, self.ctx.settings
            )
        assert self.book.state.revision == whole.revision
        assert peers_by_key(self.book.state) == peers_by_key(whole)
        assert self.book.state.garden == whole.garden
        return answer


async def _owner(ctx: AppContext, session_id: str) -> str:
    async with ctx.db.transaction() as db:
        session = await db.get(DataSession, session_id)
        assert session is not None
        return session.user_id


async def test_each_answer_reads_the_changed_people_alone(
    ctx: AppContext, world: World, reads: Reads
) -> None:
    gateway = await world.gateway()
    devices = [await world.device(await world.session(), gateway.id) for _ in range(6)]
    agent = Follower(ctx, gateway.id, reads)
    first = await agent.ask()
    assert first.kind == "full" and agent.answer_reads == [None]  # every device
    whole_at = answers._SENT[gateway.id].whole_at

    async def step(people: set[str]) -> DesiredUpdate:
        answer = await agent.ask()
        assert answer.kind == "delta"
        assert agent.answer_reads == ([people] if people else []), "read other devices"
        assert answers._SENT[gateway.id].whole_at == whole_at
        return answer

    # Nothing changed: no device is read.
    nothing = await step(set())
    assert nothing.delta is not None and not nothing.delta.upsert and not nothing.delta.remove

    # A session used up: its person's peer goes to the garden.
    used_up = devices[0]
    person = await _owner(ctx, used_up.session_id)
    async with ctx.db.transaction() as db:
        await db.execute(
            update(DataSession)
            .where(DataSession.id == used_up.session_id)
            .values(status="exhausted", ended_at=utcnow())
        )
        await gateway_desired.bump_revision(db, [gateway.id], None, [person])
    answer = await step({person})
    assert answer.delta is not None
    [moved] = answer.delta.upsert
    assert moved.public_key == used_up.public_key and moved.session_id is None

    # A key rotated: the old key leaves, the new one comes, at the same addresses.
    rotated = devices[1]
    person = await _owner(ctx, rotated.session_id)
    new_public = public_key_of(new_key())
    async with ctx.db.transaction() as db:
        await db.execute(
            update(Device).where(Device.id == rotated.id).values(public_key=new_public)
        )
        await gateway_desired.bump_revision(db, [gateway.id], None, [person])
    answer = await step({person})
    assert answer.delta is not None
    assert [peer.public_key for peer in answer.delta.upsert] == [new_public]
    assert answer.delta.remove == [rotated.public_key]

    # A device removed.
    removed = devices[2]
    person = await _owner(ctx, removed.session_id)
    async with ctx.db.transaction() as db:
        await db.execute(
            update(Device)
            .where(Device.id == removed.id)
            .values(status=DeviceStatus.REMOVED, removed_at=utcnow())
        )
        await gateway_desired.bump_revision(db, [gateway.id], None, [person])
    answer = await step({person})
    assert answer.delta is not None
    assert answer.delta.upsert == [] and answer.delta.remove == [removed.public_key]


async def test_a_session_running_out_needs_no_record(
    ctx: AppContext, world: World, reads: Reads
) -> None:
    """Time alone ends a session: the answer after its end reads its person's devices."""
    gateway = await world.gateway()
    soon = utcnow() + timedelta(seconds=30)
    ending = await world.device(await world.session(expires_at=soon), gateway.id)
    for _ in range(3):
        await world.device(await world.session(), gateway.id)
    agent = Follower(ctx, gateway.id, reads)
    await agent.ask()
    answer = await agent.ask(soon + timedelta(seconds=1))
    assert answer.kind == "delta" and answer.delta is not None
    assert agent.answer_reads == [{await _owner(ctx, ending.session_id)}]
    [moved] = answer.delta.upsert
    assert moved.public_key == ending.public_key and moved.session_id is None


async def test_a_lowered_lease_is_delivered_and_stamped(
    ctx: AppContext, world: World, reads: Reads
) -> None:
    """A second gateway joining a session lowers the first one's lease without a new
    revision of the first (it is told to fetch): its next answer reads that session's person,
    carries the lowered quota, asks for the revision applied, and stamps the hold with it."""
    first, second = await world.gateway(), await world.gateway()
    session_id = await world.session(limit_bytes=30_000_000)
    device = await world.device(session_id, first.id)
    await world.device(await world.session(), first.id)  # someone else, untouched
    first_agent = Follower(ctx, first.id, reads)
    state = (await first_agent.ask()).state
    assert state is not None
    assert {peer.quota_bytes for peer in state.peers if peer.public_key == device.public_key} == {
        30_000_000
    }
    await world.device(session_id, second.id)  # a second phone, on another gateway
    second_agent = Follower(ctx, second.id, reads)
    await second_agent.ask()

    answer = await first_agent.ask()
    assert answer.kind == "delta" and answer.delta is not None
    assert first_agent.answer_reads == [{await _owner(ctx, session_id)}]
    [lowered] = answer.delta.upsert
    assert lowered.public_key == device.public_key and lowered.quota_bytes == 15_000_000
    assert answer.delta.report_applied
    async with ctx.db.transaction() as db:
        stamped = await db.scalar(
            select(GatewayLease.held_until_revision).where(
                GatewayLease.gateway_id == first.id, GatewayLease.session_id == session_id
            )
        )
    assert stamped == answer.delta.revision
    # The shared session's person is read with every answer from now on (its plan depends
    # on the other gateway), and nobody else.
    answer = await first_agent.ask()
    assert first_agent.answer_reads == [{await _owner(ctx, session_id)}]


async def test_a_change_nobody_recorded_arrives_within_whole_every(
    ctx: AppContext, world: World, reads: Reads
) -> None:
    gateway = await world.gateway()
    device = await world.device(await world.session(speed_mbps=10), gateway.id)
    agent = Follower(ctx, gateway.id, reads)
    start = utcnow()
    await agent.ask(start)
    async with ctx.db.transaction() as db:  # no revision, no record: a bug elsewhere
        await db.execute(
            update(DataSession).where(DataSession.id == device.session_id).values(speed_mbps=50)
        )
    assert agent.book is not None
    reads.calls.clear()
    async with ctx.db.transaction() as db:
        quiet = await gateway_desired.desired_update(
            db, ctx.secrets, gateway.id, start, None, ctx.settings, agent.book.tag
        )
    assert quiet.delta is not None and quiet.delta.upsert == []  # not seen yet
    assert reads.calls == []
    agent.book.apply(quiet.delta, quiet.tag)
    answer = await agent.ask(start + answers.WHOLE_EVERY)
    assert agent.answer_reads == [None]  # made from every device again
    assert answer.kind == "delta" and answer.delta is not None
    [faster] = answer.delta.upsert
    assert faster.public_key == device.public_key and faster.speed_mbps == 50


async def test_an_unnamed_change_reads_every_device(
    ctx: AppContext, world: World, reads: Reads
) -> None:
    gateway = await world.gateway()
    await world.device(await world.session(), gateway.id)
    agent = Follower(ctx, gateway.id, reads)
    await agent.ask()
    async with ctx.db.transaction() as db:
        await gateway_desired.bump_revision(db, [gateway.id], None)  # anyone's
    await agent.ask()
    assert agent.answer_reads == [None]


async def test_old_change_records_are_purged(ctx: AppContext, world: World) -> None:
    gateway = await world.gateway()
    await world.device(await world.session(), gateway.id)
    now = utcnow()
    async with ctx.db.transaction() as db:
        before = len(list(await db.scalars(select(DesiredChange.revision))))
        assert before >= 1
        assert await gateway_desired.purge_changes(db, now) == 0  # all recent: kept
        later = now + gateway_desired.CHANGES_KEPT + timedelta(seconds=1)
        assert await gateway_desired.purge_changes(db, later) == before
        assert list(await db.scalars(select(DesiredChange.revision))) == []


async def test_an_answer_that_fails_half_way_leaves_the_whole_state_next(
    ctx: AppContext, world: World, reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was sent is updated as the answer is built (the session that ran out is taken
    off its list): an answer that fails on the way forgets it, and the next is whole."""
    gateway = await world.gateway()
    soon = utcnow() + timedelta(seconds=30)
    ending = await world.device(await world.session(expires_at=soon), gateway.id)
    agent = Follower(ctx, gateway.id, reads)
    await agent.ask()
    assert agent.book is not None
    tag = agent.book.tag

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database went away")

    with monkeypatch.context() as patched:
        patched.setattr(gateway_desired.leases, "for_desired_state", broken)
        with pytest.raises(RuntimeError):
            async with ctx.db.transaction() as db:
                await gateway_desired.desired_update(
                    db, ctx.secrets, gateway.id, soon, None, ctx.settings, tag
                )
    answer = await agent.ask(soon + timedelta(seconds=1))
    assert answer.kind == "full" and answer.state is not None
    [peer] = answer.state.peers
    assert peer.public_key == ending.public_key and peer.session_id is None
