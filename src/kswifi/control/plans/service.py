"""Business rules of the plans domain: the catalog, its display texts and operator edits.

Editing a plan only changes what is sold from then on: a data session copies the plan's limits
when it is bought (see `kswifi.control.sessions.service.create_for_purchase`).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.errors import Conflict, NotFound, Unprocessable
from kswifi.control.models import Plan
from kswifi.control.plans import repository
from kswifi.control.plans.schemas import AdminPlanOut, PlanCreate, PlanOut, PlanUpdate

MIB = 1024 * 1024
GIB = 1024 * MIB

# Currencies whose smallest unit is the whole unit (Stripe's list): no decimals shown.
ZERO_DECIMAL_CURRENCIES = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹", "NGN": "₦"}


class PlanNotFound(NotFound):
    code = "plan_not_found"


class PlanInactive(Conflict):
    code = "plan_inactive"


class PlanExists(Conflict):
    code = "plan_exists"


def _trim(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def data_text(data_bytes: int) -> str:
    """A data amount as people read it: "5 GB", "1.5 GB", "500 MB" (1 GB = 1024 MB)."""
    if data_bytes >= GIB:
        return f"{_trim(data_bytes / GIB)} GB"
    return f"{_trim(data_bytes / MIB)} MB"


def price_text(price_cents: int, currency: str) -> str:
    """A price as people read it: "$4.99", "€14.99", "500 JPY" style for unknown symbols."""
    if price_cents == 0:
        return "Free"
    if currency in ZERO_DECIMAL_CURRENCIES:
        amount = f"{price_cents:,}"
    else:
        amount = f"{price_cents // 100:,}.{price_cents % 100:02d}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{amount}" if symbol else f"{amount} {currency}"


def to_out(plan: Plan) -> PlanOut:
    return PlanOut(**_public_fields(plan))


def to_admin_out(plan: Plan) -> AdminPlanOut:
    return AdminPlanOut(
        **_public_fields(plan),
        id=plan.id,
        is_active=plan.is_active,
        created_at=plan.created_at,
        updated_at=plan.updated_at,
    )


def _public_fields(plan: Plan) -> dict[str, Any]:
    return {
        "code": plan.code,
        "name": plan.name,
        "data_limit_bytes": plan.data_limit_bytes,
        "data_limit_mb": plan.data_limit_bytes // MIB,
        "data_text": data_text(plan.data_limit_bytes),
        "speed_mbps": plan.speed_mbps,
        "validity_days": plan.validity_days,
        "max_devices": plan.max_devices,
        "price_cents": plan.price_cents,
        "currency": plan.currency,
        "price_text": price_text(plan.price_cents, plan.currency),
    }


async def get_by_code(db: AsyncSession, code: str) -> Plan:
    """The plan with this code, on sale or not; PlanNotFound (404) otherwise."""
    plan = await repository.get_by_code(db, code)
    if plan is None:
        raise PlanNotFound(f"No plan with code {code!r}")
    return plan


async def get_by_id(db: AsyncSession, plan_id: str) -> Plan:
    """The plan with this id (a purchase or voucher refers to it); PlanNotFound otherwise."""
    plan = await repository.get_by_id(db, plan_id)
    if plan is None:
        raise PlanNotFound("No such plan")
    return plan


def ensure_on_sale(plan: Plan) -> None:
    """Refuse to sell a plan an operator has withdrawn (409 `plan_inactive`)."""
    if not plan.is_active:
        raise PlanInactive(f"The {plan.name} plan is no longer on sale")


async def list_active(db: AsyncSession) -> list[Plan]:
    """Plans on sale, cheapest first."""
    return await repository.list_plans(db, active_only=True)


async def list_all(db: AsyncSession) -> list[Plan]:
    """Every plan, withdrawn ones included (operators)."""
    return await repository.list_plans(db, active_only=False)


async def create(db: AsyncSession, data: PlanCreate, *, actor: str) -> Plan:
    """Add a plan to the catalog; PlanExists (409) when the code is taken."""
    if await repository.get_by_code(db, data.code) is not None:
        raise PlanExists(f"A plan with code {data.code!r} already exists")
    plan = Plan(
        code=data.code,
        name=data.name,
        data_limit_bytes=data.data_limit_mb * MIB,
        speed_mbps=data.speed_mbps,
        validity_days=data.validity_days,
        max_devices=data.max_devices,
        price_cents=data.price_cents,
        currency=data.currency,
        is_active=data.is_active,
    )
    try:
        async with db.begin_nested():  # a concurrent create of the same code loses cleanly
            repository.add(db, plan)
    except IntegrityError as exc:
        raise PlanExists(f"A plan with code {data.code!r} already exists") from exc
    repository.add_audit(
        db,
        actor=actor,
        action="plan.create",
        target=f"plan:{plan.code}",
        detail=data.model_dump_json(),
    )
    return plan


async def update(db: AsyncSession, code: str, changes: PlanUpdate, *, actor: str) -> Plan:
    """Change a plan for future sales; sessions already sold keep the limits they were sold."""
    plan = await get_by_code(db, code)
    given = changes.model_dump(exclude_unset=True)
    empty = sorted(name for name, value in given.items() if value is None)
    if empty:
        raise Unprocessable(f"{empty[0]}: may not be null", field=empty[0])
    before = _public_fields(plan) | {"is_active": plan.is_active}
    for name, value in given.items():
        if name == "data_limit_mb":
            plan.data_limit_bytes = value * MIB
        else:
            setattr(plan, name, value)
    await db.flush()
    after = _public_fields(plan) | {"is_active": plan.is_active}
    diff = {name: [before[name], after[name]] for name in after if before[name] != after[name]}
    repository.add_audit(
        db, actor=actor, action="plan.update", target=f"plan:{plan.code}", detail=_json(diff)
    )
    return plan


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
