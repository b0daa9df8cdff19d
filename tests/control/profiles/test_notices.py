"""Device notices: an open page hears that a device got new keys, was renamed or removed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.profiles import notices
from tests.control.profiles.conftest import (
    MakeOwner,
    MakeSession,
    Owner,
    RegisteredGateway,
    generate,
)
from tests.control.usage.test_stream import parse_events


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short-lived streams, so a whole one fits in a test."""
    return settings.model_copy(update={"sse_max_seconds": 1.5})


async def _profile(client: httpx.AsyncClient, owner: Owner, session_id: str, **fields: Any) -> str:
    response = await generate(client, owner, session_id, **fields)
    assert response.status_code == 200, response.text
    return str(response.json()["connect_id"])


async def _listen_while(
    client: httpx.AsyncClient, owner: Owner, action: Callable[[], Awaitable[None]]
) -> list[tuple[int, str, dict[str, object]]]:
    """The notices stream of `owner` for its lifetime, with `action` done meanwhile."""

    async def later() -> None:
        await asyncio.sleep(0.3)
        await action()

    task = asyncio.create_task(later())
    response = await client.get("/api/connect/profiles/events", headers=owner.headers)
    await task
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("retry: ")
    return parse_events(response.text)


async def test_first_event_lists_devices_with_their_keys(
    client: httpx.AsyncClient,
    ctx: AppContext,
    owner: Owner,
    make_session: MakeSession,
    gateway: RegisteredGateway,
) -> None:
    session = await make_session(owner.id)
    phone = await _profile(client, owner, session.id, device_name="Phone")

    async def nothing() -> None:
        return None

    events = await _listen_while(client, owner, nothing)
    assert [kind for _, kind, _ in events] == ["devices", "reconnect"]
    async with ctx.db.transaction() as db:
        keys = await notices.device_keys(db, owner.id)
    assert events[0][2]["devices"] == keys
    assert set(keys) == {phone} and len(keys[phone]) == 16


async def test_rotate_rename_and_remove_reach_the_owner_only(
    client: httpx.AsyncClient,
    ctx: AppContext,
    owner: Owner,
    make_owner: MakeOwner,
    make_session: MakeSession,
    gateway: RegisteredGateway,
) -> None:
    session = await make_session(owner.id)
    phone = await _profile(client, owner, session.id, device_name="Phone")
    before = (await _listen_while(client, owner, _noop))[0][2]["devices"]
    stranger = await make_owner()
    await _profile(client, stranger, (await make_session(stranger.id)).id)

    async def change_everything() -> None:
        shown_again = await generate(client, owner, session.id, device_name="Phone")
        assert shown_again.json()["rotated"] is False  # showing again is no change
        assert (await generate(client, owner, session.id, device_name="Phone", rotate=True)).json()[
            "rotated"
        ]
        renamed = await client.patch(
            f"/api/connect/profiles/{phone}", json={"device_name": "Pixel"}, headers=owner.headers
        )
        assert renamed.status_code == 200
        removed = await client.delete(f"/api/connect/profiles/{phone}", headers=owner.headers)
        assert removed.status_code == 204

    async def watch_stranger() -> list[tuple[int, str, dict[str, object]]]:
        return await _listen_while(client, stranger, _noop)

    strangers = asyncio.create_task(watch_stranger())
    events = await _listen_while(client, owner, change_everything)
    changes = [(kind, data.get("change"), data.get("device_name")) for _, kind, data in events]
    assert changes == [
        ("devices", None, None),
        ("device", "rotated", "Phone"),
        ("device", "renamed", "Pixel"),
        ("device", "removed", "Pixel"),
        ("reconnect", None, None),
    ]
    rotated = events[1][2]
    assert rotated["connect_id"] == phone and rotated["key"] != before[phone]
    assert events[2][2]["key"] == rotated["key"]  # a new name, the same keys
    assert [kind for _, kind, _ in await strangers] == ["devices", "reconnect"]


async def test_needs_a_login(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/connect/profiles/events")
    assert response.status_code == 401


async def _noop() -> None:
    return None
