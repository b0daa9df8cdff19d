"""Event bus: usage and desired-state changes fanned out to SSE streams and long-polls.

The embedded default is in-process. Replicas share events through Redis pub/sub or
PostgreSQL LISTEN/NOTIFY (see `kswifi.control.events_remote`).

A message is a JSON-able dict, or the `UsageFacts` of a session's `usage` event: a usage
report publishes one per session, most of them for sessions nobody watches, so the bus carries
the few facts and only a stream that shows the event renders it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.db import after_commit
from kswifi.logs import get_logger

log = get_logger("kswifi.events")


class UsageFacts(NamedTuple):
    """What a session's `usage` event says, unrendered (the stream adds remaining bytes,
    percent and "2.1 GB of 5 GB used"). Times are ISO 8601 text, as the event shows them."""

    session_id: str
    status: str
    used_bytes: int
    data_limit_bytes: int
    expires_at: str | None
    seconds_left: int | None
    at: str

    def as_dict(self) -> dict[str, Any]:
        """The facts as a message dict: `type` `usage` and the fields above."""
        return {"type": "usage", **self._asdict()}


Message = dict[str, Any] | UsageFacts
Event = tuple[str, Message]
"""A message and the channel it goes out on."""
# A timer may fire this early (the event loop rounds to its clock); that counts as on time.
_TIMER_SLACK_SECONDS = 0.001


class EventBus(Protocol):
    async def publish(self, channel: str, payload: Message) -> None: ...

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Publish `events` in order, as one message to the broker where it can (a usage
        report's hundreds of events are one round trip, not hundreds)."""
        ...

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Subscription:
    """Messages of one channel for one reader, buffered; a slow reader loses the oldest, never
    blocks others."""

    def __init__(self, channel: str, maxsize: int = 256) -> None:
        self.channel = channel
        self._messages: deque[Message] = deque(maxlen=maxsize)
        self._waiter: asyncio.Future[None] | None = None
        # One timer per subscription, moved only when it fires: a stream waits again after
        # every event, and a timer made and cancelled per wait cost more than the rest of it.
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None

    def deliver(self, message: Message) -> None:
        self._messages.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drain(self) -> list[Message]:
        """Every message already waiting, as published, oldest first (none: an empty list)."""
        messages = list(self._messages)
        self._messages.clear()
        return messages

    async def get(self, wait_seconds: float | None = None) -> dict[str, Any] | None:
        """The next message as a dict (`UsageFacts` as `as_dict()`), or None when
        `wait_seconds` pass without one."""
        message = await self.receive(wait_seconds)
        if isinstance(message, UsageFacts):
            return message.as_dict()
        return message

    async def receive(self, wait_seconds: float | None = None) -> Message | None:
        """The next message as published, or None when `wait_seconds` pass without one."""
        if self._messages:
            return self._messages.popleft()
        if wait_seconds is not None and wait_seconds <= 0:
            return None
        if self._waiter is not None:
            raise RuntimeError("a subscription has one reader")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        if wait_seconds is None:
            self._deadline = math.inf
        else:
            self._deadline = loop.time() + wait_seconds
            if self._timer is None or self._timer.when() > self._deadline:
                self._arm_timer(loop)
        try:
            await waiter
        finally:
            self._waiter = None
        return self._messages.popleft() if self._messages else None

    def close(self) -> None:
        """Stop the timer (the subscription is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(self._deadline, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms the timer again
        if self._deadline - loop.time() > _TIMER_SLACK_SECONDS:
            if self._deadline != math.inf:
                self._arm_timer(loop)  # a later wait moved the deadline on
            return
        waiter.set_result(None)


class LocalFanout:
    """Delivers to the subscriptions of this process; remote buses reuse it."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, set[Subscription]] = defaultdict(set)

    def deliver(self, channel: str, message: Message) -> None:
        for subscription in list(self._subscriptions.get(channel, ())):
            subscription.deliver(message)

    def has_subscribers(self, channel: str) -> bool:
        """Whether anyone here listens on `channel` (else a payload need not even be decoded)."""
        return channel in self._subscriptions

    @contextlib.asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(channel)
        self._subscriptions[channel].add(subscription)
        try:
            yield subscription
        finally:
            subscription.close()
            subscribers = self._subscriptions.get(channel)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscriptions[channel]

    def channels(self) -> list[str]:
        return list(self._subscriptions)


class InProcessEventBus:
    """The embedded default: one process, no broker."""

    def __init__(self) -> None:
        self.fanout = LocalFanout()

    async def publish(self, channel: str, payload: Message) -> None:
        self.fanout.deliver(channel, payload)

    async def publish_many(self, events: Sequence[Event]) -> None:
        for channel, payload in events:
            await self.publish(channel, payload)

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self.fanout.subscription(channel)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def session_channel(session_id: str) -> str:
    return f"session.{session_id}"


def gateway_channel(gateway_id: str) -> str:
    return f"gateway.{gateway_id}"


def person_channel(user_id: str) -> str:
    """Notices about a person's devices, for the pages they have open."""
    return f"person.{user_id}"


def publish_after_commit(db: AsyncSession, bus: EventBus, channel: str, payload: Message) -> None:
    """Publish `payload` on `channel` once the current transaction has committed."""

    async def _publish() -> None:
        await _publish_committed(bus, [(channel, payload)])

    after_commit(db, _publish)


def publish_many_after_commit(db: AsyncSession, bus: EventBus, events: Sequence[Event]) -> None:
    """Publish `events` in order with one `publish_many` once the transaction has committed."""
    if not events:
        return

    async def _publish() -> None:
        await _publish_committed(bus, events)

    after_commit(db, _publish)


async def _publish_committed(bus: EventBus, events: Sequence[Event]) -> None:
    """The change is committed: a broker that cannot take its events must not turn the
    request into an error. Listeners miss a wake-up and catch up (a long-poll times out and
    reads the database again, a usage stream's next event carries the totals)."""
    try:
        await bus.publish_many(events)
    except Exception as exc:
        log.warning("events_not_published", events=len(events), error=type(exc).__name__)
