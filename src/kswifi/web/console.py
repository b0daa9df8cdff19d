"""Operator console pages (admin role only; anyone else gets a login redirect or a 404).

Every action goes through a domain service that writes the audit entry (who, what, when) in
the same transaction as the change; forms post back and redirect (POST → redirect → GET).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from kswifi.control.admin import service as admin
from kswifi.control.admin.schemas import MAX_EXTEND_DAYS
from kswifi.control.deps import Ctx, DbSession, abandon
from kswifi.control.errors import KSWiFiError, Unprocessable
from kswifi.control.gateways import service as gateways
from kswifi.control.mail import service as mail
from kswifi.control.mail.transport import transport_for
from kswifi.control.models import SESSION_STATES, DeliveryStatus, MailStatus, utcnow
from kswifi.control.plans import service as plans
from kswifi.control.plans.schemas import PlanCreate, PlanUpdate
from kswifi.control.purchases import refunds
from kswifi.control.purchases import service as purchases
from kswifi.control.regions import service as regions
from kswifi.control.sessions import service as sessions_service
from kswifi.control.webhooks import service as webhooks
from kswifi.web.deps import Operator
from kswifi.web.pages import form_fields, redirect, say
from kswifi.web.templating import render

router = APIRouter(prefix="/admin", include_in_schema=False)
PAGE = 50

NOTICES = {
    "revoked": "Session revoked. Its gateways drop the device within a second.",
    "extended": "Session extended.",
    "refunded": "Purchase refunded. Its session has ended; the person's devices moved on.",
    "refunded-outside-policy": "Purchase refunded (outside the stated refund policy). Its "
    "session has ended; the person's devices moved on.",
    "disabled": "Account disabled; its logins have ended.",
    "enabled": "Account enabled.",
    "plan-created": "Plan created.",
    "plan-updated": "Plan updated. Sessions already sold keep their limits.",
    "gateway-disabled": "Gateway disabled.",
    "gateway-enabled": "Gateway enabled.",
    "gateway-endpoint": "Endpoint changed. Devices get it the next time their code is shown.",
}


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value not in (None, "") else default
    except ValueError:
        return default
    return max(low, min(high, number))


def _back(request: Request, fields: dict[str, str], notice: str) -> Response:
    """Redirect to the page the form was on (a console path), with a notice."""
    back = fields.get("back", "")
    if not back.startswith("/admin") or "//" in back or "\\" in back:
        back = "/admin"
    joiner = "&" if "?" in back else "?"
    return redirect(request, f"{back}{joiner}{urlencode({'notice': notice})}")


def _pages(request: Request, offset: int, total: int) -> dict[str, str | None]:
    """Links to the newer and older page of a listing, keeping its filters."""

    def link(to: int) -> str:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "offset"]
        return "?" + urlencode([*params, ("offset", str(to))])

    return {
        "newer": link(max(0, offset - PAGE)) if offset > 0 else None,
        "older": link(offset + PAGE) if offset + PAGE < total else None,
    }


def _page(request: Request, name: str, section: str, **values: Any) -> Response:
    status_code = values.pop("status_code", 200)
    context = {
        "nav": "admin",
        "section": section,
        "notice": NOTICES.get(request.query_params.get("notice", "")),
        "back": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        **values,
    }
    return render(request, f"admin/{name}", context, status_code=status_code)


# --- gateways (the console's start page) ---------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def gateways_page(request: Request, user: Operator, ctx: Ctx, db: DbSession) -> Response:
    return await _gateways(request, ctx, db)


async def _gateways(request: Request, ctx: Ctx, db: DbSession, **extra: Any) -> Response:
    rows = await gateways.list_out(db, utcnow(), ctx.settings)
    by_region: dict[str, list[Any]] = defaultdict(list)
    for gateway in rows:
        by_region[gateway.region].append(gateway)
    names = {
        r.code: f"{r.name} ({r.location})" if r.location else r.name
        for r in await regions.list_all(db)
    }
    regions_shown = [
        {"code": code, "name": names.get(code, code), "gateways": by_region.get(code, [])}
        for code in sorted(set(names) | set(by_region))
    ]
    return _page(request, "gateways.html", "gateways", regions=regions_shown, **extra)


@router.post("", response_class=HTMLResponse)
async def add_gateway(request: Request, user: Operator, ctx: Ctx, db: DbSession) -> Response:
    fields = await form_fields(request)
    actor = user.email
    try:
        capacity = fields.get("capacity", "").strip()
        gateway, token = await gateways.register(
            db,
            ctx.secrets,
            ctx.settings,
            name=fields.get("name", ""),
            region_code=fields.get("region", ""),
            endpoint=fields.get("endpoint", ""),
            capacity=int(capacity) if capacity.isdigit() else None,
            actor=actor,
        )
        created = {"name": gateway.name, "token": token}
    except KSWiFiError as exc:
        await abandon(db)
        return await _gateways(
            request, ctx, db, error=say(exc), form=fields, status_code=exc.status_code
        )
    # The token is shown on this response only (it is stored hashed).
    return await _gateways(request, ctx, db, created=created)


@router.post("/gateways/{gateway_id}/endpoint", response_class=HTMLResponse)
async def set_gateway_endpoint(
    gateway_id: str, request: Request, user: Operator, ctx: Ctx, db: DbSession
) -> Response:
    """Where phones dial the gateway; devices get it the next time their code is shown."""
    fields = await form_fields(request)
    actor = user.email  # read before a rollback expires it
    try:
        await gateways.set_endpoint(db, gateway_id, fields.get("endpoint", ""), actor=actor)
    except KSWiFiError as exc:
        await abandon(db)
        return await _gateways(request, ctx, db, error=say(exc), status_code=exc.status_code)
    return _back(request, fields, "gateway-endpoint")


@router.post("/gateways/{gateway_id}/{action}")
async def toggle_gateway(
    gateway_id: str, action: str, request: Request, user: Operator, db: DbSession
) -> Response:
    fields = await form_fields(request)
    if action not in ("enable", "disable"):
        return _back(request, fields, "")
    try:
        await gateways.set_enabled(db, gateway_id, action == "enable", actor=user.email)
    except KSWiFiError:
        await abandon(db)
    return _back(request, fields, f"gateway-{action}d")


# --- sessions ------------------------------------------------------------------------------------


@router.get("/sessions", response_class=HTMLResponse)
async def sessions_page(request: Request, user: Operator, db: DbSession) -> Response:
    query = request.query_params.get("q", "").strip()[:320]
    status = request.query_params.get("status", "")
    status = status if status in SESSION_STATES else ""
    offset = _int(request.query_params.get("offset"), 0, 0, 1_000_000)
    found = await admin.search_sessions(
        db, query=query, status=status, limit=PAGE, offset=offset, now=utcnow()
    )
    return _page(
        request,
        "sessions.html",
        "sessions",
        found=found,
        q=query,
        status=status,
        states=SESSION_STATES,
        pages=_pages(request, offset, found.total),
        max_days=MAX_EXTEND_DAYS,
    )


@router.post("/sessions/{session_id}/revoke")
async def revoke(
    session_id: str, request: Request, user: Operator, ctx: Ctx, db: DbSession
) -> Response:
    fields = await form_fields(request)
    try:
        await admin.revoke_session(
            db,
            ctx.events,
            actor=user,
            session_id=session_id,
            now=utcnow(),
            reason=fields.get("reason", "").strip()[:200] or None,
        )
    except KSWiFiError as exc:
        await abandon(db)
        return _error(request, exc)
    return _back(request, fields, "revoked")


@router.post("/sessions/{session_id}/extend")
async def extend(
    session_id: str, request: Request, user: Operator, ctx: Ctx, db: DbSession
) -> Response:
    fields = await form_fields(request)
    try:
        days = fields.get("days", "").strip()
        if not days.isdigit():
            raise Unprocessable("days: a whole number of days")
        await admin.extend_session(
            db, ctx.events, actor=user, session_id=session_id, days=int(days), now=utcnow()
        )
    except KSWiFiError as exc:
        await abandon(db)
        return _error(request, exc)
    return _back(request, fields, "extended")


@router.post("/sessions/{session_id}/refund")
async def refund(
    session_id: str, request: Request, user: Operator, ctx: Ctx, db: DbSession
) -> Response:
    """Refund the purchase that paid for a session (voucher: void or re-issue)."""
    fields = await form_fields(request)
    try:
        session = await sessions_service.get(db, session_id[:32])
        done = await refunds.refund(
            db,
            ctx.settings,
            ctx.events,
            purchase_id=session.purchase_id,
            actor=user.email,
            voucher=fields.get("voucher", "void"),
        )
    except KSWiFiError as exc:
        await abandon(db)
        return _error(request, exc)
    notice = "refunded" if done.within_policy else "refunded-outside-policy"
    if done.reissued_voucher:
        return _page(
            request,
            "refunded.html",
            "sessions",
            voucher=done.reissued_voucher,
            within_policy=done.within_policy,
        )
    return _back(request, fields, notice)


def _error(request: Request, exc: KSWiFiError, back_url: str = "/admin/sessions") -> Response:
    context = {
        "heading": "That did not work",
        "message": say(exc),
        "back_url": back_url,
        "back_label": "Back to the console",
        "nav": "admin",
    }
    return render(request, "error.html", context, status_code=exc.status_code)


# --- users ---------------------------------------------------------------------------------------


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, user: Operator, db: DbSession) -> Response:
    query = request.query_params.get("q", "").strip()[:320]
    offset = _int(request.query_params.get("offset"), 0, 0, 1_000_000)
    found = await admin.search_users(db, query=query, limit=PAGE, offset=offset)
    pages = _pages(request, offset, found.total)
    return _page(request, "users.html", "users", found=found, q=query, pages=pages, me=user.id)


@router.post("/users/{user_id}/{action}")
async def toggle_user(
    user_id: str, action: str, request: Request, user: Operator, db: DbSession
) -> Response:
    fields = await form_fields(request)
    if action not in ("enable", "disable"):
        return _back(request, fields, "")
    try:
        await admin.set_user_disabled(
            db, actor=user, user_id=user_id, disabled=action == "disable", now=utcnow()
        )
    except KSWiFiError as exc:
        await abandon(db)
        return _error(request, exc, "/admin/users")
    return _back(request, fields, f"{action}d")


# --- plans ---------------------------------------------------------------------------------------


async def _plans(request: Request, db: DbSession, **extra: Any) -> Response:
    rows = [plans.to_admin_out(plan) for plan in await plans.list_all(db)]
    return _page(request, "plans.html", "plans", plans=rows, **extra)


@router.get("/plans", response_class=HTMLResponse)
async def plans_page(request: Request, user: Operator, db: DbSession) -> Response:
    return await _plans(request, db)


@router.post("/plans", response_class=HTMLResponse)
async def create_plan(request: Request, user: Operator, db: DbSession) -> Response:
    fields = await form_fields(request)
    actor = user.email
    try:
        given = {key: value for key, value in fields.items() if key in PlanCreate.model_fields}
        data = PlanCreate.model_validate({k: v for k, v in given.items() if v.strip()})
        await plans.create(db, data, actor=actor)
    except (KSWiFiError, ValidationError) as exc:
        await abandon(db)
        status = exc.status_code if isinstance(exc, KSWiFiError) else 422
        return await _plans(request, db, error=say(exc), form=fields, status_code=status)
    return _back(request, {"back": "/admin/plans"}, "plan-created")


@router.post("/plans/{code}", response_class=HTMLResponse)
async def update_plan(code: str, request: Request, user: Operator, db: DbSession) -> Response:
    fields = await form_fields(request)
    actor = user.email
    changes: dict[str, Any] = {}
    for name in ("name", "price_cents", "speed_mbps", "validity_days", "data_limit_mb"):
        value = fields.get(name, "").strip()
        if value:
            changes[name] = value
    if "is_active" in fields:
        changes["is_active"] = fields["is_active"] == "1"
    try:
        await plans.update(db, code, PlanUpdate.model_validate(changes), actor=actor)
    except (KSWiFiError, ValidationError) as exc:
        await abandon(db)
        status = exc.status_code if isinstance(exc, KSWiFiError) else 422
        return await _plans(request, db, error=say(exc), status_code=status)
    return _back(request, {"back": "/admin/plans"}, "plan-updated")


# --- vouchers ------------------------------------------------------------------------------------


async def _vouchers(request: Request, db: DbSession, **extra: Any) -> Response:
    on_sale = [plans.to_out(plan) for plan in await plans.list_active(db)]
    return _page(request, "vouchers.html", "vouchers", plans=on_sale, **extra)


@router.get("/vouchers", response_class=HTMLResponse)
async def vouchers_page(request: Request, user: Operator, db: DbSession) -> Response:
    return await _vouchers(request, db)


@router.post("/vouchers", response_class=HTMLResponse)
async def create_vouchers(request: Request, user: Operator, db: DbSession) -> Response:
    fields = await form_fields(request)
    actor = user.email
    plan_code = fields.get("plan_code", "")
    try:
        count = fields.get("count", "").strip()
        if not count.isdigit():
            raise Unprocessable("count: a whole number")
        codes = await purchases.create_vouchers(
            db, plan_code=plan_code, count=int(count), actor=actor
        )
    except KSWiFiError as exc:
        await abandon(db)
        return await _vouchers(
            request, db, error=say(exc), form=fields, status_code=exc.status_code
        )
    # Shown once here (and any time in the CSV export).
    return await _vouchers(request, db, created={"plan_code": plan_code, "codes": codes})


@router.get("/vouchers.csv")
async def export_vouchers(request: Request, user: Operator, db: DbSession) -> Response:
    plan = request.query_params.get("plan", "").strip() or None
    try:
        text = await purchases.export_vouchers_csv(db, actor=user.email, plan_code=plan)
    except KSWiFiError as exc:
        await abandon(db)
        return _error(request, exc, "/admin/vouchers")
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="kswifi-vouchers.csv"',
            "Cache-Control": "no-store",
        },
    )


# --- reports and audit ---------------------------------------------------------------------------


@router.get("/reports", response_class=HTMLResponse)
async def reports_page(request: Request, user: Operator, db: DbSession) -> Response:
    days = _int(request.query_params.get("days"), 30, 1, 366)
    report = await admin.daily_report(db, days=days, now=utcnow())
    return _page(request, "reports.html", "reports", report=report, days=days)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request, user: Operator, db: DbSession) -> Response:
    action = request.query_params.get("action", "").strip()[:64]
    actor = request.query_params.get("actor", "").strip()[:320]
    offset = _int(request.query_params.get("offset"), 0, 0, 1_000_000)
    log = await admin.list_audit(db, action=action, actor=actor, limit=PAGE, offset=offset)
    return _page(
        request,
        "audit.html",
        "audit",
        log=log,
        action=action,
        actor=actor,
        pages=_pages(request, offset, log.total),
    )


# --- mail ----------------------------------------------------------------------------------------


@router.get("/mail", response_class=HTMLResponse)
async def mail_page(request: Request, user: Operator, ctx: Ctx, db: DbSession) -> Response:
    status = request.query_params.get("status", "")
    status = status if status in set(MailStatus) else ""
    offset = _int(request.query_params.get("offset"), 0, 0, 1_000_000)
    rows = await mail.recent(db, limit=PAGE + 1, offset=offset, status=status or None)
    total = offset + len(rows)
    return _page(
        request,
        "mail.html",
        "mail",
        messages=rows[:PAGE],
        status=status,
        statuses=list(MailStatus),
        delivery=transport_for(ctx.settings).describe(),
        smtp=bool(ctx.settings.smtp_url.get_secret_value()),
        pages=_pages(request, offset, total),
    )


@router.get("/mail/{mail_id}", response_class=HTMLResponse)
async def mail_message_page(
    request: Request, mail_id: str, user: Operator, ctx: Ctx, db: DbSession
) -> Response:
    message = await mail.get(db, mail_id[:32])
    # With a mail server, the text stays in the person's mailbox only: it can hold a personal
    # link (a password reset) that would open their account. The outbox demo shows it.
    shown = not ctx.settings.smtp_url.get_secret_value()
    return _page(request, "mail_message.html", "mail", message=message, show_text=shown)


# --- operator webhooks ---------------------------------------------------------------------------


@router.get("/webhooks", response_class=HTMLResponse)
async def webhooks_page(request: Request, user: Operator, ctx: Ctx, db: DbSession) -> Response:
    status = request.query_params.get("status", "")
    status = status if status in set(DeliveryStatus) else ""
    offset = _int(request.query_params.get("offset"), 0, 0, 1_000_000)
    rows = await webhooks.recent(db, limit=PAGE + 1, offset=offset, status=status or None)
    return _page(
        request,
        "webhooks.html",
        "webhooks",
        deliveries=rows[:PAGE],
        status=status,
        statuses=list(DeliveryStatus),
        urls=ctx.settings.webhook_url_list,
        event_types=webhooks.EVENT_TYPES,
        pages=_pages(request, offset, offset + len(rows)),
    )
