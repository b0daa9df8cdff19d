"""Device notices for open pages: a page showing one of a person's devices learns, within a
second, that another page or phone gave that device new keys, removed or renamed it.

Stream protocol (`text/event-stream`): first `devices`, the person's devices as they are now
(`{connect_id: key}`, where `key` names the device's current keys without revealing them), so
a page that missed notices while it reconnected compares what it shows with what is true;
then a `device` event per change (`change` is `rotated`, `removed` or `renamed`). After the
stream's lifetime comes `reconnect`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.db import Database
from kswifi.control.events import (
    EventBus,
    Message,
    UsageFacts,
    person_channel,
    publish_after_commit,
)
from kswifi.control.models import Device
from kswifi.control.profiles import repository
from kswifi.control.sse import RETRY_MILLISECONDS, format_event, relay

Change = Literal["rotated", "removed", "renamed"]


def key_of(device: Device) -> str:
    """A short name for the device's current keys: it changes when they are rotated and says
    nothing of them (public keys are not secret, but a page needs no more than this)."""
    return hashlib.sha256(device.public_key.encode()).hexdigest()[:16]


async def device_keys(db: AsyncSession, user_id: str) -> dict[str, str]:
    """`{connect_id: key}` of the person's installed devices."""
    return {d.id: key_of(d) for d in await repository.active_devices_of_user(db, user_id)}


@dataclass(frozen=True)
class ShownDevice:
    """What a page showing a device's code says of it, to notice when that changes."""

    key: str
    name: str


async def shown_device(db: AsyncSession, device_id: str) -> ShownDevice:
    device = await repository.get_device(db, device_id)
    if device is None:  # pragma: no cover - the page was just made from it
        return ShownDevice(key="", name="")
    return ShownDevice(key=key_of(device), name=device.device_name)


def announce(db: AsyncSession, bus: EventBus, device: Device, change: Change) -> None:
    """Tell the owner's open pages about `change` once the transaction has committed."""
    publish_after_commit(
        db,
        bus,
        person_channel(device.user_id),
        {
            "type": "device",
            "change": change,
            "connect_id": device.id,
            "device_name": device.device_name,
            "key": key_of(device),
        },
    )


async def stream(
    database: Database,
    bus: EventBus,
    user_id: str,
    *,
    last_event_id: int,
    max_seconds: float,
) -> AsyncIterator[str]:
    """The device notices of one person (already authenticated)."""
    event_id = last_event_id
    deadline = time.monotonic() + max_seconds
    async with bus.subscribe(person_channel(user_id)) as subscription:
        # Subscribe first, then read: no change can fall between the list and the stream.
        async with database.transaction() as db:
            devices = await device_keys(db, user_id)
        event_id += 1
        yield f"retry: {RETRY_MILLISECONDS}\n" + format_event(
            event_id, "devices", {"type": "devices", "devices": devices}
        )
        async for chunk in relay(subscription, _render, event_id=event_id, deadline=deadline):
            yield chunk


def _render(event_id: int, message: Message) -> tuple[str, bool]:
    data = message.as_dict() if isinstance(message, UsageFacts) else message
    return format_event(event_id, str(data.get("type", "device")), data), False
