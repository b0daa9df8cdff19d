"""Usage a gateway reports for a session whose device has left it (moved to another gateway)
is billed when the gateway carried the session (it holds a lease of it); a gateway that never
carried the session is still refused."""

from __future__ import annotations

import httpx
from sqlalchemy import delete, update

from kswifi.control.deps import AppContext
from kswifi.control.models import Device
from tests.control.gateways.conftest import World
from tests.control.gateways.test_protocol import fetch_state, post_usage, usage_report


async def test_bytes_served_before_the_device_moved_are_billed(
    client: httpx.AsyncClient, ctx: AppContext, world: World
) -> None:
    old, new = await world.gateway(), await world.gateway()
    session_id = await world.session()
    device = await world.device(session_id, old.id)
    state = await fetch_state(client, old)  # the old gateway carries it: it holds a lease
    assert [peer.session_id for peer in state.peers] == [session_id]
    async with ctx.db.transaction() as db:  # the device is regenerated onto another gateway
        await db.execute(update(Device).where(Device.id == device.id).values(gateway_id=new.id))
    ack = await post_usage(client, old, usage_report(1, (session_id, 700, 300)))
    assert ack.accepted
    assert (await world.get_session(session_id)).used_bytes == 1000


async def test_bytes_served_before_the_device_row_went_are_billed(
    client: httpx.AsyncClient, ctx: AppContext, world: World
) -> None:
    gateway = await world.gateway()
    session_id = await world.session()
    device = await world.device(session_id, gateway.id)
    await fetch_state(client, gateway)
    async with ctx.db.transaction() as db:
        await db.execute(delete(Device).where(Device.id == device.id))
    assert (await post_usage(client, gateway, usage_report(1, (session_id, 10, 20)))).accepted
    assert (await world.get_session(session_id)).used_bytes == 30


async def test_a_gateway_that_never_carried_the_session_is_still_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    owner, stranger = await world.gateway(), await world.gateway()
    session_id = await world.session()
    await world.device(session_id, owner.id)
    await fetch_state(client, owner)
    await fetch_state(client, stranger)
    ack = await post_usage(client, stranger, usage_report(1, (session_id, 5000, 5000)))
    assert ack.accepted  # the batch is taken, the foreign session's bytes are not
    assert (await world.get_session(session_id)).used_bytes == 0


async def test_a_used_up_share_does_not_end_a_session_others_still_hold_bytes_of(
    client: httpx.AsyncClient, world: World
) -> None:
    first, second = await world.gateway(), await world.gateway()
    session_id = await world.session(limit_bytes=1_000_000)
    await world.device(session_id, first.id)
    assert (await fetch_state(client, first)).peers[0].quota_bytes == 1_000_000
    await world.device(session_id, second.id)
    share = (await fetch_state(client, second)).peers[0].quota_bytes
    assert share == 0  # the whole budget is leased to the first gateway
    # The second gateway's kernel says its (empty) lease is used up: not the session.
    await post_usage(client, second, usage_report(1, (session_id, 0, 0), exhausted=True))
    assert (await world.get_session(session_id)).status == "active"
    # The first gateway's lease was all that remained: its exhaustion ends the session.
    await post_usage(client, first, usage_report(1, (session_id, 999_000, 0), exhausted=True))
    assert (await world.get_session(session_id)).status == "exhausted"
