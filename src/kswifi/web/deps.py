"""Dependencies of the page routes: who is browsing, and HTML answers for refusals."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response

from kswifi.control.deps import DbSession
from kswifi.control.models import User
from kswifi.web import auth


class LoginRequired(Exception):
    """Raised by a page that needs a user; answered with a redirect to the login page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PageNotFound(Exception):
    """An HTML 404 (also what a non-operator sees for any console page)."""


async def optional_user(request: Request, db: DbSession) -> User | None:
    return await auth.current_user(request, db)


async def required_user(request: Request, db: DbSession) -> User:
    user = await auth.current_user(request, db)
    if user is None:
        # A refresh-token reuse revoked a family above; keep that even though we refuse.
        await db.commit()
        raise LoginRequired(_here(request))
    return user


async def operator(request: Request, db: DbSession) -> User:
    """Operators only. Anyone else is sent to log in, or told the page does not exist."""
    user = await required_user(request, db)
    if not user.is_admin:
        raise PageNotFound()
    return user


def _here(request: Request) -> str:
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return path


def safe_next(value: object, default: str = "/sessions") -> str:
    """Only paths on this site: never `//host`, a scheme, or a backslash trick."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(character) < 0x20 for character in value) or len(value) > 512:
        return default
    return value


def login_redirect(request: Request, next_path: str) -> Response:
    response = RedirectResponse(f"/login?next={quote(next_path, safe='/')}", status_code=303)
    auth.apply_cookies(request, response)
    return response


OptionalUser = Annotated[User | None, Depends(optional_user)]
RequiredUser = Annotated[User, Depends(required_user)]
Operator = Annotated[User, Depends(operator)]
