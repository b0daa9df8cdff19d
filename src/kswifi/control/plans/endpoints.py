"""HTTP endpoints of the plans domain: the public catalog and the operators' plan editor."""

from __future__ import annotations

from fastapi import APIRouter, Path

from kswifi.control.deps import AdminUser, DbSession
from kswifi.control.plans import service
from kswifi.control.plans.schemas import (
    AdminPlanList,
    AdminPlanOut,
    PlanCreate,
    PlanList,
    PlanUpdate,
)

router = APIRouter(tags=["plans"])

PlanCode = Path(max_length=32, description="The plan's code, e.g. `premium`")


@router.get("/plans", response_model=PlanList)
async def list_plans(db: DbSession) -> PlanList:
    """Plans on sale, cheapest first."""
    return PlanList(plans=[service.to_out(plan) for plan in await service.list_active(db)])


@router.get("/admin/plans", response_model=AdminPlanList, tags=["admin"])
async def admin_list_plans(db: DbSession, admin: AdminUser) -> AdminPlanList:
    """Every plan, withdrawn ones included."""
    return AdminPlanList(plans=[service.to_admin_out(plan) for plan in await service.list_all(db)])


@router.post("/admin/plans", status_code=201, response_model=AdminPlanOut, tags=["admin"])
async def admin_create_plan(body: PlanCreate, db: DbSession, admin: AdminUser) -> AdminPlanOut:
    plan = await service.create(db, body, actor=admin.email)
    return service.to_admin_out(plan)


@router.patch("/admin/plans/{code}", response_model=AdminPlanOut, tags=["admin"])
async def admin_update_plan(
    body: PlanUpdate, db: DbSession, admin: AdminUser, code: str = PlanCode
) -> AdminPlanOut:
    """Change a plan for future sales; sessions already sold keep their limits."""
    plan = await service.update(db, code, body, actor=admin.email)
    return service.to_admin_out(plan)
