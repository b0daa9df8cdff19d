"""FastAPI dependencies: the request's transaction and who is calling, as typed aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.db import AFTER_COMMIT, Database
from kswifi.control.errors import Forbidden, Unauthorized
from kswifi.control.events import EventBus
from kswifi.control.models import Gateway, User
from kswifi.control.security import SecretBox, hash_token


@dataclass
class AppContext:
    """What the app holds for its whole life; on `app.state.ctx`."""

    settings: Settings
    db: Database
    secrets: SecretBox
    events: EventBus


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


# The dependencies below do no I/O, so they are `async def`: FastAPI runs a plain `def`
# dependency in a worker thread, a hand-off that costs more than the work itself.
async def _ctx(request: Request) -> AppContext:
    return get_ctx(request)


Ctx = Annotated[AppContext, Depends(_ctx)]


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """The request owns the transaction: commit when the endpoint returns, else roll back."""
    async with get_ctx(request).db.transaction() as session:
        yield session


# scope="function": the commit runs before the response is sent, so a failed commit is an error
# response, never a success the database does not hold.
DbSession = Annotated[AsyncSession, Depends(get_db, scope="function")]


async def abandon(db: AsyncSession) -> None:
    """Undo the request's writes after a refused action (and drop the events they queued),
    so a page can answer with the error and still commit nothing.

    ORM objects loaded before are expired afterwards: read what is needed from them first.
    """
    db.info.pop(AFTER_COMMIT, None)
    await db.rollback()


_bearer = HTTPBearer(auto_error=False, description="Access token from /api/auth/login")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_current_user_id(ctx: Ctx, credentials: BearerCredentials) -> str:
    """The product note's `current_user_id`: the subject of a valid access token."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    return ctx.secrets.read_access_token(credentials.credentials).user_id


async def _current_user_id(ctx: Ctx, credentials: BearerCredentials) -> str:
    return get_current_user_id(ctx, credentials)


CurrentUserId = Annotated[str, Depends(_current_user_id)]

# The web app keeps the access token in this HttpOnly cookie, so that pages and EventSource
# streams (which cannot send headers) authenticate too.
WEB_ACCESS_COOKIE = "kswifi_access"


def get_user_id_from_bearer_or_cookie(
    request: Request, ctx: Ctx, credentials: BearerCredentials
) -> str:
    if credentials is not None and credentials.scheme.lower() == "bearer":
        return ctx.secrets.read_access_token(credentials.credentials).user_id
    cookie = request.cookies.get(WEB_ACCESS_COOKIE)
    if not cookie:
        raise Unauthorized()
    return ctx.secrets.read_access_token(cookie).user_id


async def _browser_or_bearer_user_id(
    request: Request, ctx: Ctx, credentials: BearerCredentials
) -> str:
    return get_user_id_from_bearer_or_cookie(request, ctx, credentials)


BrowserOrBearerUserId = Annotated[str, Depends(_browser_or_bearer_user_id)]


async def get_current_user(user_id: CurrentUserId, db: DbSession) -> User:
    user = await db.get(User, user_id)
    if user is None or user.is_disabled:
        raise Unauthorized("The account is not active")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("This needs an operator account")
    return user


AdminUser = Annotated[User, Depends(get_admin_user)]


async def get_gateway_node(credentials: BearerCredentials, db: DbSession) -> Gateway:
    """The gateway whose token is presented; a wrong or revoked token is 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Gateway token required")
    gateway = await db.scalar(
        select(Gateway).where(Gateway.token_hash == hash_token(credentials.credentials))
    )
    if gateway is None or not gateway.is_enabled:
        raise Unauthorized("Gateway token is not valid")
    return gateway


GatewayNode = Annotated[Gateway, Depends(get_gateway_node)]
