"""Live usage for people: the server-sent event stream and the usage history.

Stream protocol (`text/event-stream`): the first event is always a `usage` snapshot (so a
client resuming with `Last-Event-ID` sees the current totals at once); then `usage`, `warning`
(80 % and 95 %), and a final `exhausted`, `expired` or `revoked`. After the stream's maximum
lifetime it sends `reconnect` and closes; EventSource reconnects by itself after `retry`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from kswifi.control.db import Database
from kswifi.control.events import EventBus, Message, UsageFacts, session_channel
from kswifi.control.models import ENDED_STATES, DataSession, utcnow
from kswifi.control.sessions import service as sessions
from kswifi.control.sse import RETRY_MILLISECONDS, format_event, relay
from kswifi.control.usage.schemas import UsageHistory, UsagePoint

FINAL_EVENTS = ENDED_STATES
"""A stream ends with the event named after the state that ended its session."""
_json_text = json.encoder.encode_basestring_ascii  # a str as `to_json` writes it


def usage_data(facts: UsageFacts) -> str:
    """The JSON of a live `usage` event, rendered from its facts: exactly what `sse.to_json`
    makes of the event's fields (in this order), without building a dict per event."""
    session_id, status, used, limit, expires_at, seconds_left, at = facts
    return (
        f'{{"type":"usage","session_id":{_json_text(session_id)},"status":{_json_text(status)},'
        f'"at":{_json_text(at)},'
        f'"expires_at":{"null" if expires_at is None else _json_text(expires_at)},'
        f'"seconds_left":{"null" if seconds_left is None else seconds_left},'
        f'"used_bytes":{used},"remaining_bytes":{max(0, limit - used)},'
        f'"data_limit_bytes":{limit},"usage_percent":{sessions.usage_percent(facts)!r},'
        f'"usage_text":{_json_text(sessions.usage_text(used, limit))}}}'
    )


def snapshot(session: DataSession, now: datetime) -> dict[str, Any]:
    out = sessions.to_out(session, now)
    return {
        "type": "usage",
        "session_id": session.id,
        "status": out.status,
        "used_bytes": out.used_bytes,
        "remaining_bytes": out.remaining_bytes,
        "data_limit_bytes": out.data_limit_bytes,
        "usage_percent": out.usage_percent,
        "usage_text": out.usage_text,
        "expires_at": out.expires_at,
        "seconds_left": out.seconds_left,
        "at": now.isoformat(),
    }


async def stream(
    database: Database,
    bus: EventBus,
    session_id: str,
    *,
    last_event_id: int,
    max_seconds: float,
) -> AsyncIterator[str]:
    """The event stream of one session, already checked to belong to the caller."""
    event_id = last_event_id
    deadline = time.monotonic() + max_seconds
    async with bus.subscribe(session_channel(session_id)) as subscription:
        # Subscribe first, then read: no event can fall between the snapshot and the stream.
        async with database.transaction() as db:
            session = await sessions.get(db, session_id)
            now = utcnow()
            first = snapshot(session, now)
            ended = sessions.effective_status(session, now)
        event_id += 1
        yield f"retry: {RETRY_MILLISECONDS}\n" + format_event(event_id, "usage", first)
        if ended in FINAL_EVENTS:
            event_id += 1
            yield format_event(event_id, ended, {"type": ended, "session_id": session_id})
            return
        async for chunk in relay(subscription, _render, event_id=event_id, deadline=deadline):
            yield chunk


def _render(event_id: int, message: Message) -> tuple[str, bool]:
    if isinstance(message, UsageFacts):
        return f"id: {event_id}\nevent: usage\ndata: {usage_data(message)}\n\n", False
    kind = str(message.get("type", "usage"))
    return format_event(event_id, kind, message), kind in FINAL_EVENTS


async def history(database: Database, session: DataSession) -> UsageHistory:
    async with database.transaction() as db:
        rows = await sessions.usage_history(db, session)
    points: list[UsagePoint] = []
    cumulative = 0
    for row in rows:
        total = row.rx_bytes + row.tx_bytes
        cumulative += total
        points.append(
            UsagePoint(
                at=row.bucket_start,
                rx_bytes=row.rx_bytes,
                tx_bytes=row.tx_bytes,
                total_bytes=total,
                cumulative_bytes=cumulative,
            )
        )
    return UsageHistory(session_id=session.id, bucket_seconds=60, points=points)
