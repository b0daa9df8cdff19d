"""The one read that placing a new device needs: active regions, their enabled gateways and
their loads (each gateway's kept-up count of installed devices: no pass over the devices)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.models import (
    Gateway,
    Region,
)


@dataclass(frozen=True)
class PlacementRow:
    """An active region with one of its enabled gateways (None: it has none) and the
    installed devices (peers) that gateway carries."""

    region: Region
    gateway: Gateway | None
    load: int


def _placement_query(one_region: bool) -> Select[Region, Gateway, Any]:
    query = (
        select(Region, Gateway, func.coalesce(Gateway.installed_devices, 0))
        .outerjoin(Gateway, and_(Gateway.region_code == Region.code, Gateway.is_enabled.is_(True)))
        .where(Region.is_active.is_(True))
        .order_by(Region.code, Gateway.name)
    )
    return query.where(Region.code == bindparam("region_code")) if one_region else query


# Built once: constructing a statement costs more Python than running it (this is the hot path
# of every new Connect Profile).
_PLACEMENT_ALL = _placement_query(one_region=False)
_PLACEMENT_ONE = _placement_query(one_region=True)


async def placement_rows(
    db: AsyncSession, now: datetime, region_code: str | None = None
) -> list[PlacementRow]:
    """Every active region (or only `region_code`), each with its enabled gateways and their
    load, in one statement."""
    if region_code is None:
        result = await db.execute(_PLACEMENT_ALL)
    else:
        result = await db.execute(_PLACEMENT_ONE, {"region_code": region_code})
    return [PlacementRow(region, gateway, int(load)) for region, gateway, load in result]
