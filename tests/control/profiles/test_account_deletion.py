"""Deleting an account: its sessions are revoked, its devices leave their gateway, its
personal data goes (address, password, device names, mail), its purchases stay anonymous,
and the address can sign up afresh."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from kswifi.control.deps import AppContext
from kswifi.control.mail import service as mail
from kswifi.control.mail.letters import compose
from kswifi.control.models import DataSession, Device, OutgoingMail, Purchase, User
from tests.conftest import ApiUser
from tests.control.profiles.conftest import (
    MakeSession,
    Owner,
    RegisteredGateway,
    desired_peers,
    generate,
)


async def _user(ctx: AppContext, email: str) -> User:
    async with ctx.db.transaction() as db:
        found = await db.scalar(select(User).where(User.email == email))
        assert found is not None
        return found


async def test_deleting_an_account_ends_everything_and_keeps_the_books(
    client: httpx.AsyncClient,
    ctx: AppContext,
    user: ApiUser,
    make_session: MakeSession,
    gateway: RegisteredGateway,
) -> None:
    person = await _user(ctx, user.email)
    current = await make_session(person.id, "basic")
    queued = await make_session(person.id, "premium")
    made = await generate(
        client, Owner(person.id, user.headers), current.id, device_name="Ana's phone"
    )
    assert made.status_code == 200, made.text
    assert len(await desired_peers(client, gateway)) == 1
    async with ctx.db.transaction() as db:
        letter = compose(ctx.settings, "verify_email", email=user.email, url="http://t/v")
        await mail.queue(db, letter, user.email, user_id=person.id)

    wrong = await client.post(
        "/api/account/delete", json={"password": "not it"}, headers=user.headers
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "wrong_password"
    deleted = await client.post(
        "/api/account/delete", json={"password": user.password}, headers=user.headers
    )
    assert deleted.status_code == 204, deleted.text

    assert await desired_peers(client, gateway) == []
    async with ctx.db.transaction() as db:
        sessions = {s.id: s for s in await db.scalars(select(DataSession))}
        assert sessions[current.id].status == "revoked"
        assert sessions[queued.id].status == "revoked"
        assert sessions[current.id].end_reason == "account_deleted"
        (device,) = list(await db.scalars(select(Device)))
        assert device.status == "removed" and device.device_name == "Removed device"
        assert await db.scalar(select(func.count()).select_from(OutgoingMail)) == 0
        purchases = list(await db.scalars(select(Purchase)))
        assert len(purchases) == 2 and {p.user_id for p in purchases} == {person.id}
        row = await db.get(User, person.id)
        assert row is not None and row.is_disabled
        assert row.email == f"deleted-{person.id}@deleted.invalid"
    assert (await client.get("/api/auth/me", headers=user.headers)).status_code == 401
    login = await client.post(
        "/api/auth/login", json={"email": user.email, "password": user.password}
    )
    assert login.status_code == 401
    refreshed = await client.post(
        "/api/auth/refresh", json={"refresh_token": user.tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401
    again = await client.post(
        "/api/auth/register", json={"email": user.email, "password": "a new start 88"}
    )
    assert again.status_code == 202
    fresh = await _user(ctx, user.email)
    assert fresh.id != person.id
