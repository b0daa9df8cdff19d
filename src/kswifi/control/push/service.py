"""Web Push: the person's browsers subscribe; notifications are queued per subscription in the
caller's transaction (keyed: once), and the worker encrypts and sends them (RFC 8291, through
pywebpush) signed with the server's VAPID key. A push service that answers 404 or 410 has
dropped the subscription: it is deleted. Other failures are retried like e-mail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control import outbox
from kswifi.control.config import Settings
from kswifi.control.errors import Unprocessable
from kswifi.control.models import MailStatus, PushSubscription, new_id, utcnow
from kswifi.control.push import repository
from kswifi.logs import get_logger

log = get_logger("kswifi.control.push")

CLAIM_SECONDS = 60.0
TTL_SECONDS = 86_400


@dataclass(frozen=True)
class Notification:
    title: str
    body: str
    url: str
    tag: str

    def to_json(self) -> str:
        return json.dumps(
            {"title": self.title, "body": self.body, "url": self.url, "tag": self.tag},
            sort_keys=True,
        )


def endpoint_allowed(settings: Settings, endpoint: str) -> bool:
    """Only the push services in `KSWIFI_PUSH_SERVICES`, over https (the worker posts to
    these URLs: anything else would let a person aim it at hosts it can reach). Plain http is
    accepted only for a loopback host listed there (a local push service, in tests)."""
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    if not host:
        return False
    allowed = False
    for pattern in (p.strip().lower() for p in settings.push_services.split(",")):
        if pattern.startswith("*."):
            allowed = allowed or host.endswith(pattern[1:])
        elif pattern:
            allowed = allowed or host == pattern
    if not allowed:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and host in ("127.0.0.1", "::1", "localhost")


async def subscribe(
    db: AsyncSession, settings: Settings, user_id: str, endpoint: str, p256dh: str, auth: str
) -> None:
    """Keep a browser's subscription for `user_id` (422 unless it points at a known push
    service)."""
    if not endpoint_allowed(settings, endpoint):
        raise Unprocessable(
            "That push service is not one this site sends notifications through",
            field="endpoint",
        )
    await repository.upsert_subscription(
        db,
        {
            "id": new_id(),
            "user_id": user_id,
            "endpoint": endpoint,
            "p256dh": p256dh,
            "auth": auth,
            "created_at": utcnow(),
        },
    )
    log.info("push_subscribed", user_id=user_id)


async def unsubscribe(db: AsyncSession, user_id: str, endpoint: str) -> bool:
    return await repository.delete_subscription(db, endpoint, user_id) > 0


async def forget_user(db: AsyncSession, user_id: str) -> int:
    """Every browser subscription of a person, and what was queued for them, goes."""
    return await repository.delete_subscriptions_of(db, user_id)


async def subscriptions(db: AsyncSession, user_id: str) -> Sequence[PushSubscription]:
    return await repository.subscriptions_of(db, user_id)


async def queue(
    db: AsyncSession,
    user_id: str,
    notification: Notification,
    *,
    dedupe_key: str,
    now: datetime | None = None,
) -> int:
    """Queue `notification` for each of the person's subscriptions; how many."""
    now = now or utcnow()
    targets = await repository.subscriptions_of(db, user_id)
    await repository.insert_messages(
        db,
        [
            {
                "id": new_id(),
                "subscription_id": target.id,
                "dedupe_key": f"{dedupe_key}:{target.id}",
                "payload": notification.to_json(),
                "status": MailStatus.QUEUED,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for target in targets
        ],
    )
    return len(targets)


@dataclass(frozen=True)
class Outgoing:
    id: str
    subscription_id: str
    attempts: int
    subscription: dict[str, object]
    payload: str


@dataclass(frozen=True)
class Claim:
    token: str
    items: Sequence[Outgoing]


async def claim_due(
    db: AsyncSession,
    *,
    now: datetime | None = None,
    limit: int = 50,
    claim_seconds: float = CLAIM_SECONDS,
) -> Claim:
    now = now or utcnow()
    token = new_id()
    claimed = await repository.claim(db, token, now, now + timedelta(seconds=claim_seconds), limit)
    return Claim(
        token,
        [
            Outgoing(
                m.id,
                s.id,
                m.attempts,
                {"endpoint": s.endpoint, "keys": {"p256dh": s.p256dh, "auth": s.auth}},
                m.payload,
            )
            for m, s in claimed
        ],
    )


async def record_sent(db: AsyncSession, claim: Claim, item: Outgoing) -> bool:
    values = {"status": MailStatus.SENT, "sent_at": utcnow(), "last_error": None}
    return await repository.finish(db, item.id, claim.token, values)


async def record_gone(db: AsyncSession, claim: Claim, item: Outgoing) -> None:
    """The push service dropped the subscription (404/410): forget it and its messages."""
    await repository.delete_subscription_by_id(db, item.subscription_id)
    log.info("push_subscription_gone", subscription_id=item.subscription_id)


async def record_failure(
    db: AsyncSession, claim: Claim, item: Outgoing, error: str, *, now: datetime | None = None
) -> bool:
    values, give_up = outbox.after_failure(item.attempts, error, now or utcnow())
    done = await repository.finish(db, item.id, claim.token, values)
    if done:
        log.warning("push_failed" if give_up else "push_retry", error=error[:200])
    return done
