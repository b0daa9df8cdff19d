"""The web app's login cookies and CSRF protection.

Login sets two HttpOnly, SameSite=Lax cookies: the short-lived access token (the same JWT the
API accepts, so EventSource streams authenticate with it) and the refresh token. When the access
token has expired, the next page load rotates the refresh token and sets fresh cookies; logout
revokes the refresh token's family and clears both.

Form POSTs carry a signed double-submit token: a random nonce lives in a cookie and the form
field holds its HMAC (`SecretBox.sign`), so another site can neither read nor forge it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.deps import WEB_ACCESS_COOKIE, AppContext
from kswifi.control.errors import KSWiFiError, NotFound, Unauthorized
from kswifi.control.models import User
from kswifi.control.security import new_opaque_token
from kswifi.control.users import service as users
from kswifi.control.users.schemas import TokenOut

ACCESS_COOKIE = WEB_ACCESS_COOKIE  # the API's browser-or-bearer dependency reads it too
REFRESH_COOKIE = "kswifi_refresh"
CSRF_COOKIE = "kswifi_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
CSRF_MAX_AGE = 7 * 86_400


class CsrfRefused(KSWiFiError):
    status_code = 403
    code = "csrf_failed"


@dataclass(frozen=True)
class Identity:
    """Who is browsing, as plain values: safe to render after the transaction has ended."""

    id: str
    email: str
    is_admin: bool


def identity(request: Request) -> Identity | None:
    found: Identity | None = getattr(request.state, "web_identity", None)
    return found


@dataclass
class PendingCookies:
    """Cookie changes decided while handling a request, applied to whatever response it makes."""

    to_set: dict[str, tuple[str, int]] = field(default_factory=dict)
    to_delete: set[str] = field(default_factory=set)


def _pending(request: Request) -> PendingCookies:
    pending: PendingCookies | None = getattr(request.state, "web_cookies", None)
    if pending is None:
        pending = PendingCookies()
        request.state.web_cookies = pending
    return pending


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or _ctx(request).settings.public_url.startswith("https")


def apply_cookies(request: Request, response: Response) -> None:
    pending: PendingCookies | None = getattr(request.state, "web_cookies", None)
    if pending is None:
        return
    secure = _secure(request)
    for name in pending.to_delete:
        response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="lax")
    for name, (value, max_age) in pending.to_set.items():
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=secure,
            httponly=True,
            samesite="lax",
        )


def set_login_cookies(request: Request, tokens: TokenOut) -> None:
    ctx = _ctx(request)
    pending = _pending(request)
    pending.to_delete.discard(ACCESS_COOKIE)
    pending.to_delete.discard(REFRESH_COOKIE)
    pending.to_set[ACCESS_COOKIE] = (tokens.access_token, tokens.expires_in)
    refresh_max_age = ctx.settings.refresh_token_days * 86_400
    pending.to_set[REFRESH_COOKIE] = (tokens.refresh_token, refresh_max_age)
    # A new login gets a new CSRF nonce: a token planted before login is worthless after.
    pending.to_set[CSRF_COOKIE] = (new_opaque_token(16), CSRF_MAX_AGE)


def clear_login_cookies(request: Request) -> None:
    pending = _pending(request)
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        pending.to_set.pop(name, None)
        pending.to_delete.add(name)


async def current_user(request: Request, db: AsyncSession) -> User | None:
    """The logged-in user of this browser, refreshing an expired access cookie; else None."""
    if hasattr(request.state, "web_user"):
        user: User | None = request.state.web_user
        return user
    user = await _resolve_user(request, db)
    request.state.web_user = user
    if user is not None:
        request.state.web_identity = Identity(user.id, user.email, user.is_admin)
    return user


async def _resolve_user(request: Request, db: AsyncSession) -> User | None:
    ctx = _ctx(request)
    access = request.cookies.get(ACCESS_COOKIE)
    if access:
        try:
            claims = ctx.secrets.read_access_token(access)
        except Unauthorized:
            claims = None
        if claims is not None:
            return await _active_user(db, claims.user_id)
    refresh = request.cookies.get(REFRESH_COOKIE)
    if not refresh:
        if access:
            clear_login_cookies(request)
        return None
    try:
        tokens = await users.rotate_refresh_token(db, ctx.secrets, ctx.settings, refresh)
    except users.RefreshTokenReused:
        # The family revocation is pending in this transaction; the request commits it.
        clear_login_cookies(request)
        return None
    except Unauthorized:
        clear_login_cookies(request)
        return None
    claims = ctx.secrets.read_access_token(tokens.access_token)
    user = await _active_user(db, claims.user_id)
    if user is None:
        clear_login_cookies(request)
        return None
    set_login_cookies(request, tokens)
    # Keep the CSRF nonce the page already holds: a refresh is not a new login.
    if CSRF_COOKIE in request.cookies:
        _pending(request).to_set.pop(CSRF_COOKIE, None)
    return user


async def _active_user(db: AsyncSession, user_id: str) -> User | None:
    try:
        user = await users.get_user(db, user_id)
    except NotFound:
        return None
    return None if user.is_disabled else user


def _csrf_nonce(request: Request) -> str:
    pending = _pending(request)
    planned = pending.to_set.get(CSRF_COOKIE)
    if planned is not None:
        return planned[0]
    nonce = request.cookies.get(CSRF_COOKIE)
    if not nonce or len(nonce) > 64:
        nonce = new_opaque_token(16)
        pending.to_set[CSRF_COOKIE] = (nonce, CSRF_MAX_AGE)
    return nonce


def csrf_token(request: Request) -> str:
    """The token to put in this page's forms (sets the nonce cookie when missing)."""
    return _ctx(request).secrets.sign(f"csrf:{_csrf_nonce(request)}")


def verify_csrf(request: Request, submitted: Any) -> None:
    """Refuse a POST whose token does not match this browser's nonce (CsrfRefused, 403)."""
    nonce = request.cookies.get(CSRF_COOKIE)
    if not nonce or not isinstance(submitted, str) or not submitted:
        raise CsrfRefused("This form has expired. Please reload the page and try again.")
    expected = _ctx(request).secrets.sign(f"csrf:{nonce}")
    if not hmac.compare_digest(expected, submitted):
        raise CsrfRefused("This form has expired. Please reload the page and try again.")
