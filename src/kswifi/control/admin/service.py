"""Business rules of the admin domain: operator actions on sessions and accounts, reports,
and the audit log every operator action is written to (who, what, when)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.admin import repository
from kswifi.control.admin.schemas import (
    MAX_EXTEND_DAYS,
    MAX_REPORT_DAYS,
    AdminSessionList,
    AdminSessionOut,
    AdminUserList,
    AdminUserOut,
    AuditList,
    AuditOut,
    DailyReport,
    DayReport,
    Money,
)
from kswifi.control.errors import Conflict, Unprocessable
from kswifi.control.events import EventBus
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.models import (
    SESSION_STATES,
    USABLE_STATES,
    DataSession,
    SessionStatus,
    User,
)
from kswifi.control.sessions import service as sessions
from kswifi.control.users import service as users
from kswifi.logs import get_logger

log = get_logger("kswifi.control.admin")
MAX_PAGE = 500


class SessionAlreadyEnded(Conflict):
    code = "session_already_ended"


def record(db: AsyncSession, *, actor: str, action: str, target: str, **detail: Any) -> None:
    """Write one audit entry (committed with the action it describes, or not at all)."""
    text = json.dumps(detail, sort_keys=True, default=str) if detail else ""
    repository.add_audit(db, actor=actor, action=action, target=target, detail=text)


def _page(limit: int, offset: int) -> tuple[int, int]:
    if not 1 <= limit <= MAX_PAGE:
        raise Unprocessable(f"limit: between 1 and {MAX_PAGE}", field="limit")
    if offset < 0:
        raise Unprocessable("offset: not negative", field="offset")
    return limit, offset


# --- sessions -------------------------------------------------------------------------------


def session_out(session: DataSession, email: str, now: datetime) -> AdminSessionOut:
    return AdminSessionOut(
        id=session.id,
        user_id=session.user_id,
        user_email=email,
        plan_code=session.plan_code,
        plan_name=session.plan_name,
        status=sessions.effective_status(session, now),
        data_limit_bytes=session.data_limit_bytes,
        used_bytes=min(session.used_bytes, session.data_limit_bytes),
        usage_percent=sessions.usage_percent(session),
        usage_text=sessions.usage_text(session.used_bytes, session.data_limit_bytes),
        speed_mbps=session.speed_mbps,
        max_devices=session.max_devices,
        created_at=session.created_at,
        activated_at=session.activated_at,
        expires_at=session.expires_at,
        ended_at=session.ended_at,
        end_reason=session.end_reason,
    )


async def search_sessions(
    db: AsyncSession,
    *,
    query: str | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
    now: datetime,
) -> AdminSessionList:
    """Sessions whose id, id prefix or owner's email matches `query`, newest first."""
    limit, offset = _page(limit, offset)
    if status and status not in SESSION_STATES:
        raise Unprocessable(f"status: one of {', '.join(SESSION_STATES)}", field="status")
    rows, total = await repository.search_sessions(
        db, query=(query or "").strip() or None, status=status or None, limit=limit, offset=offset
    )
    return AdminSessionList(
        sessions=[session_out(session, email, now) for session, email in rows], total=total
    )


async def _session_with_owner(db: AsyncSession, session_id: str) -> tuple[DataSession, str]:
    session = await sessions.get(db, session_id)
    owner = await users.get_user(db, session.user_id)
    return session, owner.email


async def revoke_session(
    db: AsyncSession,
    bus: EventBus,
    *,
    actor: User,
    session_id: str,
    now: datetime,
    reason: str | None = None,
) -> AdminSessionOut:
    """End a live session now; its gateways drop the peers and its owner's page says so."""
    session, email = await _session_with_owner(db, session_id)
    status = sessions.effective_status(session, now)
    if session.status not in USABLE_STATES:
        raise SessionAlreadyEnded(f"This session has already ended ({status})", status=status)
    moved = await sessions.end(db, bus, session, SessionStatus.REVOKED, "operator", now)
    await gateway_desired.bump_revision(db, moved, bus, [session.user_id])
    record(
        db,
        actor=actor.email,
        action="session.revoke",
        target=f"session:{session.id}",
        user=email,
        reason=reason or "",
    )
    log.info("session_revoked", session_id=session.id, actor=actor.email)
    return session_out(session, email, now)


async def extend_session(
    db: AsyncSession,
    bus: EventBus,
    *,
    actor: User,
    session_id: str,
    days: int,
    now: datetime,
) -> AdminSessionOut:
    """More validity. An expired session with data left comes back (its peers return)."""
    if not 1 <= days <= MAX_EXTEND_DAYS:
        raise Unprocessable(f"days: between 1 and {MAX_EXTEND_DAYS}", field="days")
    session, email = await _session_with_owner(db, session_id)
    if session.status in (SessionStatus.EXHAUSTED, SessionStatus.REVOKED):
        raise SessionAlreadyEnded(
            f"A {session.status} session cannot be extended", status=session.status
        )
    before = session.expires_at
    changed = await sessions.extend(session, days, now, db=db, bus=bus)
    await db.flush()
    # new expiry in the desired state
    await gateway_desired.bump_revision(db, changed, bus, [session.user_id])
    record(
        db,
        actor=actor.email,
        action="session.extend",
        target=f"session:{session.id}",
        user=email,
        days=days,
        expires_before=before,
        expires_after=session.expires_at,
    )
    log.info("session_extended", session_id=session.id, days=days, actor=actor.email)
    return session_out(session, email, now)


# --- users --------------------------------------------------------------------------------------


async def search_users(
    db: AsyncSession, *, query: str | None = None, limit: int = 50, offset: int = 0
) -> AdminUserList:
    limit, offset = _page(limit, offset)
    rows, total = await repository.search_users(
        db, query=(query or "").strip() or None, limit=limit, offset=offset
    )
    return AdminUserList(
        users=[
            AdminUserOut(
                id=user.id,
                email=user.email,
                is_admin=user.is_admin,
                is_disabled=user.is_disabled,
                created_at=user.created_at,
                session_count=count,
                live_session_count=live,
            )
            for user, count, live in rows
        ],
        total=total,
    )


async def set_user_disabled(
    db: AsyncSession, *, actor: User, user_id: str, disabled: bool, now: datetime
) -> User:
    """Disable (ends every login) or re-enable an account; never the operator's own."""
    if user_id == actor.id:
        raise Conflict("You cannot disable your own account")
    user = await users.set_disabled(db, user_id, disabled, now=now)
    record(
        db,
        actor=actor.email,
        action="user.disable" if disabled else "user.enable",
        target=f"user:{user.id}",
        email=user.email,
    )
    return user


# --- reports ------------------------------------------------------------------------------------


def _money(amounts: dict[str, int]) -> list[Money]:
    return [Money(currency=c, amount_cents=amounts[c]) for c in sorted(amounts)]


async def daily_report(db: AsyncSession, *, days: int = 30, now: datetime) -> DailyReport:
    """Sales and data served per UTC day, the last `days` days (today included), newest first."""
    if not 1 <= days <= MAX_REPORT_DAYS:
        raise Unprocessable(f"days: between 1 and {MAX_REPORT_DAYS}", field="days")
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, time.min, tzinfo=UTC)
    until = datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC)
    sales: dict[date, int] = defaultdict(int)
    revenue: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for day, currency, count, cents in await repository.sales_per_day(db, since, until):
        sales[day] += count
        revenue[day][currency] += cents
    served = dict(await repository.data_per_day(db, since, until))
    reports = [
        DayReport(
            day=day,
            sales=sales.get(day, 0),
            revenue=_money(revenue.get(day, {})),
            data_bytes=served.get(day, 0),
        )
        for day in (today - timedelta(days=offset) for offset in range(days))
    ]
    totals: dict[str, int] = defaultdict(int)
    for amounts in revenue.values():
        for currency, cents in amounts.items():
            totals[currency] += cents
    return DailyReport(
        days=reports,
        total_sales=sum(sales.values()),
        total_revenue=_money(totals),
        total_data_bytes=sum(served.values()),
    )


# --- audit log ----------------------------------------------------------------------------------


async def list_audit(
    db: AsyncSession,
    *,
    action: str | None = None,
    actor: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> AuditList:
    limit, offset = _page(limit, offset)
    entries, total = await repository.list_audit(
        db, action=action or None, actor=actor or None, limit=limit, offset=offset
    )
    return AuditList(entries=[AuditOut.model_validate(entry) for entry in entries], total=total)
