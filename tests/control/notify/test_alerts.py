"""Session alerts by e-mail through a real SMTP server: 80 %, 95 %, data used up, a day
before expiry, expired, next session started; each once per session and alert, with two
workers too; and each person's choices (API and account page)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.deps import AppContext
from kswifi.control.events import InProcessEventBus
from kswifi.control.models import DataSession, SessionAlert, User, utcnow
from kswifi.control.sessions import service as sessions
from kswifi.control.worker import Worker
from tests.conftest import ApiUser
from tests.control.conftest import MakeSession
from tests.mailsink import MailSink, Received

GIB = 1024**3


@pytest.fixture
def settings(settings: Settings, smtp: MailSink) -> Settings:
    return settings.model_copy(
        update={"smtp_url": SecretStr(smtp.url), "email_verification": False}
    )


async def _person(ctx: AppContext, user: ApiUser) -> str:
    async with ctx.db.transaction() as db:
        found = await db.scalar(select(User.id).where(User.email == user.email))
        assert found is not None
        return found


async def _use(ctx: AppContext, session_id: str, num_bytes: int) -> None:
    async with ctx.db.transaction() as db:
        await sessions.record_usage_batch(
            db, ctx.events, deltas=[sessions.UsageDelta(session_id, 0, num_bytes)], now=utcnow()
        )


async def _send(ctx: AppContext, smtp: MailSink, count: int) -> list[Received]:
    before = len(smtp.received)
    worker = Worker(ctx)
    await worker.send_alerts(utcnow())
    await worker.deliver_mail(utcnow())
    received = smtp.wait_for(before + count)[before:]
    await asyncio.sleep(0.1)
    assert len(smtp.received) == before + count, [r.message["Subject"] for r in smtp.received]
    return received


class TestUsageAlerts:
    async def test_80_95_and_used_up_each_once(
        self, ctx: AppContext, smtp: MailSink, user: ApiUser, make_session: MakeSession
    ) -> None:
        session = await make_session(await _person(ctx, user), "premium")  # 5 GB
        await _use(ctx, session.id, 4 * GIB + 100)  # 80 %
        (letter,) = await _send(ctx, smtp, 1)
        assert letter.recipients == [user.email]
        assert letter.message["Subject"] == "You have used 80% of your Premium Session"
        assert "4 GB of 5 GB used" in letter.text
        assert "http://testserver/plans" in letter.text
        await _use(ctx, session.id, 10)  # still past 80 %: nothing new
        assert await _send(ctx, smtp, 0) == []
        await _use(ctx, session.id, GIB * 3 // 4)  # 95 %
        (letter,) = await _send(ctx, smtp, 1)
        assert letter.message["Subject"] == "Only 5% left on your Premium Session"
        await _use(ctx, session.id, GIB)  # used up: the session ends
        (letter,) = await _send(ctx, smtp, 1)
        assert letter.message["Subject"] == "Your Premium Session data is used up"
        assert "buy more at any time" in letter.text

    async def test_two_workers_send_each_alert_once(
        self, ctx: AppContext, smtp: MailSink, user: ApiUser, make_session: MakeSession
    ) -> None:
        owner = await _person(ctx, user)
        made = [await make_session(owner, "premium") for _ in range(6)]
        async with ctx.db.transaction() as db:
            await db.execute(update(DataSession).values(status="active"))
            await sessions.record_usage_batch(
                db,
                ctx.events,
                deltas=[sessions.UsageDelta(s.id, 0, 4 * GIB + 1) for s in made],
                now=utcnow(),
            )
        other = Database(ctx.settings.resolved_database_url)
        try:
            second = AppContext(ctx.settings, other, ctx.secrets, InProcessEventBus())
            now = utcnow()
            handled = await asyncio.gather(
                Worker(ctx).send_alerts(now), Worker(second).send_alerts(now)
            )
        finally:
            await other.dispose()
        assert sum(handled) == 6
        await Worker(ctx).deliver_mail(utcnow())
        assert len(smtp.wait_for(6)) == 6
        await asyncio.sleep(0.2)
        assert len(smtp.received) == 6


class TestTimeAlerts:
    async def test_a_day_before_expiry_then_expired(
        self, ctx: AppContext, smtp: MailSink, user: ApiUser, make_session: MakeSession
    ) -> None:
        session = await make_session(await _person(ctx, user), "premium")  # valid 30 days
        await _use(ctx, session.id, 1)
        worker = Worker(ctx)
        assert await worker.note_expiring_sessions(utcnow()) == 0
        soon = utcnow() + timedelta(hours=20)
        async with ctx.db.transaction() as db:
            await db.execute(
                update(DataSession).where(DataSession.id == session.id).values(expires_at=soon)
            )
        assert await worker.note_expiring_sessions(utcnow()) == 1
        assert await worker.note_expiring_sessions(utcnow()) == 0
        (letter,) = await _send(ctx, smtp, 1)
        assert letter.message["Subject"] == "Your Premium Session expires in a day"
        assert soon.strftime("%d %b %Y, %H:%M UTC") in letter.text
        async with ctx.db.transaction() as db:
            await db.execute(
                update(DataSession)
                .where(DataSession.id == session.id)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        assert await worker.expire_sessions(utcnow()) == 1
        (letter,) = await _send(ctx, smtp, 1)
        assert letter.message["Subject"] == "Your Premium Session has expired"

    async def test_the_next_session_starting_by_itself_is_told(
        self, ctx: AppContext, smtp: MailSink, user: ApiUser, make_session: MakeSession
    ) -> None:
        owner = await _person(ctx, user)
        first = await make_session(owner, "basic")
        queued = await make_session(owner, "ultra")
        assert queued.status == "queued"
        async with ctx.db.transaction() as db:
            row = await sessions.get(db, first.id)
            await sessions.end(db, ctx.events, row, "revoked", "operator", utcnow())
        (letter,) = await _send(ctx, smtp, 1)
        assert letter.message["Subject"] == "Your next session has started"
        assert f"http://testserver/sessions/{queued.id}" in letter.text
        async with ctx.db.transaction() as db:
            kinds = set(await db.scalars(select(SessionAlert.kind)))
        assert kinds == {"next_started"}  # a revoked session is not an alert of its own


class TestChoices:
    async def test_turned_off_alerts_are_noted_but_not_sent(
        self,
        ctx: AppContext,
        smtp: MailSink,
        client: httpx.AsyncClient,
        user: ApiUser,
        make_session: MakeSession,
    ) -> None:
        shown = await client.get("/api/alerts", headers=user.headers)
        assert shown.status_code == 200
        every = {
            "usage_80": True,
            "usage_95": True,
            "data_used_up": True,
            "expiring": True,
            "expired": True,
            "next_started": True,
        }
        assert shown.json() == {"email": every, "push": every}
        changed = await client.put(
            "/api/alerts", json={"email": {"usage_80": False}}, headers=user.headers
        )
        assert changed.status_code == 200 and changed.json()["email"]["usage_80"] is False
        assert changed.json()["email"]["usage_95"] is True
        bad = await client.put("/api/alerts", json={"email": {"nope": True}}, headers=user.headers)
        assert bad.status_code == 422
        unknown_channel = await client.put("/api/alerts", json={"sms": {}}, headers=user.headers)
        assert unknown_channel.status_code == 422
        session = await make_session(await _person(ctx, user), "premium")
        await _use(ctx, session.id, 4 * GIB + 100)
        assert await _send(ctx, smtp, 0) == []
        await _use(ctx, session.id, GIB * 3 // 4)
        (letter,) = await _send(ctx, smtp, 1)
        assert letter.message["Subject"].startswith("Only 5% left")
