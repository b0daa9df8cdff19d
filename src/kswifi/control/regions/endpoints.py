"""HTTP endpoints of the regions domain: the public region list, the latency probe and the
operators' region editor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from kswifi.control.deps import AdminUser, Ctx, DbSession
from kswifi.control.geoip import ClientLocation
from kswifi.control.regions import service
from kswifi.control.regions.schemas import (
    CODE_PATTERN,
    AdminRegionList,
    AdminRegionOut,
    RegionCreate,
    RegionList,
    RegionUpdate,
)
from kswifi.control.security import utcnow

router = APIRouter(tags=["regions"])

RegionCode = Annotated[str, Path(pattern=CODE_PATTERN, description="e.g. `eu-west`")]
PROBE_HEADERS = {
    "Cache-Control": "no-store",
    # The app may time the probe from another origin; it carries nothing private.
    "Access-Control-Allow-Origin": "*",
    "Timing-Allow-Origin": "*",
}


def client_location(request: Request, ctx: Ctx) -> ClientLocation:
    """Where the caller is (see `service.locate_client`)."""
    return service.locate_client(
        ctx.settings,
        peer_address=request.client.host if request.client else None,
        headers=request.headers,
    )


Client = Annotated[ClientLocation, Depends(client_location)]


@router.get("/regions", response_model=RegionList)
async def list_regions(client: Client, ctx: Ctx, db: DbSession) -> RegionList:
    """Regions with their health (healthy gateways, room left), nearest to the caller first,
    each with a latency hint such as "Same continent: 20–50 ms" and a probe URL to measure."""
    return await service.list_status(db, ctx.settings, client, utcnow())


@router.get(
    "/regions/{code}/probe",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Nothing; time the round trip"}, 404: {}},
)
async def probe_region(code: RegionCode, ctx: Ctx) -> Response:
    """A latency probe: an empty, uncacheable answer (HEAD works too). Time a few of them (the
    first one pays for the connection) and show the median next to the region's latency hint."""
    if not await service.is_active_code(ctx.db, code):
        raise service.RegionNotFound(f"No region {code!r}")
    return Response(status_code=204, headers={**PROBE_HEADERS, "X-KSWiFi-Region": code})


@router.head("/regions/{code}/probe", status_code=204, include_in_schema=False)
async def probe_region_head(code: RegionCode, ctx: Ctx) -> Response:
    return await probe_region(code, ctx)


@router.get("/admin/regions", response_model=AdminRegionList, tags=["admin"])
async def admin_list_regions(_admin: AdminUser, db: DbSession) -> AdminRegionList:
    """Every region, inactive ones included."""
    return AdminRegionList(
        regions=[service.to_admin_out(region) for region in await service.list_all(db)]
    )


@router.post("/admin/regions", status_code=201, response_model=AdminRegionOut, tags=["admin"])
async def admin_create_region(
    body: RegionCreate, admin: AdminUser, db: DbSession
) -> AdminRegionOut:
    """Add a region; register its gateways afterwards (`kswifi admin gateways add --region`)."""
    return service.to_admin_out(await service.create(db, body, actor=admin.email))


@router.patch("/admin/regions/{code}", response_model=AdminRegionOut, tags=["admin"])
async def admin_update_region(
    code: RegionCode, body: RegionUpdate, admin: AdminUser, db: DbSession
) -> AdminRegionOut:
    """Rename, move, change resolvers, or stop new devices going to a region (`is_active`)."""
    return service.to_admin_out(await service.update(db, code, body, actor=admin.email))
