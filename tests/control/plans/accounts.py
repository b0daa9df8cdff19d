"""Accounts made through the ORM for the commerce tests, logged in through the API."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import timedelta

import httpx

from kswifi.control.deps import AppContext
from kswifi.control.models import User
from kswifi.control.security import hash_password

PASSWORD = "correct horse battery 42"


@functools.cache
def _password_hash() -> str:
    """Hashed once per run: argon2 is slow on purpose, and every account shares the password."""
    return hash_password(PASSWORD)


@dataclass
class Account:
    id: str
    email: str
    headers: dict[str, str]


async def create_account(
    ctx: AppContext, client: httpx.AsyncClient, *, is_admin: bool = False
) -> Account:
    email = f"{'admin' if is_admin else 'buyer'}-{uuid.uuid4().hex[:10]}@example.com"
    async with ctx.db.transaction() as db:
        user = User(email=email, password_hash=_password_hash(), is_admin=is_admin)
        db.add(user)
        await db.flush()
        user_id = user.id
    login = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    if login.status_code == 200:
        token = login.json()["access_token"]
    else:  # the users domain is not there yet: mint the same kind of token it would issue
        assert login.status_code in (404, 405), login.text
        token = ctx.secrets.issue_access_token(user_id, is_admin, timedelta(minutes=15))
    return Account(id=user_id, email=email, headers={"Authorization": f"Bearer {token}"})
