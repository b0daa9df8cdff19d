"""HTTP endpoints of the gateways domain: the operator's registry and the agents' protocol."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status

from kswifi.control.deps import AdminUser, BearerCredentials, Ctx, DbSession, GatewayNode
from kswifi.control.errors import Unauthorized, UpgradeRequired
from kswifi.control.events import Subscription, gateway_channel
from kswifi.control.gateways import desired, ingest, leases, service
from kswifi.control.gateways.schemas import (
    GatewayCreate,
    GatewayCreated,
    GatewayEndpoint,
    GatewayOut,
)
from kswifi.control.security import utcnow
from kswifi.protocol import models as protocol

router = APIRouter()


def agent_protocol(
    version: Annotated[
        str | None,
        Header(
            alias=protocol.PROTOCOL_HEADER,
            description="The gateway protocol version the agent speaks",
        ),
    ] = None,
) -> None:
    """Every agent request names the protocol version it speaks; another one (an older agent
    sends none) is refused with a clear error instead of being misread."""
    if version not in {str(served) for served in protocol.SERVED_PROTOCOL_VERSIONS}:
        spoken = f"version {version}" if version else "version 1 (it names none)"
        raise UpgradeRequired(
            f"This control plane speaks gateway protocol version {protocol.PROTOCOL_VERSION};"
            f" the agent speaks {spoken}.",
            headers={"Upgrade": f"kswifi-gateway/{protocol.PROTOCOL_VERSION}"},
        )


AgentProtocol = [Depends(agent_protocol)]


# --- operator ---------------------------------------------------------------------------------


@router.post("/admin/gateways", status_code=status.HTTP_201_CREATED, tags=["admin"])
async def create_gateway(
    body: GatewayCreate, admin: AdminUser, ctx: Ctx, db: DbSession
) -> GatewayCreated:
    """Register a gateway; its token is in this response only."""
    gateway, token = await service.register(
        db,
        ctx.secrets,
        ctx.settings,
        name=body.name,
        region_code=body.region,
        endpoint=body.endpoint,
        capacity=body.capacity,
        listen_port=body.listen_port,
        actor=admin.email,
    )
    out = service.to_out(gateway, active_devices=0, now=utcnow(), settings=ctx.settings)
    return GatewayCreated(gateway=out, token=token)


@router.get("/admin/gateways", tags=["admin"])
async def list_gateways(_admin: AdminUser, ctx: Ctx, db: DbSession) -> list[GatewayOut]:
    return await service.list_out(db, utcnow(), ctx.settings)


@router.post("/admin/gateways/{gateway_id}/rotate-token", tags=["admin"])
async def rotate_gateway_token(
    gateway_id: str, admin: AdminUser, ctx: Ctx, db: DbSession
) -> GatewayCreated:
    """A new token; the agent must be restarted with it (the old one answers 401 at once)."""
    gateway, token = await service.rotate_token(db, gateway_id, actor=admin.email)
    return GatewayCreated(gateway=await _out(db, ctx, gateway.id), token=token)


@router.post("/admin/gateways/{gateway_id}/disable", tags=["admin"])
async def disable_gateway(gateway_id: str, admin: AdminUser, ctx: Ctx, db: DbSession) -> GatewayOut:
    """No new devices go to the gateway and its token is refused."""
    await service.set_enabled(db, gateway_id, False, actor=admin.email)
    return await _out(db, ctx, gateway_id)


@router.post("/admin/gateways/{gateway_id}/endpoint", tags=["admin"])
async def set_gateway_endpoint(
    gateway_id: str, body: GatewayEndpoint, admin: AdminUser, ctx: Ctx, db: DbSession
) -> GatewayOut:
    """Where phones dial the gateway; devices get it the next time their code is shown."""
    await service.set_endpoint(db, gateway_id, body.endpoint, actor=admin.email)
    return await _out(db, ctx, gateway_id)


@router.post("/admin/gateways/{gateway_id}/enable", tags=["admin"])
async def enable_gateway(gateway_id: str, admin: AdminUser, ctx: Ctx, db: DbSession) -> GatewayOut:
    await service.set_enabled(db, gateway_id, True, actor=admin.email)
    return await _out(db, ctx, gateway_id)


async def _out(db: DbSession, ctx: Ctx, gateway_id: str) -> GatewayOut:
    for gateway in await service.list_out(db, utcnow(), ctx.settings):
        if gateway.id == gateway_id:
            return gateway
    raise AssertionError("gateway vanished inside its own transaction")


# --- gateway agents -----------------------------------------------------------------------------


async def _authenticated_gateway_id(ctx: Ctx, credentials: BearerCredentials) -> str:
    """Like `GatewayNode`, but in a short transaction of its own: the long-poll must not hold
    a database transaction (SQLite's write lock, a pooled connection) while it waits."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Gateway token required")
    async with ctx.db.transaction() as db:
        gateway = await service.authenticate(db, credentials.credentials)
        return gateway.id


@router.get(
    "/gateway/v1/desired-state",
    tags=["gateway"],
    dependencies=AgentProtocol,
    response_model=protocol.DesiredState | protocol.DesiredUpdate,
)
async def get_desired_state(
    ctx: Ctx,
    credentials: BearerCredentials,
    since: Annotated[
        int | None,
        Query(ge=0, description="The revision the agent holds: wait until there is a newer one"),
    ] = None,
    changes: Annotated[
        bool,
        Query(description="Answer with a DesiredUpdate: the whole state or a delta (protocol 3)"),
    ] = False,
    known: Annotated[
        str | None,
        Query(max_length=64, description="The tag of the answer the agent holds (with `since`)"),
    ] = None,
) -> Response:
    """The gateway's desired state. With `since` equal to the current revision the answer
    waits (up to `KSWIFI_LONGPOLL_SECONDS`) for a change; on timeout it is the same revision.
    With `changes` the answer is a DesiredUpdate: what changed since the answer tagged
    `known` when this process sent it, else the whole state (`kind` says which)."""
    gateway_id = await _authenticated_gateway_id(ctx, credentials)
    # Subscribe before reading the revision, so a change in between still wakes us.
    async with ctx.events.subscribe(gateway_channel(gateway_id)) as subscription:
        if since is not None:
            async with ctx.db.transaction() as db:
                revision = await desired.current_revision(db, gateway_id)
                undelivered = await leases.has_undelivered_holds(db, gateway_id)
            if since == revision and not undelivered:
                await _wait_for_new_revision(subscription, since, ctx.settings.longpoll_seconds)
    body: protocol.DesiredState | protocol.DesiredUpdate
    async with ctx.db.transaction() as db:
        if changes:
            held = known if since is not None else None
            body = await desired.desired_update(
                db, ctx.secrets, gateway_id, utcnow(), ctx.events, ctx.settings, held
            )
        else:
            body = await desired.desired_state(
                db, ctx.secrets, gateway_id, utcnow(), ctx.events, ctx.settings
            )
    # Serialized once by pydantic-core, not re-validated by FastAPI: 10,000 peers stay cheap.
    return Response(body.model_dump_json(), media_type="application/json")


async def _wait_for_new_revision(subscription: Subscription, since: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        message = await subscription.get(left)
        if message is None:
            return
        revision = message.get("revision")
        if not isinstance(revision, int) or revision != since:
            return


@router.post(
    "/gateway/v1/usage",
    tags=["gateway"],
    dependencies=AgentProtocol,
    response_model=protocol.UsageAck,
)
async def post_usage(
    report: protocol.UsageReport, gateway: GatewayNode, ctx: Ctx, db: DbSession
) -> Response:
    """Apply a usage batch once; a replayed sequence answers `duplicate: true`."""
    ack = await ingest.apply_usage(db, ctx.events, gateway, report, utcnow())
    # Serialized once by pydantic-core: a grant per session of the report, not re-validated.
    return Response(ack.model_dump_json(), media_type="application/json")


@router.post("/gateway/v1/heartbeat", tags=["gateway"], dependencies=AgentProtocol)
async def post_heartbeat(
    heartbeat: protocol.GatewayHeartbeat, gateway: GatewayNode, ctx: Ctx, db: DbSession
) -> protocol.HeartbeatAck:
    return await service.record_heartbeat(db, gateway, heartbeat, utcnow(), ctx.events)


@router.post("/gateway/v1/leases", tags=["gateway"], dependencies=AgentProtocol)
async def post_leases(
    request: protocol.LeaseRequest, gateway: GatewayNode, ctx: Ctx, db: DbSession
) -> protocol.LeaseResponse:
    """Top up the gateway's leases of sessions it carries; never more than remains."""
    return await leases.grant(db, gateway, request.session_ids, utcnow(), ctx.events)
