"""Event bus: usage and desired-state changes fanned out to SSE streams and long-polls.

The embedded default is in-process. Replicas share events through Redis pub/sub or
PostgreSQL LISTEN/NOTIFY (see `kswifi.control.events_remote`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.db import after_commit

Event = tuple[str, dict[str, Any]]
"""A payload and the channel it goes out on."""


class EventBus(Protocol):
    async def publish(self, channel: str, payload: dict[str, Any]) -> None: ...

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Publish `events` in order, as one message to the broker where it can (a usage
        report's hundreds of events are one round trip, not hundreds)."""
        ...

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Subscription:
    """Messages of one channel, buffered; slow readers lose the oldest, never block others."""

    def __init__(self, channel: str, maxsize: int = 256) -> None:
        self.channel = channel
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=maxsize)

    def deliver(self, payload: dict[str, Any]) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(payload)

    def drain(self) -> list[dict[str, Any]]:
        """Every message already waiting, oldest first (none: an empty list)."""
        messages: list[dict[str, Any]] = []
        while not self._queue.empty():
            messages.append(self._queue.get_nowait())
        return messages

    async def get(self, wait_seconds: float | None = None) -> dict[str, Any] | None:
        """The next message, or None when `wait_seconds` pass without one."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        if wait_seconds is not None and wait_seconds <= 0:
            return None
        try:
            # A timer, not `wait_for`'s task per call: thousands of streams wait here.
            async with asyncio.timeout(wait_seconds):
                return await self._queue.get()
        except TimeoutError:
            return None


class LocalFanout:
    """Delivers to the subscriptions of this process; remote buses reuse it."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, set[Subscription]] = defaultdict(set)

    def deliver(self, channel: str, payload: dict[str, Any]) -> None:
        for subscription in list(self._subscriptions.get(channel, ())):
            subscription.deliver(payload)

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

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
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


def publish_after_commit(
    db: AsyncSession, bus: EventBus, channel: str, payload: dict[str, Any]
) -> None:
    """Publish `payload` on `channel` once the current transaction has committed."""

    async def _publish() -> None:
        await bus.publish(channel, payload)

    after_commit(db, _publish)


def publish_many_after_commit(db: AsyncSession, bus: EventBus, events: Sequence[Event]) -> None:
    """Publish `events` in order with one `publish_many` once the transaction has committed."""
    if not events:
        return

    async def _publish() -> None:
        await bus.publish_many(events)

    after_commit(db, _publish)
