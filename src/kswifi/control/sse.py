"""Server-sent events as every stream writes them: one event's text and a resumed stream's id.

Streams (a session's live usage, a person's device notices) send `retry` first, a comment as
keep-alive when nothing happened for `KEEPALIVE_SECONDS`, and `reconnect` at the end of their
lifetime; EventSource then reconnects by itself.
"""

from __future__ import annotations

import json
from typing import Any

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
