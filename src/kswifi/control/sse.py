"""Server-sent events as every stream writes them: one event's text and a resumed stream's id.

Streams (a session's live usage, a person's device notices) send `retry` first, a comment as
keep-alive when nothing happened for `KEEPALIVE_SECONDS`, and `reconnect` at the end of their
lifetime; EventSource then reconnects by itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from kswifi.control.events import Message, Subscription

KEEPALIVE_SECONDS = 15.0
RETRY_MILLISECONDS = 1000
KEEPALIVE = ": keepalive\n\n"

# One encoder for every event (`json.dumps(..., default=str)` builds one per call).
to_json = json.JSONEncoder(separators=(",", ":"), default=str).encode


def format_event(event_id: int, kind: str, data: dict[str, Any]) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {to_json(data)}\n\n"


def parse_last_event_id(value: str | None) -> int:
    """Event ids are increasing integers; anything else restarts the count."""
    if value is None:
        return 0
    try:
        return max(0, int(value.strip()))
    except ValueError:
        return 0


Render = Callable[[int, Message], tuple[str, bool]]
"""A message as the event with this id: its text, and whether it ends the stream."""


async def relay(
    subscription: Subscription, render: Render, *, event_id: int, deadline: float
) -> AsyncIterator[str]:
    """The messages of `subscription` as events (ids from `event_id` + 1), until one ends the
    stream or `deadline` (monotonic) passes, then `reconnect`. Whatever is already waiting
    goes out in the same write; a silence of `KEEPALIVE_SECONDS` gets a keep-alive comment."""
    last_sent = time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            yield format_event(event_id + 1, "reconnect", {"type": "reconnect"})
            return
        message = await subscription.receive(min(remaining, KEEPALIVE_SECONDS))
        if message is None:
            if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                yield KEEPALIVE
                last_sent = time.monotonic()
            continue
        chunks: list[str] = []
        for waiting in [message, *subscription.drain()]:
            event_id += 1
            text, final = render(event_id, waiting)
            chunks.append(text)
            if final:
                yield "".join(chunks)
                return
        yield "".join(chunks)
        last_sent = time.monotonic()


def response(events: AsyncIterator[str]) -> StreamingResponse:
    """`events` as an HTTP answer: never cached, never buffered by a proxy."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
