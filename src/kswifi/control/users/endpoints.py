"""HTTP endpoints of the users domain: register, login, refresh, logout, me."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from kswifi.control.deps import Ctx, CurrentUser, DbSession
from kswifi.control.errors import TooManyRequests
from kswifi.control.users import service
from kswifi.control.users.ratelimit import AuthRateLimits
from kswifi.control.users.schemas import LoginIn, LogoutIn, RefreshIn, RegisterIn, TokenOut, UserOut

router = APIRouter(prefix="/auth", tags=["auth"])

_LIMITS_STATE = "kswifi_auth_rate_limits"


def rate_limits(request: Request, ctx: Ctx) -> AuthRateLimits:
    """The app's limiters, created on first use (they live as long as the app)."""
    limits: AuthRateLimits | None = getattr(request.app.state, _LIMITS_STATE, None)
    if limits is None:
        limits = AuthRateLimits.from_settings(ctx.settings)
        setattr(request.app.state, _LIMITS_STATE, limits)
    return limits


def client_address(request: Request) -> str:
    """The peer address. X-Forwarded-For is not trusted: any client can write it."""
    return request.client.host if request.client else "unknown"


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register(body: RegisterIn, request: Request, ctx: Ctx, db: DbSession) -> UserOut:
    wait = rate_limits(request, ctx).register_by_address.hit(client_address(request))
    if wait is not None:
        raise TooManyRequests("Too many sign-ups from this address; try again shortly", wait)
    user = await service.register(db, body.email, body.password)
    return UserOut.model_validate(user)


@router.post("/login")
async def login(body: LoginIn, request: Request, ctx: Ctx, db: DbSession) -> TokenOut:
    limits = rate_limits(request, ctx)
    address = client_address(request)
    wait = limits.login_wait(body.email, address)
    if wait is not None:
        raise TooManyRequests(f"Too many failed logins; try again in {wait} seconds", wait)
    try:
        tokens = await service.login(db, ctx.secrets, ctx.settings, body.email, body.password)
    except service.InvalidCredentials:
        limits.login_failed(body.email, address)
        raise
    limits.login_succeeded(body.email)
    return tokens


@router.post("/refresh")
async def refresh(body: RefreshIn, ctx: Ctx) -> TokenOut:
    # This endpoint owns its transaction: on reuse the family revocation must be committed
    # even though the answer is 401, so the error is raised only after the commit.
    reused: service.RefreshTokenReused | None = None
    async with ctx.db.transaction() as db:
        try:
            tokens = await service.rotate_refresh_token(
                db, ctx.secrets, ctx.settings, body.refresh_token
            )
        except service.RefreshTokenReused as exc:
            reused = exc
    if reused is not None:
        raise reused
    return tokens


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(body: LogoutIn, user: CurrentUser, db: DbSession) -> Response:
    await service.logout(db, user, body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me")
async def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)
