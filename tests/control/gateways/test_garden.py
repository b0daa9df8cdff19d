"""The control plane's side of the walled garden: every installed device stays a peer, the
ones without a live session without limits; the garden's spec comes with every desired state;
an agent speaking an older protocol is refused with a clear error."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from kswifi.agent.client import ControlPlaneClient
from kswifi.agent.errors import ProtocolMismatch
from kswifi.control.deps import AppContext
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.models import DataSession, utcnow
from kswifi.control.sessions import service as sessions
from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, DesiredState
from tests.control.gateways.conftest import World


async def _state(client: httpx.AsyncClient, headers: dict[str, str]) -> DesiredState:
    response = await client.get("/api/gateway/v1/desired-state", headers=headers)
    assert response.status_code == 200, response.text
    return DesiredState.model_validate_json(response.content)


async def test_a_device_whose_session_ended_stays_a_peer_in_the_garden(
    client: httpx.AsyncClient, ctx: AppContext, world: World
) -> None:
    gateway = await world.gateway()
    paying = await world.device(await world.session(), gateway.id)
    ended_session = await world.session()
    ended = await world.device(ended_session, gateway.id)
    async with ctx.db.transaction() as db:
        session = await sessions.get(db, ended_session)
        moved = await sessions.end(db, ctx.events, session, "exhausted", "data_used_up", utcnow())
        await gateway_desired.bump_revision(db, moved, ctx.events)
    assert moved == {gateway.id}
    state = await _state(client, gateway.headers)
    peers = {peer.public_key: peer for peer in state.peers}
    assert set(peers) == {paying.public_key, ended.public_key}
    assert peers[paying.public_key].session_id == paying.session_id
    garden = peers[ended.public_key]
    assert garden.session_id is None and garden.quota_bytes == 0 and garden.expires_at is None
    assert garden.preshared_key == ended.preshared_key  # same keys: the installed profile
    assert state.garden is not None


async def test_a_device_of_a_session_past_its_time_is_in_the_garden_at_once(
    client: httpx.AsyncClient, ctx: AppContext, world: World
) -> None:
    gateway = await world.gateway()
    session_id = await world.session()
    device = await world.device(session_id, gateway.id)
    async with ctx.db.transaction() as db:
        await db.execute(
            update(DataSession)
            .where(DataSession.id == session_id)
            .values(expires_at=utcnow())  # the worker has not ended it yet
        )
    [peer] = (await _state(client, gateway.headers)).peers
    assert peer.public_key == device.public_key and peer.session_id is None


async def test_the_garden_names_dns_the_app_and_the_buy_page(ctx: AppContext, world: World) -> None:
    gateway = await world.gateway()
    settings = ctx.settings.model_copy(
        update={
            "public_url": "https://203.0.113.80",
            "walled_garden_allow": "192.0.2.0/28, 2001:db8:aa::/48",
            "walled_garden_kbit": 128,
        }
    )
    async with ctx.db.transaction() as db:
        state = await gateway_desired.desired_state(
            db, ctx.secrets, gateway.id, utcnow(), ctx.events, settings
        )
    assert state.garden is not None
    assert state.garden.allow == ["203.0.113.80/32", "192.0.2.0/28", "2001:db8:aa::/48"]
    assert state.garden.dns == ["1.1.1.1", "2606:4700:4700::1111"]  # the region's resolvers
    assert state.garden.redirect_url == "https://203.0.113.80/plans"
    assert state.garden.rate_kbit == 128


@pytest.mark.parametrize("version", [None, "1", "4"])
async def test_an_agent_speaking_another_protocol_is_refused_clearly(
    client: httpx.AsyncClient, world: World, version: str | None
) -> None:
    gateway = await world.gateway()
    headers = {**gateway.headers, PROTOCOL_HEADER: version or ""}
    if version is None:
        del headers[PROTOCOL_HEADER]
    async with httpx.AsyncClient(transport=client._transport, base_url=client.base_url) as bare:
        for method, path in (
            ("GET", "/api/gateway/v1/desired-state"),
            ("POST", "/api/gateway/v1/heartbeat"),
            ("POST", "/api/gateway/v1/usage"),
            ("POST", "/api/gateway/v1/leases"),
        ):
            response = await bare.request(method, path, headers=headers, json={})
            assert response.status_code == 426, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "protocol_version"
            assert f"speaks gateway protocol version {PROTOCOL_VERSION}" in error["message"]
            assert response.headers["upgrade"] == f"kswifi-gateway/{PROTOCOL_VERSION}"


async def test_the_agent_client_speaks_the_protocol_and_names_a_refusal(
    app: FastAPI, world: World
) -> None:
    """The real agent client against the real control plane: the current version is served;
    one the control plane does not speak stops with an error an operator can act on."""
    gateway = await world.gateway()
    agent = ControlPlaneClient("http://cp", gateway.token, transport=httpx.ASGITransport(app))
    try:
        update = await agent.desired_update()
        assert update.state is not None and update.state.garden is not None
        agent._http.headers[PROTOCOL_HEADER] = "1"  # an agent from before the garden
        with pytest.raises(ProtocolMismatch) as refused:
            await agent.desired_update()
    finally:
        await agent.aclose()
    message = str(refused.value)
    assert "refused this agent's gateway protocol version" in message
    assert "speaks gateway protocol version 3; the agent speaks version 1" in message
    assert "Upgrade the agent" in message


async def test_an_agent_of_version_2_still_gets_whole_states(
    client: httpx.AsyncClient, world: World
) -> None:
    """Gateways upgrade one at a time after the control plane: version 2 is still served."""
    gateway = await world.gateway()
    response = await client.get(
        "/api/gateway/v1/desired-state", headers={**gateway.headers, PROTOCOL_HEADER: "2"}
    )
    assert response.status_code == 200, response.text
    state = DesiredState.model_validate_json(response.content)
    assert state.interface is not None
