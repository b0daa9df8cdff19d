"""Cross-replica event buses against the real Redis and PostgreSQL on this machine."""

from __future__ import annotations

import asyncio
import os

import pytest

from kswifi.control.events import EventBus
from kswifi.control.events_remote import PostgresEventBus, RedisEventBus, remote_event_bus

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
