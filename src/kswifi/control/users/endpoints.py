"""HTTP endpoints of the users domain: register, login, refresh, logout, me, and the account's
e-mailed links (confirm address, reset password, change e-mail) and password change."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from kswifi.control.deps import Ctx, CurrentUser, DbSession
from kswifi.control.users import recovery, service
from kswifi.control.users.schemas import (
    Accepted,
    EmailChangeIn,
    EmailIn,
    LoginIn,
    LogoutIn,
    PasswordChangeIn,
    PasswordResetConfirmIn,
    RefreshIn,
    RegisterIn,
    TokenIn,
    TokenOut,
    UserOut,
)

router = APIRouter(prefix="/auth", tags=["auth"])


def _address(request: Request) -> str:
    return service.client_address(request.client.host if request.client else None)


@router.post("/register", status_code=status.HTTP_202_ACCEPTED)
async def register(body: RegisterIn, request: Request, ctx: Ctx, db: DbSession) -> Accepted:
    """Create an account. The answer is the same whether or not the address had one; what
    happens next arrives by e-mail (with `KSWIFI_EMAIL_VERIFICATION` on, log in after
    following its link)."""
    limits = service.rate_limits(request.app.state, ctx.settings)
    detail = await recovery.sign_up(
        db, ctx.settings, limits, _address(request), body.email, body.password
    )
    return Accepted(detail=detail)


@router.post("/login")
async def login(body: LoginIn, request: Request, ctx: Ctx, db: DbSession) -> TokenOut:
    limits = service.rate_limits(request.app.state, ctx.settings)
    return await service.login_limited(
        db, ctx.secrets, ctx.settings, limits, _address(request), body.email, body.password
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


@router.post("/password-reset", status_code=status.HTTP_202_ACCEPTED)
async def password_reset(body: EmailIn, request: Request, ctx: Ctx, db: DbSession) -> Accepted:
    """E-mail a single-use link (30 minutes) to choose a new password, if the address has an
    account; the answer is the same either way."""
    limits = service.rate_limits(request.app.state, ctx.settings)
    detail = await recovery.request_password_reset(
        db, ctx.settings, limits, _address(request), body.email
    )
    return Accepted(detail=detail)


@router.post("/password-reset/confirm")
async def password_reset_confirm(body: PasswordResetConfirmIn, ctx: Ctx, db: DbSession) -> Accepted:
    """Set the new password with the e-mailed token; every login of the account ends."""
    await recovery.reset_password(db, ctx.settings, body.token, body.password)
    return Accepted(detail="Your password has been changed. Log in with the new one.")


@router.post("/verify-email/resend", status_code=status.HTTP_202_ACCEPTED)
async def resend_verification(body: EmailIn, request: Request, ctx: Ctx, db: DbSession) -> Accepted:
    limits = service.rate_limits(request.app.state, ctx.settings)
    await recovery.resend_verification(db, ctx.settings, limits, _address(request), body.email)
    return Accepted(
        detail="If that address has an account waiting for confirmation, we have sent it a "
        "new link."
    )


@router.post("/verify-email")
async def verify_email(body: TokenIn, db: DbSession) -> Accepted:
    await recovery.verify_email(db, body.token)
    return Accepted(detail="Your e-mail address is confirmed.")


@router.post("/password")
async def change_password(
    body: PasswordChangeIn, user: CurrentUser, ctx: Ctx, db: DbSession
) -> TokenOut:
    """Change the password; every other login ends, and this answer holds fresh tokens."""
    return await recovery.change_password(
        db, ctx.secrets, ctx.settings, user, body.current_password, body.new_password
    )


@router.post("/email", status_code=status.HTTP_202_ACCEPTED)
async def change_email(body: EmailChangeIn, user: CurrentUser, ctx: Ctx, db: DbSession) -> Accepted:
    """E-mail a confirmation link to the new address; the address changes when it is opened."""
    detail = await recovery.request_email_change(
        db, ctx.settings, user, body.password, body.new_email
    )
    return Accepted(detail=detail)


@router.post("/email/confirm")
async def confirm_email_change(body: TokenIn, ctx: Ctx, db: DbSession) -> UserOut:
    user = await recovery.confirm_email_change(db, ctx.settings, body.token)
    return UserOut.model_validate(user)
