"""Queries of device addresses: a host taken on a gateway (reusing released ones after their
cool-down) and released."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Table,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.audit import add_audit as add_audit  # the domain's audit writer
from kswifi.control.db import is_postgresql

# Rows per INSERT and ids per IN (...): far below the databases' bound-parameter limits.
from kswifi.control.models import (
    AddressRelease,
    Gateway,
)

_releases = cast(Table, AddressRelease.__table__)
_gateways = cast(Table, Gateway.__table__)


async def oldest_reusable_release(
    db: AsyncSession, gateway_id: str, released_before: datetime
) -> AddressRelease | None:
    """The lowest host index given back before `released_before`."""
    return await db.scalar(
        select(AddressRelease)
        .where(
            AddressRelease.gateway_id == gateway_id,
            AddressRelease.released_at <= released_before,
        )
        .order_by(AddressRelease.host_index)
        .limit(1)
    )


async def count_cooling_releases(db: AsyncSession, gateway_id: str) -> int:
    return int(
        await db.scalar(
            select(func.count())
            .select_from(AddressRelease)
            .where(AddressRelease.gateway_id == gateway_id)
        )
        or 0
    )


async def delete_release(db: AsyncSession, gateway_id: str, host_index: int) -> None:
    await db.execute(
        delete(AddressRelease).where(
            AddressRelease.gateway_id == gateway_id, AddressRelease.host_index == host_index
        )
    )


async def get_release(db: AsyncSession, gateway_id: str, host_index: int) -> AddressRelease | None:
    return await db.get(AddressRelease, (gateway_id, host_index))


@dataclass(frozen=True)
class TakenHost:
    """A gateway after `take_host_and_bump`: the host index it gave out (a reused one, or
    the next never-used one) and its new desired-state revision."""

    host_index: int
    revision: int
    name: str
    ipv4_pool: str
    ipv6_pool: str


_REUSE = (
    delete(_releases)
    .where(
        _releases.c.gateway_id == bindparam("gateway_id"),
        _releases.c.host_index
        == select(_releases.c.host_index)
        .where(
            _releases.c.gateway_id == bindparam("gateway_id"),
            _releases.c.released_at <= bindparam("reusable_before"),
        )
        .order_by(_releases.c.host_index)
        .limit(1)
        .scalar_subquery(),
    )
    .returning(_releases.c.host_index)
)
_reused = _REUSE.cte("reused")


_TAKEN_COLUMNS = (
    _gateways.c.next_host_index,
    _gateways.c.revision,
    _gateways.c.name,
    _gateways.c.ipv4_pool,
    _gateways.c.ipv6_pool,
)


_TAKE_AND_BUMP_PG = (
    update(_gateways)
    .where(_gateways.c.id == bindparam("gateway_id"))
    .values(
        revision=_gateways.c.revision + 1,
        next_host_index=_gateways.c.next_host_index
        + case((exists(select(_reused.c.host_index)), 0), else_=1),
        installed_devices=_gateways.c.installed_devices + 1,
    )
    .returning(select(_reused.c.host_index).scalar_subquery(), *_TAKEN_COLUMNS)
    .add_cte(_reused)
)


_TAKE_AND_BUMP_SQLITE = (
    update(_gateways)
    .where(_gateways.c.id == bindparam("gateway_id"))
    .values(
        revision=_gateways.c.revision + 1,
        next_host_index=_gateways.c.next_host_index + bindparam("step"),
        installed_devices=_gateways.c.installed_devices + 1,
    )
    .returning(literal(None), *_TAKEN_COLUMNS)
)


async def take_host_and_bump(
    db: AsyncSession, gateway_id: str, reusable_before: datetime
) -> TakenHost | None:
    """Take a host index on the gateway and bump its revision, locking its row until the
    transaction ends: the lowest address released before `reusable_before` is reused (its
    release row deleted), otherwise `next_host_index` is taken and advanced. One statement on
    PostgreSQL (the DELETE is a CTE), two on SQLite (whose write lock is already held).

    Race-free without locking the gateway first: a release row is deleted by one transaction
    only (a concurrent one finds it gone and takes a new index), and the index counter moves
    under the row lock of the UPDATE. The caller checks the index against the blocks (past
    the end: roll back). None when there is no such gateway."""
    params: dict[str, Any] = {"gateway_id": gateway_id, "reusable_before": reusable_before}
    if is_postgresql(db):
        row = (await db.execute(_TAKE_AND_BUMP_PG, params)).one_or_none()
        if row is None:
            return None
        reused = row[0]
    else:
        reused = (await db.execute(_REUSE, params)).scalar_one_or_none()
        row = (
            await db.execute(
                _TAKE_AND_BUMP_SQLITE,
                {"gateway_id": gateway_id, "step": 0 if reused is not None else 1},
            )
        ).one_or_none()
        if row is None:
            return None
    host_index = int(reused) if reused is not None else int(row[1]) - 1
    return TakenHost(host_index, int(row[2]), row[3], row[4], row[5])


async def count_installed(db: AsyncSession, gateway_id: str, change: int) -> None:
    """Move the gateway's count of installed devices by `change` (one statement: no lock)."""
    await db.execute(
        update(_gateways)
        .where(_gateways.c.id == gateway_id)
        .values(installed_devices=_gateways.c.installed_devices + change)
    )
