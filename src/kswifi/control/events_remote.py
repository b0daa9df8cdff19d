"""Cross-replica event buses: Redis pub/sub and PostgreSQL LISTEN/NOTIFY.

Each replica keeps its own subscribers in a `LocalFanout`; a publish goes to the broker, and
one listener task per replica delivers what the broker sends back to the local subscribers
(including the replica's own publishes, so every replica sees the same ordered stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from kswifi.control.events import EventBus, LocalFanout, Subscription
from kswifi.control.logging import get_logger

log = get_logger("kswifi.events")
REDIS_PREFIX = "kswifi:"
PG_CHANNEL = "kswifi_events"
PG_PAYLOAD_LIMIT = 7900  # NOTIFY payloads must stay under 8000 bytes


class RedisEventBus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fanout = LocalFanout()
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._client = aioredis.from_url(self.url)
        self._task = asyncio.create_task(self._listen(), name="kswifi-redis-events")
        await asyncio.wait_for(self._ready.wait(), 10)

    async def _listen(self) -> None:
        assert self._client is not None
        while True:
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                await pubsub.psubscribe(REDIS_PREFIX + "*")
                self._ready.set()
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    name = channel.decode() if isinstance(channel, bytes) else str(channel)
                    self.fanout.deliver(
                        name.removeprefix(REDIS_PREFIX), json.loads(message["data"])
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker went away: retry, subscribers stay
                log.warning("event_bus_reconnect", backend="redis", error=type(exc).__name__)
                await asyncio.sleep(0.5)

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        assert self._client is not None, "bus not started"
        await self._client.publish(REDIS_PREFIX + channel, json.dumps(payload, default=str))

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self.fanout.subscription(channel)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()


class PostgresEventBus:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.fanout = LocalFanout()
        self._listener: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(PG_CHANNEL, self._on_notify)

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        message = json.loads(payload)
        self.fanout.deliver(message["c"], message["p"])

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        assert self._pool is not None, "bus not started"
        text = json.dumps({"c": channel, "p": payload}, default=str)
        if len(text.encode()) > PG_PAYLOAD_LIMIT:
            raise ValueError("event too large for PostgreSQL NOTIFY")
        await self._pool.execute("SELECT pg_notify($1, $2)", PG_CHANNEL, text)

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self.fanout.subscription(channel)

    async def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(PG_CHANNEL, self._on_notify)
            await self._listener.close()
        if self._pool is not None:
            await self._pool.close()


def remote_event_bus(url: str) -> EventBus:
    """The bus for `KSWIFI_EVENTS_URL`: redis://… or postgresql://…."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisEventBus(url)
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        return PostgresEventBus(url.replace("postgresql+asyncpg://", "postgresql://"))
    raise ValueError(f"unsupported KSWIFI_EVENTS_URL scheme: {scheme!r}")
