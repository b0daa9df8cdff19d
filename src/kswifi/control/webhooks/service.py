"""Operator webhooks.

Where something happens, `record` adds an event to the same transaction (no URL needed: the
worker reads them from the settings it runs with). The worker fans each event out once, to
every configured URL, then delivers like e-mail: claimed for a while, POSTed outside any
transaction, settled while the claim holds; a non-2xx answer or no answer is retried with
backoff (`kswifi.control.retry`), and every attempt's outcome is kept for the console.

A delivery is a POST of `{"id", "type", "created_at", "data"}` with headers `KSWiFi-Event-Id`
(the same on every retry: receivers drop ids they have seen), `KSWiFi-Event-Type` and
`KSWiFi-Signature` (see `signing`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control import outbox
from kswifi.control.config import Settings
from kswifi.control.models import DeliveryStatus, WebhookDelivery, WebhookEvent, new_id, utcnow
from kswifi.control.webhooks import repository
from kswifi.logs import get_logger

log = get_logger("kswifi.control.webhooks")

CLAIM_SECONDS = 60.0
KEPT_DAYS = 30

EVENT_TYPES = (
    "gateway.offline",
    "gateway.online",
    "payment.failed",
    "purchase.refunded",
    "purchase.disputed",
    "session.ended",
)


def record(
    db: AsyncSession, event_type: str, data: dict[str, Any], *, now: datetime | None = None
) -> None:
    """Note an event for operators in the caller's transaction."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event_type!r}")
    repository.add_event(
        db,
        WebhookEvent(
            id=new_id(),
            type=event_type,
            payload=json.dumps(data, sort_keys=True, default=str),
            created_at=now or utcnow(),
        ),
    )


async def fan_out(
    db: AsyncSession, settings: Settings, *, now: datetime | None = None, limit: int = 500
) -> int:
    """Turn new events into one delivery per configured URL (none configured: the events are
    kept for the log and nothing is sent)."""
    now = now or utcnow()
    events = await repository.claim_unfanned(db, now, limit)
    await repository.add_deliveries(
        db,
        [
            {
                "id": new_id(),
                "event_id": event.id,
                "url": url,
                "status": DeliveryStatus.QUEUED,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for event in events
            for url in settings.webhook_url_list
        ],
    )
    return len(events)


@dataclass(frozen=True)
class Outgoing:
    id: str
    url: str
    event_id: str
    event_type: str
    attempts: int
    body: bytes


@dataclass(frozen=True)
class Claim:
    token: str
    items: Sequence[Outgoing]


def body_of(event: WebhookEvent) -> bytes:
    document = {
        "id": event.id,
        "type": event.type,
        "created_at": event.created_at.isoformat(),
        "data": json.loads(event.payload),
    }
    return json.dumps(document, sort_keys=True).encode()


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
        [Outgoing(d.id, d.url, e.id, e.type, d.attempts, body_of(e)) for d, e in claimed],
    )


async def record_delivered(
    db: AsyncSession, claim: Claim, item: Outgoing, status_code: int
) -> bool:
    done = await repository.finish(
        db,
        item.id,
        claim.token,
        {
            "status": DeliveryStatus.DELIVERED,
            "delivered_at": utcnow(),
            "last_status_code": status_code,
            "last_error": None,
        },
    )
    if done:
        log.info(
            "webhook_delivered", event_type=item.event_type, url=item.url, attempts=item.attempts
        )
    return done


async def record_failure(
    db: AsyncSession,
    claim: Claim,
    item: Outgoing,
    error: str,
    status_code: int | None = None,
    *,
    now: datetime | None = None,
) -> bool:
    values, give_up = outbox.after_failure(item.attempts, error, now or utcnow())
    values["last_status_code"] = status_code
    done = await repository.finish(db, item.id, claim.token, values)
    if done:
        log.warning(
            "webhook_failed" if give_up else "webhook_retry",
            event_type=item.event_type,
            url=item.url,
            attempts=item.attempts,
            error=error[:200],
        )
    return done


async def recent(
    db: AsyncSession, *, limit: int = 50, offset: int = 0, status: str | None = None
) -> list[tuple[WebhookDelivery, WebhookEvent]]:
    """Newest first, with their events (the console's delivery log)."""
    return await repository.recent(db, limit=limit, offset=offset, status=status)


async def purge_old(db: AsyncSession, now: datetime | None = None) -> int:
    return await repository.purge_before(db, (now or utcnow()) - timedelta(days=KEPT_DAYS))
