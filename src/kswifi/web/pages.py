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

from kswifi.control.deps import Ctx, DbSession
from kswifi.control.errors import KSWiFiError, TooManyRequests
from kswifi.control.models import DataSession, User, utcnow
from kswifi.control.plans import service as plans
from kswifi.control.sessions import service as sessions
from kswifi.control.users import endpoints as user_endpoints
from kswifi.control.users import service as users
from kswifi.web import auth, chart, copy
from kswifi.web.deps import OptionalUser, RequiredUser, safe_next
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
    limits = user_endpoints.rate_limits(request, ctx)
    wait = limits.register_by_address.hit(user_endpoints.client_address(request))
    try:
        if wait is not None:
            raise TooManyRequests("Too many sign-ups from here; please try again shortly", wait)
        user = await users.register(db, email, password)
        tokens = await users.issue_tokens(db, ctx.secrets, ctx.settings, user)
    except KSWiFiError as exc:
        await db.rollback()
        context = {"nav": "signup", "email": email, "next": next_path, "error": _say(exc)}
        return render(request, "signup.html", context, status_code=exc.status_code)
    auth.set_login_cookies(request, tokens)
    return redirect(request, next_path)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, user: OptionalUser) -> Response:
    next_path = safe_next(request.query_params.get("next"), "")
    if user is not None:
        return redirect(request, next_path or "/sessions")
    return render(request, "login.html", {"nav": "login", "next": next_path})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, ctx: Ctx, db: DbSession) -> Response:
    fields = await form_fields(request)
    email = fields.get("email", "").strip()
    password = fields.get("password", "")
    next_path = safe_next(fields.get("next"))
    limits = user_endpoints.rate_limits(request, ctx)
    account_key = email.lower()
    address_key = user_endpoints.client_address(request)
    waits = [
        wait
        for wait in (
            limits.login_by_account.retry_after(account_key),
            limits.login_by_address.retry_after(address_key),
        )
        if wait is not None
    ]
    try:
        if waits:
            raise TooManyRequests(
                f"Too many failed logins; try again in {max(waits)} seconds", max(waits)
            )
        try:
            tokens = await users.login(db, ctx.secrets, ctx.settings, email, password)
        except users.InvalidCredentials:
            limits.login_by_account.record(account_key)
            limits.login_by_address.record(address_key)
            raise
    except KSWiFiError as exc:
        await db.rollback()
        context = {"nav": "login", "email": email, "next": next_path, "error": _say(exc)}
        return render(request, "login.html", context, status_code=exc.status_code)
    limits.login_by_account.reset(account_key)
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


# --- sessions and live usage ----------------------------------------------------------------


@router.get("/sessions", response_class=HTMLResponse)
async def sessions_page(request: Request, user: RequiredUser, db: DbSession) -> Response:
    now = utcnow()
    rows = [sessions.to_out(session, now) for session in await sessions.list_for_user(db, user.id)]
    return render(request, "sessions.html", {"nav": "sessions", "sessions": rows})


@router.get("/sessions/{session_id}", response_class=HTMLResponse)
async def session_page(
    session_id: str, request: Request, user: RequiredUser, db: DbSession
) -> Response:
    session = await _own_session(db, user, session_id)
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
        "live": out.status in ("active", "connected"),
        "notice": _notice(request),
    }
    return render(request, "session.html", context)


async def _own_session(db: DbSession, user: User, session_id: str) -> DataSession:
    from kswifi.web.deps import PageNotFound

    try:
        return await sessions.get_for_user(db, user.id, session_id)
    except KSWiFiError as exc:
        raise PageNotFound() from exc


_NOTICES = {
    "bought": "Your data session is ready. Tap “Generate Connect Code” to set up your device.",
}


def _notice(request: Request) -> str | None:
    return _NOTICES.get(request.query_params.get("notice", ""))


def _say(exc: KSWiFiError) -> str:
    """A domain error's message for a person (they are written for people already)."""
    return exc.message


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@router.get("/offline", response_class=HTMLResponse)
async def offline(request: Request) -> Response:
    return render(request, "offline.html")
