"""Page routes of the end-user app: account, plans, checkout, sessions, setup, live usage.

Forms post back to the same path and work without JavaScript; each POST checks the CSRF token
first. Domain errors (wrong password, used voucher, ended session) come back as the same page
with a message, and the request's transaction is rolled back so nothing is half-written.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.deps import Ctx, DbSession, abandon
from kswifi.control.errors import KSWiFiError, Unprocessable
from kswifi.control.models import USABLE_STATES, DataSession, utcnow
from kswifi.control.plans import service as plans
from kswifi.control.profiles import notices
from kswifi.control.profiles import service as profiles
from kswifi.control.profiles.schemas import ConnectProfileResponse
from kswifi.control.purchases import refunds
from kswifi.control.purchases import service as purchases
from kswifi.control.purchases.schemas import PurchaseCreate
from kswifi.control.regions import service as regions
from kswifi.control.security import new_opaque_token
from kswifi.control.sessions import service as sessions
from kswifi.control.sessions.schemas import SessionOut
from kswifi.control.sessions.service import ENDED_MESSAGES
from kswifi.control.users import recovery
from kswifi.control.users import service as users
from kswifi.web import auth, chart, copy
from kswifi.web.deps import OptionalUser, PageNotFound, RequiredUser, safe_next
from kswifi.web.templating import render

router = APIRouter(include_in_schema=False)


async def form_fields(request: Request) -> dict[str, str]:
    """The posted form as strings, after the CSRF check (403 page when it fails)."""
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    auth.verify_csrf(request, fields.get(auth.CSRF_FIELD))
    return fields


def redirect(request: Request, url: str) -> Response:
    response = RedirectResponse(url, status_code=303)
    auth.apply_cookies(request, response)
    return response


# --- start, sign up, log in, log out ----------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, user: OptionalUser) -> Response:
    return render(request, "home.html", {"nav": "home"})


@router.get("/signup", response_class=HTMLResponse)
async def signup_page(request: Request, user: OptionalUser) -> Response:
    if user is not None:
        return redirect(request, "/sessions")
    next_path = safe_next(request.query_params.get("next"), "")
    return render(request, "signup.html", {"nav": "signup", "next": next_path})


@router.post("/signup", response_class=HTMLResponse)
async def signup(request: Request, ctx: Ctx, db: DbSession) -> Response:
    fields = await form_fields(request)
    email = fields.get("email", "").strip()
    password = fields.get("password", "")
    next_path = safe_next(fields.get("next"), "/plans")
    limits = users.rate_limits(request.app.state, ctx.settings)
    address = users.client_address(request.client.host if request.client else None)
    try:
        notice = await recovery.sign_up(db, ctx.settings, limits, address, email, password)
    except KSWiFiError as exc:
        await abandon(db)
        context = {"nav": "signup", "email": email, "next": next_path, "error": say(exc)}
        return render(request, "signup.html", context, status_code=exc.status_code)
    # Signing up never logs in: the answer is the same for a new address and a taken one.
    if ctx.settings.verify_email:
        return render(request, "signup.html", {"nav": "signup", "notice": notice, "sent": True})
    # Without a mail server nobody could confirm an address: the new account opens at once,
    # with the password just chosen.
    context = {"nav": "login", "email": email, "next": next_path, "notice": SIGNED_UP_LOG_IN}
    return render(request, "login.html", context)


SIGNED_UP_LOG_IN = "Almost there: log in with the password you just chose."


_LOGIN_NOTICES = {
    "password-reset": "Your password has been changed. Log in with the new one.",
    "verified": "Your e-mail address is confirmed. Log in to start.",
    "email-changed": "Your e-mail address has been changed. Log in with the new one.",
}


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, user: OptionalUser) -> Response:
    next_path = safe_next(request.query_params.get("next"), "")
    if user is not None:
        return redirect(request, next_path or "/sessions")
    notice = _LOGIN_NOTICES.get(request.query_params.get("notice", ""))
    return render(request, "login.html", {"nav": "login", "next": next_path, "notice": notice})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, ctx: Ctx, db: DbSession) -> Response:
    fields = await form_fields(request)
    email = fields.get("email", "").strip()
    password = fields.get("password", "")
    next_path = safe_next(fields.get("next"))
    limits = users.rate_limits(request.app.state, ctx.settings)
    address = users.client_address(request.client.host if request.client else None)
    try:
        tokens = await users.login_limited(
            db, ctx.secrets, ctx.settings, limits, address, email, password
        )
    except KSWiFiError as exc:
        await abandon(db)
        context = {"nav": "login", "email": email, "next": next_path, "error": say(exc)}
        return render(request, "login.html", context, status_code=exc.status_code)
    auth.set_login_cookies(request, tokens)
    return redirect(request, next_path)


@router.post("/logout")
async def logout(request: Request, user: OptionalUser, db: DbSession) -> Response:
    await form_fields(request)
    refresh = request.cookies.get(auth.REFRESH_COOKIE)
    if user is not None and refresh:
        await users.logout(db, user, refresh)
    auth.clear_login_cookies(request)
    return redirect(request, "/")


@router.post("/auth/refresh")
async def refresh(request: Request, user: OptionalUser) -> Response:
    """Called by the page script before reopening a live stream: fresh cookies, or 401."""
    auth.verify_csrf(request, request.headers.get(auth.CSRF_HEADER))
    response = Response(status_code=204 if user is not None else 401)
    response.headers["Cache-Control"] = "no-store"
    auth.apply_cookies(request, response)
    return response


# --- plans -------------------------------------------------------------------------------------


@router.get("/plans", response_class=HTMLResponse)
async def plans_page(request: Request, user: OptionalUser, db: DbSession) -> Response:
    items = [
        {"plan": plans.to_out(plan), "works": copy.works_lines(plan.code, plan.speed_mbps)}
        for plan in await plans.list_active(db)
    ]
    return render(request, "plans.html", {"nav": "plans", "plans": items})


# --- checkout ----------------------------------------------------------------------------------


def _payment_options(ctx: Ctx) -> dict[str, bool]:
    return {
        "stripe": bool(ctx.settings.stripe_api_key.get_secret_value()),
        "dev": ctx.settings.dev_payments,
    }


async def _checkout_context(db: DbSession, ctx: Ctx, code: str) -> dict[str, Any]:

    try:
        plan = await plans.get_by_code(db, code)
    except KSWiFiError as exc:
        raise PageNotFound() from exc
    if not plan.is_active:
        raise PageNotFound()
    return {
        "nav": "plans",
        "plan": plans.to_out(plan),
        "works": copy.works_lines(plan.code, plan.speed_mbps),
        "payments": _payment_options(ctx),
        "refund_policy": refunds.policy_text(ctx.settings),
        # One key per rendered form: a double-clicked submit buys once.
        "idempotency_key": new_opaque_token(16),
    }


@router.get("/checkout/{plan_code}", response_class=HTMLResponse)
async def checkout_page(
    plan_code: str, request: Request, user: RequiredUser, ctx: Ctx, db: DbSession
) -> Response:
    context = await _checkout_context(db, ctx, plan_code)
    if request.query_params.get("checkout") == "cancelled":
        context["notice"] = "Payment cancelled. Nothing was charged."
    return render(request, "checkout.html", context)


@router.post("/checkout/{plan_code}", response_class=HTMLResponse)
async def checkout(
    plan_code: str, request: Request, user: RequiredUser, ctx: Ctx, db: DbSession
) -> Response:
    fields = await form_fields(request)
    context = await _checkout_context(db, ctx, plan_code)
    method = fields.get("payment_method", "voucher")
    voucher = fields.get("voucher_code", "").strip()
    key = fields.get("idempotency_key", "").strip()[:128] or None
    try:
        if method not in ("voucher", "stripe", "dev"):
            raise Unprocessable("Choose how to pay.")
        if method == "voucher" and not voucher:
            raise Unprocessable("Enter your voucher code.")
        data = PurchaseCreate(
            plan_code=plan_code,
            payment_method=method,
            voucher_code=voucher if method == "voucher" else None,
        )
        result = await purchases.buy(
            db, ctx.settings, user=user, data=data, idempotency_key=key, bus=ctx.events
        )
    except (KSWiFiError, ValidationError) as exc:
        await abandon(db)
        context.update(error=say(exc), voucher_code=voucher)
        status = exc.status_code if isinstance(exc, KSWiFiError) else 422
        return render(request, "checkout.html", context, status_code=status)
    purchase = result.purchase
    if purchase.checkout_url:
        return redirect(request, purchase.checkout_url)
    if purchase.session_id:
        return redirect(request, f"/sessions/{purchase.session_id}?notice=bought")
    return redirect(request, "/sessions")


# --- sessions and live usage ----------------------------------------------------------------


@router.get("/sessions", response_class=HTMLResponse)
async def sessions_page(request: Request, user: RequiredUser, db: DbSession) -> Response:
    now = utcnow()
    rows = [sessions.to_out(session, now) for session in await sessions.list_for_user(db, user.id)]
    context: dict[str, Any] = {"nav": "sessions", "sessions": rows}
    purchase_id = request.query_params.get("purchase", "")
    if request.query_params.get("checkout") == "success" and purchase_id:
        # Back from Stripe: the session exists once the signed webhook has arrived.
        try:
            purchase = await purchases.get_for_user(db, user.id, purchase_id[:64])
        except KSWiFiError:
            purchase = None
        if purchase is not None and purchase.status == "paid":
            context["notice"] = "Payment received. Your data session is ready."
        elif purchase is not None and purchase.status == "pending":
            context["notice"] = "We are confirming your payment. This page updates by itself."
            context["refresh_seconds"] = 3
        elif purchase is not None:
            context["error"] = "The payment did not go through. Nothing was charged."
    return render(request, "sessions.html", context)


@router.get("/sessions/{session_id}", response_class=HTMLResponse)
async def session_page(
    session_id: str, request: Request, user: RequiredUser, db: DbSession
) -> Response:
    session = await _own_session(db, user.id, session_id)
    now = utcnow()
    out = sessions.to_out(session, now)
    rows = await sessions.usage_history(db, session)
    buckets = [(row.bucket_start, row.rx_bytes + row.tx_bytes) for row in rows]
    points = chart.cumulative_points(buckets)
    svg = chart.usage_chart_svg(
        points, session.data_limit_bytes, start=session.activated_at or session.created_at, now=now
    )
    context: dict[str, Any] = {
        "nav": "sessions",
        "s": out,
        "chart": svg,
        "live": out.status in USABLE_STATES,
        "notice": _notice(request),
    }
    return render(request, "session.html", context)


async def _own_session(db: AsyncSession, user_id: str, session_id: str) -> DataSession:
    try:
        return await sessions.get_for_user(db, user_id, session_id)
    except KSWiFiError as exc:
        raise PageNotFound() from exc


_NOTICES = {
    "bought": "Your data session is ready. Tap “Generate Connect Code” to set up your device.",
}


def _notice(request: Request) -> str | None:
    return _NOTICES.get(request.query_params.get("notice", ""))


def say(exc: KSWiFiError | ValidationError) -> str:
    """A domain error's message for a person (they are written for people already)."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {first.get('msg', 'invalid')}" if where else "Please check the form."
    return exc.message


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# --- setup: Generate Connect Code ---------------------------------------------------------------


async def _regions(request: Request, db: AsyncSession, ctx: Ctx) -> list[dict[str, Any]]:
    """Regions that have gateways, nearest to this browser first, for the region choice."""
    client = regions.locate_client(
        ctx.settings,
        peer_address=request.client.host if request.client else None,
        headers=request.headers,
    )
    listing = await regions.list_status(db, ctx.settings, client, utcnow())
    return [
        {
            "code": region.code,
            "name": _place(region.name, region.location),
            "hint": region.latency_hint if region.distance is not None else "",
            "status": region.status,
        }
        for region in listing.regions
        if region.gateways > 0
    ]


def _place(name: str, location: str) -> str:
    return f"{name} ({location})" if location else name


async def _region_name(db: AsyncSession, code: str) -> str:
    try:
        region = await regions.get(db, code)
    except KSWiFiError:
        return code
    return _place(region.name, region.location)


@router.get("/sessions/{session_id}/setup", response_class=HTMLResponse)
async def setup_page(
    session_id: str, request: Request, user: RequiredUser, ctx: Ctx, db: DbSession
) -> Response:
    session = await _own_session(db, user.id, session_id)
    out = sessions.to_out(session, utcnow())
    context = {
        "nav": "sessions",
        "s": out,
        "regions": await _regions(request, db, ctx),
        "copy": copy,
    }
    if out.status not in USABLE_STATES:
        context["error"] = ENDED_MESSAGES.get(out.status)
    return render(request, "setup.html", context)


@router.post("/sessions/{session_id}/setup", response_class=HTMLResponse)
async def generate(
    session_id: str, request: Request, user: RequiredUser, ctx: Ctx, db: DbSession
) -> Response:
    fields = await form_fields(request)
    user_id = user.id
    session = await _own_session(db, user_id, session_id)
    region = fields.get("region", "").strip() or None
    device_name = fields.get("device_name", "").strip() or None
    now = utcnow()
    try:
        generated = await profiles.generate_for_request(
            db,
            ctx,
            user_id=user_id,
            session_id=session.id,
            region=region,
            device_name=device_name,
            peer_address=request.client.host if request.client else None,
            headers=request.headers,
        )
        profile = profiles.to_response(generated, ctx.settings)
    except KSWiFiError as exc:
        await abandon(db)
        session = await _own_session(db, user_id, session_id)
        context = {
            "nav": "sessions",
            "s": sessions.to_out(session, now),
            "regions": await _regions(request, db, ctx),
            "copy": copy,
            "error": say(exc),
            "device_name": device_name or "",
        }
        return render(request, "setup.html", context, status_code=exc.status_code)
    context = await ready_context(db, profile, sessions.to_out(session, now))
    # The page holds a private key: never cached, never replayed from history.
    return render(request, "setup_ready.html", context, no_store=True)


async def ready_context(
    db: AsyncSession, profile: ConnectProfileResponse, session: SessionOut | None
) -> dict[str, Any]:
    """What the "profile ready" page shows (from the sessions and the devices pages)."""
    device = await notices.shown_device(db, profile.connect_id)
    return {
        "device": device,
        "nav": "sessions",
        "s": session,
        "profile": profile,
        "region_name": await _region_name(db, profile.region),
        "setup_path": _path_of(profile.setup_url),
        "config_path": _path_of(profile.config_url),
        "mobileconfig_path": _path_of(profile.mobileconfig_url),
        "conf_filename": profiles.tunnel_filename(),
        "copy": copy,
    }


@router.get("/offline", response_class=HTMLResponse)
async def offline(request: Request) -> Response:
    return render(request, "offline.html")
