"""Account pages: forgotten password, the e-mailed links (reset, confirm an address), and the
logged-in person's settings (change password or e-mail).

The reset link's token travels in the path of a page that only shows a form (mail scanners
that open links spend nothing); the POST spends it. Every answer about an address is the same
whether or not it has an account.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field, ValidationError

from kswifi.control.accounts import service as accounts
from kswifi.control.deps import Ctx, DbSession, abandon
from kswifi.control.errors import KSWiFiError, Unprocessable
from kswifi.control.models import ALERT_KINDS
from kswifi.control.notify import service as notify
from kswifi.control.push import service as push
from kswifi.control.push import vapid
from kswifi.control.users import recovery
from kswifi.control.users import service as users
from kswifi.web import auth
from kswifi.web.deps import OptionalUser, RequiredUser
from kswifi.web.pages import form_fields, redirect, say
from kswifi.web.templating import render

router = APIRouter(include_in_schema=False)

TOKEN_MAX = 512


def _address(request: Request) -> str:
    return users.client_address(request.client.host if request.client else None)


# --- forgotten password --------------------------------------------------------------------------


@router.get("/password-reset", response_class=HTMLResponse)
async def forgot_page(request: Request, user: OptionalUser) -> Response:
    return render(request, "password_forgot.html", {"nav": "login"})


@router.post("/password-reset", response_class=HTMLResponse)
async def forgot(request: Request, ctx: Ctx, db: DbSession) -> Response:
    fields = await form_fields(request)
    email = fields.get("email", "").strip()[:320]
    limits = users.rate_limits(request.app.state, ctx.settings)
    try:
        notice = await recovery.request_password_reset(
            db, ctx.settings, limits, _address(request), email
        )
    except KSWiFiError as exc:
        await abandon(db)
        context = {"nav": "login", "email": email, "error": say(exc)}
        return render(request, "password_forgot.html", context, status_code=exc.status_code)
    return render(request, "password_forgot.html", {"nav": "login", "notice": notice, "sent": True})


@router.get("/password-reset/{token}", response_class=HTMLResponse)
async def reset_page(request: Request, token: str, user: OptionalUser) -> Response:
    context = {"nav": "login", "token": token[:TOKEN_MAX]}
    return render(request, "password_reset.html", context, no_store=True)


@router.post("/password-reset/{token}", response_class=HTMLResponse)
async def reset(request: Request, token: str, ctx: Ctx, db: DbSession) -> Response:
    fields = await form_fields(request)
    password = fields.get("password", "")
    try:
        await recovery.reset_password(db, ctx.settings, token[:TOKEN_MAX], password)
    except KSWiFiError as exc:
        await abandon(db)
        context = {
            "nav": "login",
            "token": token[:TOKEN_MAX],
            "error": say(exc),
            "expired": isinstance(exc, recovery.InvalidLink),
        }
        return render(
            request, "password_reset.html", context, status_code=exc.status_code, no_store=True
        )
    auth.clear_login_cookies(request)
    return redirect(request, "/login?notice=password-reset")


# --- e-mailed confirmation links -----------------------------------------------------------------


@router.get("/verify-email/{token}", response_class=HTMLResponse)
async def verify(request: Request, token: str, ctx: Ctx, db: DbSession) -> Response:
    """Opening the link is the confirmation (it proves the mailbox, nothing more)."""
    change = request.query_params.get("change") == "1"
    try:
        if change:
            await recovery.confirm_email_change(db, ctx.settings, token[:TOKEN_MAX])
        else:
            await recovery.verify_email(db, token[:TOKEN_MAX])
    except KSWiFiError as exc:
        await abandon(db)
        context = {
            "heading": "This link no longer works",
            "message": say(exc),
            "back_url": "/login",
        }
        return render(request, "error.html", context, status_code=exc.status_code)
    return redirect(request, "/login?notice=" + ("email-changed" if change else "verified"))


# --- the logged-in person's settings -------------------------------------------------------------


Choices = dict[str, dict[str, bool]]

_SETTINGS_NOTICES = {
    "password": "Your password has been changed. Other devices were logged out.",
    "alerts": "Your alert choices are saved.",
}


def _account(
    request: Request, alerts: Choices, status_code: int = 200, **values: object
) -> Response:
    """The account page; `alerts` read before any rollback (which expires the user row)."""
    settings = request.app.state.ctx.settings
    context = {
        "nav": "account",
        "alerts": alerts,
        "push_key": vapid.public_key(settings),
        "alert_labels": notify.ALERT_LABELS,
        **values,
    }
    return render(request, "account.html", context, status_code=status_code)


@router.get("/account", response_class=HTMLResponse)
async def account_page(request: Request, user: RequiredUser) -> Response:
    notice = _SETTINGS_NOTICES.get(request.query_params.get("notice", ""))
    return _account(request, notify.choices(user), notice=notice)


@router.post("/account/password", response_class=HTMLResponse)
async def change_password(
    request: Request, user: RequiredUser, ctx: Ctx, db: DbSession
) -> Response:
    fields = await form_fields(request)
    alerts = notify.choices(user)
    try:
        tokens = await recovery.change_password(
            db,
            ctx.secrets,
            ctx.settings,
            user,
            fields.get("current_password", ""),
            fields.get("new_password", ""),
        )
    except KSWiFiError as exc:
        await abandon(db)
        return _account(request, alerts, exc.status_code, error=say(exc))
    auth.set_login_cookies(request, tokens)
    return redirect(request, "/account?notice=password")


@router.post("/account/email", response_class=HTMLResponse)
async def change_email(request: Request, user: RequiredUser, ctx: Ctx, db: DbSession) -> Response:
    fields = await form_fields(request)
    new_email = fields.get("new_email", "").strip()[:320]
    alerts = notify.choices(user)
    try:
        notice = await recovery.request_email_change(
            db, ctx.settings, user, fields.get("password", ""), new_email
        )
    except KSWiFiError as exc:
        await abandon(db)
        return _account(request, alerts, exc.status_code, error=say(exc), new_email=new_email)
    return _account(request, alerts, notice=notice)


@router.post("/account/delete", response_class=HTMLResponse)
async def delete_account(request: Request, user: RequiredUser, ctx: Ctx, db: DbSession) -> Response:
    fields = await form_fields(request)
    alerts = notify.choices(user)
    if fields.get("confirm") != "yes":
        return _account(
            request, alerts, 422, error="Tick the box to confirm you want your account deleted."
        )
    try:
        await accounts.delete_account(db, ctx.events, user, fields.get("password", ""))
    except KSWiFiError as exc:
        await abandon(db)
        return _account(request, alerts, exc.status_code, error=say(exc))
    auth.clear_login_cookies(request)
    context = {
        "heading": "Your account is deleted",
        "message": "Your sessions and devices have ended and your personal data is removed. "
        "Thank you for using KSWiFi Connect.",
        "back_url": "/",
    }
    return render(request, "error.html", context)


class _PushKeys(BaseModel):
    p256dh: str = Field(min_length=16, max_length=128)
    auth: str = Field(min_length=8, max_length=64)


class _PushSubscription(BaseModel):
    """What the browser's PushSubscription.toJSON() gives."""

    endpoint: str = Field(min_length=8, max_length=2048)
    keys: _PushKeys
    expirationTime: float | None = None


class _PushEndpoint(BaseModel):
    endpoint: str = Field(min_length=8, max_length=2048)


async def _json_with_csrf(request: Request) -> Any:
    auth.verify_csrf(request, request.headers.get(auth.CSRF_HEADER))
    try:
        return await request.json()
    except ValueError as exc:
        raise Unprocessable("The body is not JSON") from exc


@router.post("/account/push")
async def push_subscribe(request: Request, user: RequiredUser, ctx: Ctx, db: DbSession) -> Response:
    """The page's script sends this browser's push subscription (JSON, CSRF header)."""
    try:
        body = _PushSubscription.model_validate(await _json_with_csrf(request))
    except ValidationError as exc:
        raise Unprocessable("That is not a push subscription") from exc
    await push.subscribe(db, ctx.settings, user.id, body.endpoint, body.keys.p256dh, body.keys.auth)
    return Response(status_code=204)


@router.post("/account/push/remove")
async def push_unsubscribe(request: Request, user: RequiredUser, db: DbSession) -> Response:
    try:
        body = _PushEndpoint.model_validate(await _json_with_csrf(request))
    except ValidationError as exc:
        raise Unprocessable("That is not a push subscription") from exc
    await push.unsubscribe(db, user.id, body.endpoint)
    return Response(status_code=204)


@router.post("/account/alerts", response_class=HTMLResponse)
async def choose_alerts(request: Request, user: RequiredUser, db: DbSession) -> Response:
    """Checkboxes: a ticked box posts `email:usage_80=on`; an unticked one posts nothing."""
    fields = await form_fields(request)
    wanted = {
        channel: {kind.value: f"{channel}:{kind.value}" in fields for kind in ALERT_KINDS}
        for channel in notify.CHANNELS
    }
    await notify.choose(db, user, wanted)
    return redirect(request, "/account?notice=alerts")
