"""My devices: every installed device with its state, rename, remove, the code again with
the same keys, and new keys only after the warning is confirmed."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import select

from kswifi.control.deps import AppContext
from kswifi.control.models import Device
from tests.control.profiles.qr_decode import decode_data_uri
from tests.web.conftest import (
    WebUser,
    add_gateway,
    buy_with_voucher,
    csrf_from,
    make_vouchers,
    post_form,
)


async def _device(ctx: AppContext) -> Device:
    async with ctx.db.transaction() as db:
        [device] = list(await db.scalars(select(Device)))
        return device


def _config_code(page: str) -> str:
    [code] = re.findall(r'<img src="([^"]+)" alt="Code for the WireGuard app"', page)
    return decode_data_uri(code)[0]


async def _action(client: httpx.AsyncClient, action: str, **fields: str) -> httpx.Response:
    page = await client.get("/devices")
    return await client.post(action, data={"csrf_token": csrf_from(page.text), **fields})


async def test_devices_list_rename_show_again_new_keys_and_remove(
    client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
) -> None:
    await add_gateway(ctx)
    [code] = await make_vouchers(ctx, "premium")
    session_id = await buy_with_voucher(client, code)
    empty = await client.get("/devices")
    assert "You have no devices set up yet." in empty.text
    ready = await post_form(client, f"/sessions/{session_id}/setup", device_name="Phone")
    assert ready.status_code == 200
    first_config = _config_code(ready.text)

    listed = await client.get("/devices")
    assert listed.status_code == 200
    assert "<h2" in listed.text and ">Phone</h2>" in listed.text
    assert "On: drawing from your current session" in listed.text
    assert "Not connected yet" in listed.text
    device = await _device(ctx)

    renamed = await _action(client, f"/devices/{device.id}/rename", device_name="Mum's phone")
    assert renamed.status_code == 303 and renamed.headers["location"] == "/devices?notice=renamed"
    assert "Mum&#39;s phone" in (await client.get("/devices?notice=renamed")).text
    refused = await _action(client, f"/devices/{device.id}/rename", device_name="")
    assert refused.status_code == 422 and "1 to 64 characters" in refused.text

    again = await _action(client, f"/devices/{device.id}/code")
    assert again.status_code == 200 and again.headers["cache-control"] == "no-store"
    assert _config_code(again.text) == first_config  # the same keys: nothing to reinstall
    assert (await _device(ctx)).public_key == device.public_key

    unconfirmed = await _action(client, f"/devices/{device.id}/code", rotate="1")
    assert unconfirmed.status_code == 422 and "stops working" in unconfirmed.text
    assert (await _device(ctx)).public_key == device.public_key
    rotated = await _action(client, f"/devices/{device.id}/code", rotate="1", confirm="1")
    assert rotated.status_code == 200
    assert _config_code(rotated.text) != first_config
    assert (await _device(ctx)).public_key != device.public_key

    removed = await _action(client, f"/devices/{device.id}/remove")
    assert removed.status_code == 303
    assert "Device removed" in (await client.get(removed.headers["location"])).text
    assert (await _device(ctx)).status == "removed"
    gone = await _action(client, f"/devices/{device.id}/code")
    assert gone.status_code == 404 and "No such Connect Profile" in gone.text


async def test_someone_elses_device_is_not_found(
    client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
) -> None:
    await add_gateway(ctx)
    [code] = await make_vouchers(ctx, "premium")
    session_id = await buy_with_voucher(client, code)
    await post_form(client, f"/sessions/{session_id}/setup")
    device = await _device(ctx)
    await client.post(
        "/logout", data={"csrf_token": csrf_from((await client.get("/devices")).text)}
    )
    from tests.web.conftest import web_signup

    await web_signup(client)
    for action in ("code", "remove", "rename"):
        response = await _action(client, f"/devices/{device.id}/{action}", device_name="x")
        assert response.status_code == 404, action
    assert (await _device(ctx)).status == "active"
