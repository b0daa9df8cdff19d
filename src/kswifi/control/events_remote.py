"""Cross-replica event buses: Redis pub/sub and PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

from kswifi.control.events import EventBus


def remote_event_bus(url: str) -> EventBus:
    """The bus for `KSWIFI_EVENTS_URL`."""
    raise ValueError(f"unsupported KSWIFI_EVENTS_URL scheme: {url.split(':', 1)[0]!r}")
