"""Cross-replica event buses: Redis pub/sub and PostgreSQL LISTEN/NOTIFY.

Each replica keeps its own subscribers in a `LocalFanout`; a publish goes to the broker, and
one listener task per replica delivers what the broker sends back to the local subscribers
(including the replica's own publishes, so every replica sees the same ordered stream).

`publish_many` sends many events as one broker message (Redis: one `PUBLISH` on
`kswifi:!batch` per up to `BATCH_EVENTS` events, a line `channel<US>payload` each; PostgreSQL:
as few `NOTIFY` payloads as fit, in one statement). A replica decodes only the payloads of
channels it has subscribers for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from kswifi.control.events import Event, EventBus, LocalFanout, Subscription
from kswifi.control.logging import get_logger

log = get_logger("kswifi.events")
REDIS_PREFIX = "kswifi:"
PG_CHANNEL = "kswifi_events"
REDIS_BATCH_CHANNEL = REDIS_PREFIX + "!batch"  # "!": never a channel name of ours
BATCH_EVENTS = 1000  # events per broker message: bounded messages for huge reports
_SEPARATOR = "\x1f"  # ASCII unit separator: in no channel name; JSON escapes it in strings
PG_PAYLOAD_LIMIT = 7900  # NOTIFY payloads must stay under 8000 bytes
# One encoder for every payload (`json.dumps(..., default=str)` builds one per call).
_to_json = json.JSONEncoder(default=str).encode


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
                    if name == REDIS_BATCH_CHANNEL:
                        self._deliver_batch(message["data"])
                        continue
                    name = name.removeprefix(REDIS_PREFIX)
                    if self.fanout.has_subscribers(name):
                        self.fanout.deliver(name, json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker went away: retry, subscribers stay
                log.warning("event_bus_reconnect", backend="redis", error=type(exc).__name__)
                await asyncio.sleep(0.5)

    def _deliver_batch(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        fanout = self.fanout
        for line in text.split("\n"):
            channel, _, payload = line.partition(_SEPARATOR)
            if fanout.has_subscribers(channel):
                fanout.deliver(channel, json.loads(payload))

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        assert self._client is not None, "bus not started"
        await self._client.publish(REDIS_PREFIX + channel, _to_json(payload))

    async def publish_many(self, events: Sequence[Event]) -> None:
        assert self._client is not None, "bus not started"
        if len(events) == 1:
            await self.publish(*events[0])
            return
        lines = [f"{channel}{_SEPARATOR}{_to_json(payload)}" for channel, payload in events]
        for start in range(0, len(lines), BATCH_EVENTS):
            await self._client.publish(
                REDIS_BATCH_CHANNEL, "\n".join(lines[start : start + BATCH_EVENTS])
            )

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
        if "b" in message:
            for channel, event in message["b"]:
                self.fanout.deliver(channel, event)
            return
        self.fanout.deliver(message["c"], message["p"])

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        assert self._pool is not None, "bus not started"
        await self._pool.execute(
            "SELECT pg_notify($1, $2)", PG_CHANNEL, _notify_text(channel, payload)
        )

    async def publish_many(self, events: Sequence[Event]) -> None:
        """As few NOTIFY payloads as fit under the limit, sent in order by one statement."""
        assert self._pool is not None, "bus not started"
        payloads: list[str] = []
        items: list[str] = []
        size = 0
        for channel, payload in events:
            item = _to_json([channel, payload])
            item_size = len(item.encode()) + 1
            if item_size + 32 > PG_PAYLOAD_LIMIT:
                raise ValueError("event too large for PostgreSQL NOTIFY")
            if items and size + item_size > PG_PAYLOAD_LIMIT - 32:
                payloads.append(_batch_text(len(payloads), items))
                items, size = [], 0
            items.append(item)
            size += item_size
        if items:
            payloads.append(_batch_text(len(payloads), items))
        if payloads:
            await self._pool.execute(
                "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                PG_CHANNEL,
                payloads,
            )

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self.fanout.subscription(channel)

    async def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(PG_CHANNEL, self._on_notify)
            await self._listener.close()
        if self._pool is not None:
            await self._pool.close()


def _notify_text(channel: str, payload: dict[str, Any]) -> str:
    text = _to_json({"c": channel, "p": payload})
    if len(text.encode()) > PG_PAYLOAD_LIMIT:
        raise ValueError("event too large for PostgreSQL NOTIFY")
    return text


def _batch_text(number: int, items: list[str]) -> str:
    # The number keeps two equal batches of one statement apart: PostgreSQL delivers identical
    # payloads of one transaction once.
    return f'{{"n":{number},"b":[{",".join(items)}]}}'


def remote_event_bus(url: str) -> EventBus:
    """The bus for `KSWIFI_EVENTS_URL`: redis://… or postgresql://…."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisEventBus(url)
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        return PostgresEventBus(url.replace("postgresql+asyncpg://", "postgresql://"))
    raise ValueError(f"unsupported KSWIFI_EVENTS_URL scheme: {scheme!r}")
