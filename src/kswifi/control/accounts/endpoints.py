"""HTTP endpoints of the accounts domain."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from kswifi.control.accounts import service
from kswifi.control.accounts.schemas import DeleteAccountIn
from kswifi.control.deps import Ctx, CurrentUser, DbSession

router = APIRouter(prefix="/account", tags=["auth"])


@router.post("/delete", status_code=status.HTTP_204_NO_CONTENT)
async def delete_account(
    body: DeleteAccountIn, user: CurrentUser, ctx: Ctx, db: DbSession
) -> Response:
    """Delete the caller's account (their password confirms it): sessions revoked, devices
    removed, personal data removed; purchases are kept, anonymous, for the books."""
    await service.delete_account(db, ctx.events, user, body.password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
