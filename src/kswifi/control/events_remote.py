"""Cross-replica event buses: Redis pub/sub and PostgreSQL LISTEN/NOTIFY.

Each replica keeps its own subscribers in a `LocalFanout`; a publish goes to the broker, and
one listener task per replica delivers what the broker sends back to the local subscribers
(including the replica's own publishes, so every replica sees the same ordered stream).

Both brokers carry the same text: one line per event, `channel<US>payload`, where the payload
is a JSON object or `UsageFacts` as `U` and its fields separated by US. A replica decodes only
the payloads of channels it has subscribers for. `publish_many` sends many events as one broker
message (Redis: one `PUBLISH` per up to `BATCH_EVENTS` events; PostgreSQL: as few `NOTIFY`
payloads as fit, in one statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from kswifi.control.events import Event, EventBus, LocalFanout, Message, Subscription, UsageFacts
from kswifi.logs import get_logger

log = get_logger("kswifi.events")
# Every event on one broker channel (a replica wants them all anyway). Named apart from the
# earlier per-channel JSON messages, so replicas of either format ignore the other's.
REDIS_CHANNEL = "kswifi:!lines"
PG_CHANNEL = "kswifi_event_lines"
BATCH_EVENTS = 1000  # events per broker message: bounded messages for huge reports
_SEPARATOR = "\x1f"  # ASCII unit separator: in no channel name, id or ISO time; JSON escapes it
_FACTS = "U"  # starts a `UsageFacts` payload (a JSON one starts with "{")
PG_PAYLOAD_LIMIT = 7900  # NOTIFY payloads must stay under 8000 bytes
# One encoder for every payload (`json.dumps(..., default=str)` builds one per call).
_to_json = json.JSONEncoder(default=str).encode


def encode_event(channel: str, message: Message) -> str:
    """One event as a line of broker text."""
    if isinstance(message, UsageFacts):
        session_id, status, used, limit, expires_at, seconds_left, at = message
        fields = (
            f"{session_id}{_SEPARATOR}{status}{_SEPARATOR}{used}{_SEPARATOR}{limit}{_SEPARATOR}"
            f"{expires_at or ''}{_SEPARATOR}{'' if seconds_left is None else seconds_left}"
            f"{_SEPARATOR}{at}"
        )
        return f"{channel}{_SEPARATOR}{_FACTS}{fields}"
    return f"{channel}{_SEPARATOR}{_to_json(message)}"


def decode_payload(payload: str) -> Message:
    """The message of a line's payload (the text after the channel and separator)."""
    if not payload.startswith(_FACTS):
        decoded: dict[str, Any] = json.loads(payload)
        return decoded
    session_id, status, used, limit, expires_at, seconds_left, at = payload[1:].split(_SEPARATOR)
    return UsageFacts(
        session_id,
        status,
        int(used),
        int(limit),
        expires_at or None,
        int(seconds_left) if seconds_left else None,
        at,
    )


def deliver_lines(fanout: LocalFanout, lines: Iterable[str]) -> None:
    """Deliver the events of broker lines; only watched channels' payloads are decoded."""
    for line in lines:
        channel, _, payload = line.partition(_SEPARATOR)
        if fanout.has_subscribers(channel):
            fanout.deliver(channel, decode_payload(payload))


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
                await pubsub.subscribe(REDIS_CHANNEL)
                self._ready.set()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message["data"]
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    deliver_lines(self.fanout, text.split("\n"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker went away: retry, subscribers stay
                log.warning("event_bus_reconnect", backend="redis", error=type(exc).__name__)
                await asyncio.sleep(0.5)

    async def publish(self, channel: str, payload: Message) -> None:
        assert self._client is not None, "bus not started"
        await self._client.publish(REDIS_CHANNEL, encode_event(channel, payload))

    async def publish_many(self, events: Sequence[Event]) -> None:
        assert self._client is not None, "bus not started"
        lines = [encode_event(channel, payload) for channel, payload in events]
        for start in range(0, len(lines), BATCH_EVENTS):
            await self._client.publish(
                REDIS_CHANNEL, "\n".join(lines[start : start + BATCH_EVENTS])
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


# A connection the server ended (restart, failover, `pg_terminate_backend`): worth a new one.
_PG_CONNECTION_LOST = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a pooled connection left mid-operation by the cut
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionError,
    OSError,
)


class PostgresEventBus:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.fanout = LocalFanout()
        self._listener: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        await self._listen()

    async def _listen(self) -> None:
        listener = await asyncpg.connect(self.dsn)
        await listener.add_listener(PG_CHANNEL, self._on_notify)
        listener.add_termination_listener(self._on_listener_lost)
        self._listener = listener

    def _on_listener_lost(self, _connection: Any) -> None:
        if self._stopping or (self._reconnecting and not self._reconnecting.done()):
            return
        log.warning("event_bus_reconnect", backend="postgresql")
        self._reconnecting = asyncio.get_running_loop().create_task(
            self._listen_again(), name="kswifi-pg-events"
        )

    async def _listen_again(self) -> None:
        """LISTEN again until it works (subscribers stay; what was sent meanwhile is lost)."""
        while not self._stopping:
            try:
                await self._listen()
                return
            except _PG_CONNECTION_LOST:
                await asyncio.sleep(0.5)

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        _number, _, lines = payload.partition("\n")
        deliver_lines(self.fanout, lines.split("\n"))

    async def publish(self, channel: str, payload: Message) -> None:
        await self.publish_many([(channel, payload)])

    async def publish_many(self, events: Sequence[Event]) -> None:
        """As few NOTIFY payloads as fit under the limit, sent in order by one statement."""
        assert self._pool is not None, "bus not started"
        payloads: list[str] = []
        lines: list[str] = []
        size = 0
        for channel, payload in events:
            line = encode_event(channel, payload)
            line_size = len(line.encode()) + 1
            if line_size + 16 > PG_PAYLOAD_LIMIT:
                raise ValueError("event too large for PostgreSQL NOTIFY")
            if lines and size + line_size > PG_PAYLOAD_LIMIT - 16:
                payloads.append(_notify_text(len(payloads), lines))
                lines, size = [], 0
            lines.append(line)
            size += line_size
        if lines:
            payloads.append(_notify_text(len(payloads), lines))
        if len(payloads) == 1:
            await self._notify("SELECT pg_notify($1, $2)", PG_CHANNEL, payloads[0])
        elif payloads:
            await self._notify(
                "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                PG_CHANNEL,
                payloads,
            )

    async def _notify(self, statement: str, *args: Any) -> None:
        """One retry on a connection the server ended, on fresh connections (the pool's
        others were most likely cut too)."""
        assert self._pool is not None
        try:
            await self._pool.execute(statement, *args)
        except _PG_CONNECTION_LOST:
            await self._pool.expire_connections()
            await self._pool.execute(statement, *args)

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self.fanout.subscription(channel)

    async def stop(self) -> None:
        self._stopping = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_PG_CONNECTION_LOST):
                await self._reconnecting
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(PG_CHANNEL, self._on_notify)
            with contextlib.suppress(Exception):
                await self._listener.close()
        if self._pool is not None:
            await self._pool.close()


def _notify_text(number: int, lines: list[str]) -> str:
    # A first line with the payload's number keeps two equal payloads of one statement apart:
    # PostgreSQL delivers identical payloads of one transaction once.
    return f"{number}\n" + "\n".join(lines)


def remote_event_bus(url: str) -> EventBus:
    """The bus for `KSWIFI_EVENTS_URL`: redis://… or postgresql://…."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisEventBus(url)
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        return PostgresEventBus(url.replace("postgresql+asyncpg://", "postgresql://"))
    raise ValueError(f"unsupported KSWIFI_EVENTS_URL scheme: {scheme!r}")
