"""Web Push end to end with a local push service that checks VAPID and decrypts: alerts reach
each subscribed browser once, in the person's chosen channels; a dropped subscription is
forgotten; only known push services are accepted; the VAPID key is kept like the secret key."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from kswifi.control.config import Settings
from kswifi.control.deps import AppContext
from kswifi.control.errors import Unprocessable
from kswifi.control.models import PushMessage, PushSubscription, User, utcnow
from kswifi.control.push import service as push
from kswifi.control.push import vapid
from kswifi.control.sessions import service as sessions
from kswifi.control.worker import Worker
from tests.conftest import ApiUser
from tests.control.conftest import MakeSession
from tests.push_service import PushService, push_service

GIB = 1024**3


@pytest.fixture
def pushes() -> Iterator[PushService]:
    with push_service() as service:
        yield service


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"push_services": "127.0.0.1", "support_email": "help@kswifi.test"}
    )


async def _person(ctx: AppContext, user: ApiUser) -> str:
    async with ctx.db.transaction() as db:
        found = await db.scalar(select(User.id).where(User.email == user.email))
        assert found is not None
        return found


async def _subscribe(ctx: AppContext, user_id: str, pushes: PushService) -> str:
    browser = pushes.new_browser()
    info = browser.subscription()
    async with ctx.db.transaction() as db:
        await push.subscribe(
            db,
            ctx.settings,
            user_id,
            info["endpoint"],
            info["keys"]["p256dh"],
            info["keys"]["auth"],
        )
    return browser.endpoint


async def _use(ctx: AppContext, session_id: str, num_bytes: int) -> None:
    async with ctx.db.transaction() as db:
        await sessions.record_usage_batch(
            db, ctx.events, deltas=[sessions.UsageDelta(session_id, 0, num_bytes)], now=utcnow()
        )


async def test_an_alert_reaches_every_subscribed_browser_once(
    ctx: AppContext, pushes: PushService, user: ApiUser, make_session: MakeSession
) -> None:
    person = await _person(ctx, user)
    phone = await _subscribe(ctx, person, pushes)
    laptop = await _subscribe(ctx, person, pushes)
    session = await make_session(person, "premium")
    await _use(ctx, session.id, 4 * GIB + 100)
    worker = Worker(ctx)
    await worker.send_alerts(utcnow())
    assert await worker.deliver_push(utcnow()) == 2
    delivered = pushes.wait_for(2)
    assert {d.endpoint for d in delivered} == {phone, laptop}
    for item in delivered:
        assert item.message == {
            "title": "You have used 80% of your Premium Session",
            "body": "4 GB of 5 GB used. Tap to buy more: no new setup needed.",
            "url": "http://testserver/plans",
            "tag": f"{session.id}:usage_80",
        }
        assert item.claims["sub"] == "mailto:help@kswifi.test"
        assert item.claims["exp"] > utcnow().timestamp()
    assert pushes.refused == []
    await _use(ctx, session.id, 10)
    await worker.send_alerts(utcnow())
    assert await worker.deliver_push(utcnow()) == 0  # nothing new: nothing sent again
    await asyncio.sleep(0.1)
    assert len(pushes.delivered) == 2


async def test_the_push_channel_follows_the_persons_choice(
    ctx: AppContext,
    client: httpx.AsyncClient,
    pushes: PushService,
    user: ApiUser,
    make_session: MakeSession,
) -> None:
    person = await _person(ctx, user)
    await _subscribe(ctx, person, pushes)
    changed = await client.put(
        "/api/alerts", json={"push": {"usage_80": False}}, headers=user.headers
    )
    assert changed.status_code == 200 and changed.json()["push"]["usage_80"] is False
    assert changed.json()["email"]["usage_80"] is True
    session = await make_session(person, "premium")
    await _use(ctx, session.id, 4 * GIB + 100)
    worker = Worker(ctx)
    await worker.send_alerts(utcnow())
    assert await worker.deliver_push(utcnow()) == 0
    await _use(ctx, session.id, GIB)  # past 95 % and used up at once: "used up" alone
    await worker.send_alerts(utcnow())
    assert await worker.deliver_push(utcnow()) == 1
    (item,) = pushes.wait_for(1)
    assert item.message["title"] == "Your Premium Session data is used up"


async def test_a_subscription_the_push_service_dropped_is_forgotten(
    ctx: AppContext, pushes: PushService, user: ApiUser, make_session: MakeSession
) -> None:
    person = await _person(ctx, user)
    await _subscribe(ctx, person, pushes)
    pushes.answers = [410]
    session = await make_session(person, "premium")
    await _use(ctx, session.id, 4 * GIB + 100)
    worker = Worker(ctx)
    await worker.send_alerts(utcnow())
    assert await worker.deliver_push(utcnow()) == 0
    async with ctx.db.transaction() as db:
        assert await db.scalar(select(func.count()).select_from(PushSubscription)) == 0
        assert await db.scalar(select(func.count()).select_from(PushMessage)) == 0


async def test_only_known_push_services_are_accepted(ctx: AppContext) -> None:
    real = ctx.settings.model_copy(update={"push_services": Settings().push_services})
    assert push.endpoint_allowed(real, "https://fcm.googleapis.com/fcm/send/abc")
    assert push.endpoint_allowed(real, "https://updates.push.services.mozilla.com/wpush/v2/x")
    assert push.endpoint_allowed(real, "https://web.push.apple.com/QGx")
    for bad in (
        "http://fcm.googleapis.com/fcm/send/abc",  # not https
        "https://169.254.169.254/latest/meta-data",
        "https://evil.example/fcm.googleapis.com",
        "https://fcm.googleapis.com.evil.example/x",
        "http://127.0.0.1:8000/api/admin/users",  # loopback, not listed
    ):
        assert not push.endpoint_allowed(real, bad), bad
    async with ctx.db.transaction() as db:
        with pytest.raises(Unprocessable):
            await push.subscribe(db, real, "u", "https://10.0.0.5/push", "k" * 87, "a" * 22)


def test_the_vapid_key_is_made_once_and_kept_private(settings: Settings) -> None:
    key = vapid.public_key(settings)
    path = settings.data_dir / vapid.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert vapid.public_key(settings) == key
    assert len(key) == 87  # 65 bytes, base64url without padding
