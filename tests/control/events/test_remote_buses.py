"""Cross-replica event buses against the real Redis and PostgreSQL on this machine."""

from __future__ import annotations

import asyncio
import os

import pytest

from kswifi.control import events_remote
from kswifi.control.events import (
    Event,
    EventBus,
    InProcessEventBus,
    LocalFanout,
    Message,
    Subscription,
    UsageFacts,
)
from kswifi.control.events_remote import (
    BATCH_EVENTS,
    PG_PAYLOAD_LIMIT,
    PostgresEventBus,
    RedisEventBus,
    decode_payload,
    deliver_lines,
    encode_event,
    remote_event_bus,
)

REDIS_URL = os.environ.get("KSWIFI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("KSWIFI_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _make(kind: str) -> EventBus:
    return RedisEventBus(REDIS_URL) if kind == "redis" else PostgresEventBus(PG_URL)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_publish_on_one_replica_reaches_a_subscriber_on_another(kind: str) -> None:
    replica_a, replica_b = _make(kind), _make(kind)
    await replica_a.start()
    await replica_b.start()
    try:
        channel = f"session.test-{os.getpid()}-{kind}"
        async with replica_b.subscribe(channel) as subscription:
            await asyncio.sleep(0.1)
            await replica_a.publish(channel, {"type": "usage", "used_bytes": 42})
            message = await subscription.get(2.0)
            assert message == {"type": "usage", "used_bytes": 42}
            await replica_a.publish("session.someone-else", {"type": "usage"})
            assert await subscription.get(0.3) is None
    finally:
        await replica_a.stop()
        await replica_b.stop()


def test_url_picks_the_backend() -> None:
    assert isinstance(remote_event_bus("redis://127.0.0.1:6379/0"), RedisEventBus)
    assert isinstance(remote_event_bus("postgresql://postgres@127.0.0.1/x"), PostgresEventBus)
    with pytest.raises(ValueError, match="unsupported"):
        remote_event_bus("amqp://guest@127.0.0.1")


async def _drain(subscription: Subscription, count: int) -> list[dict[str, object]]:
    received: list[dict[str, object]] = []
    while len(received) < count:
        message = await subscription.get(5.0)
        assert message is not None, f"only {len(received)} of {count} events arrived"
        received.append(message)
    return received


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_publish_many_reaches_other_replicas_in_order(kind: str) -> None:
    replica_a, replica_b = _make(kind), _make(kind)
    await replica_a.start()
    await replica_b.start()
    try:
        tag = f"{os.getpid()}-{kind}"
        first, second = f"session.many-a-{tag}", f"session.many-b-{tag}"
        # Several broker messages (NOTIFY payloads stay under 8000 bytes, Redis takes
        # BATCH_EVENTS events per message), few enough per channel for a subscription's buffer.
        count = 400
        events: list[Event] = []
        for number in range(count):
            channel = first if number % 2 == 0 else second
            events.append((channel, {"type": "usage", "n": number, "pad": "x" * 40}))
            events.extend(
                (f"session.nobody-{tag}", {"type": "usage", "n": number}) for _ in range(3)
            )
        assert len(events) > BATCH_EVENTS
        async with (
            replica_b.subscribe(first) as on_first,
            replica_b.subscribe(second) as on_second,
            replica_a.subscribe(first) as own,
        ):
            await asyncio.sleep(0.1)
            await replica_a.publish_many(events)
            got_first = await _drain(on_first, len(range(0, count, 2)))
            got_second = await _drain(on_second, len(range(1, count, 2)))
            assert [m["n"] for m in got_first] == list(range(0, count, 2))
            assert [m["n"] for m in got_second] == list(range(1, count, 2))
            assert got_first[0] == {"type": "usage", "n": 0, "pad": "x" * 40}
            # The publishing replica's own subscribers get them through the broker too.
            assert [m["n"] for m in await _drain(own, 3)] == [0, 2, 4]
            assert await on_first.get(0.3) is None

            # One event alone, and nothing at all, also work.
            await replica_a.publish_many([(first, {"type": "usage", "n": -1})])
            assert await on_first.get(2.0) == {"type": "usage", "n": -1}
            await replica_a.publish_many([])
            assert await on_first.get(0.3) is None
    finally:
        await replica_a.stop()
        await replica_b.stop()


async def test_publish_many_refuses_an_event_too_large_for_notify() -> None:
    bus = PostgresEventBus(PG_URL)
    await bus.start()
    try:
        with pytest.raises(ValueError, match="too large"):
            await bus.publish_many(
                [("session.small", {"n": 1}), ("session.big", {"pad": "x" * PG_PAYLOAD_LIMIT})]
            )
    finally:
        await bus.stop()


async def test_in_process_publish_many_delivers_in_order() -> None:
    bus = InProcessEventBus()
    async with bus.subscribe("session.a") as on_a, bus.subscribe("session.b") as on_b:
        await bus.publish_many(
            [("session.a", {"n": 1}), ("session.b", {"n": 2}), ("session.a", {"n": 3})]
        )
        assert [await on_a.get(1), await on_a.get(1)] == [{"n": 1}, {"n": 3}]
        assert await on_b.get(1) == {"n": 2}
        assert await on_a.get(0.05) is None


async def test_subscription_get_and_drain() -> None:
    bus = InProcessEventBus()
    async with bus.subscribe("session.c") as subscription:
        assert await subscription.get(0) is None
        started = asyncio.get_running_loop().time()
        assert await subscription.get(0.05) is None
        assert asyncio.get_running_loop().time() - started >= 0.04
        await bus.publish_many([("session.c", {"n": 1}), ("session.c", {"n": 2})])
        assert await subscription.get(0) == {"n": 1}
        await bus.publish("session.c", {"n": 3})
        assert subscription.drain() == [{"n": 2}, {"n": 3}]
        assert subscription.drain() == []
        later = asyncio.get_running_loop().call_later(
            0.05, bus.fanout.deliver, "session.c", {"n": 4}
        )
        assert await subscription.get(2.0) == {"n": 4}
        later.cancel()


def _facts(session_id: str, used_bytes: int = 1000) -> UsageFacts:
    return UsageFacts(
        session_id,
        "connected",
        used_bytes,
        5 * 1024**3,
        "2025-06-03T12:00:07.123456+00:00",
        259207,
        "2025-05-31T12:00:00.123456+00:00",
    )


class TestUsageFactsOnTheWire:
    @pytest.mark.parametrize(
        "message",
        [
            _facts("s-1"),
            UsageFacts("s-2", "active", 0, 1024**3, None, None, "2025-05-31T12:00:00+00:00"),
            UsageFacts("s-3", "exhausted", 7, 5, "2025-05-31T11:00:00+00:00", 0, "2025-05-31"),
            {"type": "warning", "percent": 80, "message": "a\nb\x1fc"},
        ],
    )
    def test_a_line_decodes_to_the_message(self, message: Message) -> None:
        line = encode_event("session.x", message)
        assert "\n" not in line
        channel, _, payload = line.partition("\x1f")
        assert channel == "session.x"
        decoded = decode_payload(payload)
        assert decoded == message and type(decoded) is type(message)

    async def test_unwatched_channels_decode_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        decoded: list[str] = []

        def spy(payload: str) -> Message:
            decoded.append(payload)
            return decode_payload(payload)

        monkeypatch.setattr(events_remote, "decode_payload", spy)
        fanout = LocalFanout()
        lines = [encode_event(f"session.nobody-{n}", _facts(f"nobody-{n}")) for n in range(50)]
        lines.insert(20, encode_event("session.watched", _facts("watched")))
        lines.append(encode_event("session.watched", {"type": "revoked"}))
        async with fanout.subscription("session.watched") as watched:
            deliver_lines(fanout, lines)
            assert watched.drain() == [_facts("watched"), {"type": "revoked"}]
        assert len(decoded) == 2


@pytest.mark.parametrize("kind", ["redis", "postgres", "in-process"])
async def test_usage_facts_reach_subscribers_as_facts(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []

    def spy(payload: str) -> Message:
        decoded.append(payload)
        return decode_payload(payload)

    monkeypatch.setattr(events_remote, "decode_payload", spy)
    shared = InProcessEventBus()
    replica_a, replica_b = (shared, shared) if kind == "in-process" else (_make(kind), _make(kind))
    await replica_a.start()
    await replica_b.start()
    try:
        tag = f"{os.getpid()}-{kind}"
        watched = f"session.facts-{tag}"
        events: list[Event] = [(f"session.nobody-{tag}-{n}", _facts(str(n))) for n in range(300)]
        events.insert(100, (watched, _facts(tag, used_bytes=1)))
        events.append((watched, {"type": "warning", "percent": 80}))
        events.append((watched, _facts(tag, used_bytes=2)))
        async with replica_b.subscribe(watched) as subscription:
            await asyncio.sleep(0.1)
            await replica_a.publish_many(events)
            assert await subscription.receive(2.0) == _facts(tag, used_bytes=1)
            assert await subscription.receive(2.0) == {"type": "warning", "percent": 80}
            # `get` reads facts as a dict, for subscribers that want one kind of message.
            assert await subscription.get(2.0) == _facts(tag, used_bytes=2).as_dict()
            await replica_a.publish(watched, _facts(tag, used_bytes=3))
            message = await subscription.receive(2.0)
            assert isinstance(message, UsageFacts) and message.used_bytes == 3
            assert await subscription.receive(0.2) is None
        # Only the watched channel's payloads were decoded (none on the in-process bus).
        assert len(decoded) == (0 if kind == "in-process" else 4)
    finally:
        await replica_a.stop()
        await replica_b.stop()


class TestSubscriptionWaits:
    """One timer per subscription, moved lazily: every wait still ends when it should."""

    async def test_a_longer_wait_after_a_short_one_is_not_cut_short(self) -> None:
        loop = asyncio.get_running_loop()
        subscription = Subscription("session.w")
        loop.call_later(0.01, subscription.deliver, {"n": 1})
        assert await subscription.receive(0.05) == {"n": 1}
        started = loop.time()
        assert await subscription.receive(0.3) is None
        assert loop.time() - started >= 0.28
        subscription.close()

    async def test_a_shorter_wait_after_a_long_one_ends_in_time(self) -> None:
        loop = asyncio.get_running_loop()
        subscription = Subscription("session.w")
        loop.call_later(0.01, subscription.deliver, {"n": 1})
        assert await subscription.receive(5.0) == {"n": 1}
        started = loop.time()
        assert await subscription.receive(0.05) is None
        assert 0.04 <= loop.time() - started < 1.0
        subscription.close()

    async def test_an_endless_wait_after_a_timed_one_waits_for_a_message(self) -> None:
        loop = asyncio.get_running_loop()
        subscription = Subscription("session.w")
        loop.call_later(0.01, subscription.deliver, {"n": 1})
        assert await subscription.receive(0.05) == {"n": 1}
        loop.call_later(0.2, subscription.deliver, {"n": 2})
        assert await subscription.receive() == {"n": 2}
        subscription.close()

    async def test_one_reader_and_a_cancelled_wait(self) -> None:
        subscription = Subscription("session.w")
        waiting = asyncio.create_task(subscription.receive(5.0))
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="one reader"):
            await subscription.receive(1.0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        asyncio.get_running_loop().call_later(0.01, subscription.deliver, {"n": 1})
        assert await subscription.receive(1.0) == {"n": 1}
        subscription.close()

    async def test_a_slow_reader_loses_the_oldest(self) -> None:
        subscription = Subscription("session.w", maxsize=3)
        for number in range(5):
            subscription.deliver({"n": number})
        assert await subscription.receive(0) == {"n": 2}
        assert subscription.drain() == [{"n": 3}, {"n": 4}]
        assert await subscription.receive(0) is None


@pytest.mark.postgres
async def test_the_postgres_bus_survives_its_connections_being_cut() -> None:
    """PostgreSQL is also the default bus: a restart or failover that ends its connections
    must not stop events (publishing retries on a new connection, LISTEN comes back)."""
    import time
    import uuid

    import asyncpg

    name = f"kswifi_events_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    sender, receiver = PostgresEventBus(dsn), PostgresEventBus(dsn)
    try:
        await sender.start()
        await receiver.start()
        async with receiver.subscribe("session.cut") as subscription:
            cut = await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
            assert len(cut) >= 3  # both listeners and the sender's pooled connection
            deadline = time.monotonic() + 10
            message = None
            while message is None and time.monotonic() < deadline:
                await sender.publish("session.cut", {"type": "usage", "used_bytes": 7})
                message = await subscription.get(0.5)
            assert message == {"type": "usage", "used_bytes": 7}
    finally:
        await sender.stop()
        await receiver.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_broker_failing_after_commit_does_not_fail_the_request(tmp_path: object) -> None:
    """The change is committed; a lost event is logged, never raised to the client."""
    from pathlib import Path

    from kswifi.control.db import Database
    from kswifi.control.events import publish_many_after_commit

    class Unreachable(InProcessEventBus):
        async def publish_many(self, events: object) -> None:
            raise ConnectionError("the broker went away")

    assert isinstance(tmp_path, Path)
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'events.db'}")
    try:
        async with database.transaction() as db:
            publish_many_after_commit(db, Unreachable(), [("session.x", {"type": "usage"})])
    finally:
        await database.dispose()
