"""Messages the control plane sends outside the page, queued for the worker: e-mail to people,
signed webhooks to operators."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kswifi.control.models.base import Base, new_id, utcnow


class MailStatus(StrEnum):
    QUEUED = "queued"  # waiting for `next_attempt_at`
    SENDING = "sending"  # claimed by a worker until `claimed_until`
    SENT = "sent"
    FAILED = "failed"  # gave up after the last attempt


class OutgoingMail(Base):
    """One e-mail, queued by the request that decided to send it and delivered by the worker.

    `dedupe_key` (unique) makes "send this once" a database fact: a second request or replica
    that decides the same thing (the 80 % alert of one session) inserts nothing.
    """

    __tablename__ = "outgoing_mail"
    __table_args__ = (Index("ix_outgoing_mail_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(40))
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    user_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=MailStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEvent(Base):
    """Something operators hear about (a gateway went offline, a payment failed…), recorded
    by the transaction that made it happen; the worker fans it out to the configured URLs
    (`fanned_out_at` set then, once, by whichever replica gets there first)."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(40), index=True)
    payload: Mapped[str] = mapped_column(Text)  # JSON of the event's `data`
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    fanned_out_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class WebhookDelivery(Base):
    """One event to one URL: signed, retried with backoff, settled once (like `OutgoingMail`)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        UniqueConstraint("event_id", "url"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class PushSubscription(Base):
    """A browser's Web Push subscription (the installed web app on one device)."""

    __tablename__ = "push_subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    endpoint: Mapped[str] = mapped_column(String(2048), unique=True)
    p256dh: Mapped[str] = mapped_column(String(128))
    auth: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sent_at: Mapped[datetime | None] = mapped_column(default=None)


class PushMessage(Base):
    """One notification to one subscription, queued and delivered like `OutgoingMail`."""

    __tablename__ = "push_messages"
    __table_args__ = (Index("ix_push_messages_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    subscription_id: Mapped[str] = mapped_column(
        ForeignKey("push_subscriptions.id", ondelete="CASCADE"), index=True
    )
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    payload: Mapped[str] = mapped_column(Text)  # JSON: title, body, url, tag
    status: Mapped[str] = mapped_column(String(16), default=MailStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
