"""HTTP endpoints of the users domain: register, login, refresh, logout, me."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from kswifi.control.deps import Ctx, CurrentUser, DbSession
from kswifi.control.users import service
from kswifi.control.users.schemas import LoginIn, LogoutIn, RefreshIn, RegisterIn, TokenOut, UserOut

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register(body: RegisterIn, request: Request, ctx: Ctx, db: DbSession) -> UserOut:
    limits = service.rate_limits(request.app.state, ctx.settings)
    address = service.client_address(request.client.host if request.client else None)
    user = await service.register_limited(db, limits, address, body.email, body.password)
    return UserOut.model_validate(user)


@router.post("/login")
async def login(body: LoginIn, request: Request, ctx: Ctx, db: DbSession) -> TokenOut:
    limits = service.rate_limits(request.app.state, ctx.settings)
    address = service.client_address(request.client.host if request.client else None)
    return await service.login_limited(
        db, ctx.secrets, ctx.settings, limits, address, body.email, body.password
    )


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
