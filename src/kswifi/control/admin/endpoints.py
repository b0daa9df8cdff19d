"""HTTP endpoints of the admin domain: the operator API (admin role only).

Plans, vouchers and gateways have their admin endpoints in their own domains; this one holds
sessions (search, revoke, extend), users, the daily report and the audit log.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from kswifi.control.admin import service
from kswifi.control.admin.schemas import (
    MAX_REPORT_DAYS,
    AdminSessionList,
    AdminSessionOut,
    AdminUserList,
    AdminUserOut,
    AuditList,
    DailyReport,
    ExtendIn,
    RevokeIn,
)
from kswifi.control.deps import AdminUser, Ctx, DbSession
from kswifi.control.models import SessionStatus, utcnow

router = APIRouter(prefix="/admin", tags=["admin"])

Limit = Annotated[int, Query(ge=1, le=service.MAX_PAGE)]
Offset = Annotated[int, Query(ge=0, le=2**63 - 1)]  # what SQL OFFSET takes
SearchText = Annotated[str | None, Query(max_length=320, description="Id, id prefix or email")]
SessionId = Annotated[str, Path(max_length=64)]


@router.get("/sessions", response_model=AdminSessionList)
async def search_sessions(
    _admin: AdminUser,
    db: DbSession,
    q: SearchText = None,
    status: SessionStatus | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> AdminSessionList:
    """Sessions by id, id prefix or owner's email, and by status; newest first."""
    return await service.search_sessions(
        db, query=q, status=status, limit=limit, offset=offset, now=utcnow()
    )


@router.post("/sessions/{session_id}/revoke", response_model=AdminSessionOut)
async def revoke_session(
    session_id: SessionId,
    admin: AdminUser,
    ctx: Ctx,
    db: DbSession,
    body: RevokeIn | None = None,
) -> AdminSessionOut:
    """End a live session now (409 if it has already ended); its peers leave the gateways."""
    return await service.revoke_session(
        db,
        ctx.events,
        actor=admin,
        session_id=session_id,
        now=utcnow(),
        reason=body.reason if body else None,
    )


@router.post("/sessions/{session_id}/extend", response_model=AdminSessionOut)
async def extend_session(
    session_id: SessionId, body: ExtendIn, admin: AdminUser, ctx: Ctx, db: DbSession
) -> AdminSessionOut:
    """Add days of validity; an expired session with data left becomes usable again."""
    return await service.extend_session(
        db, ctx.events, actor=admin, session_id=session_id, days=body.days, now=utcnow()
    )


@router.get("/users", response_model=AdminUserList)
async def search_users(
    _admin: AdminUser, db: DbSession, q: SearchText = None, limit: Limit = 50, offset: Offset = 0
) -> AdminUserList:
    return await service.search_users(db, query=q, limit=limit, offset=offset)


async def _user_out(db: DbSession, user_id: str) -> AdminUserOut:
    found = await service.search_users(db, query=user_id, limit=1)
    return found.users[0]


@router.post("/users/{user_id}/disable", response_model=AdminUserOut)
async def disable_user(
    user_id: Annotated[str, Path(max_length=64)], admin: AdminUser, db: DbSession
) -> AdminUserOut:
    """Disable an account: its logins end at once and it cannot log in again."""
    await service.set_user_disabled(db, actor=admin, user_id=user_id, disabled=True, now=utcnow())
    return await _user_out(db, user_id)


@router.post("/users/{user_id}/enable", response_model=AdminUserOut)
async def enable_user(
    user_id: Annotated[str, Path(max_length=64)], admin: AdminUser, db: DbSession
) -> AdminUserOut:
    await service.set_user_disabled(db, actor=admin, user_id=user_id, disabled=False, now=utcnow())
    return await _user_out(db, user_id)


@router.get("/reports/daily", response_model=DailyReport)
async def daily_report(
    _admin: AdminUser,
    db: DbSession,
    days: Annotated[int, Query(ge=1, le=MAX_REPORT_DAYS)] = 30,
) -> DailyReport:
    """Sales (paid purchases, value per currency) and data served per UTC day."""
    return await service.daily_report(db, days=days, now=utcnow())


@router.get("/audit", response_model=AuditList)
async def audit_log(
    _admin: AdminUser,
    db: DbSession,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=320)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> AuditList:
    """Every operator action (who, what, when), newest first."""
    return await service.list_audit(db, action=action, actor=actor, limit=limit, offset=offset)
