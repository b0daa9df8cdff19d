"""Queueing and delivering e-mail.

A request that decides to write to someone calls `queue` inside its own transaction: the
message is stored with the rest of what the request did (or not at all), and nothing waits on
a mail server. The worker delivers: `claim_due` marks a batch as its own for `CLAIM_SECONDS`
(committed), the worker sends each message, then `record_sent` / `record_failure` settle it,
only while its claim holds. Two workers never claim the same message; a worker killed
mid-send leaves a claim that lapses, and the message is sent once more by whoever claims it
next. The one window left is a crash after the server accepted a message and before its
`sent` commit: then it goes out twice, with the same Message-ID, which mail clients use to
fold duplicates together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control import outbox
from kswifi.control.config import Settings
from kswifi.control.errors import NotFound
from kswifi.control.mail import repository
from kswifi.control.mail.letters import Letter
from kswifi.control.models import MailStatus, OutgoingMail, new_id, utcnow
from kswifi.logs import get_logger

log = get_logger("kswifi.control.mail")

CLAIM_SECONDS = 120.0
KEPT_DAYS = 30


async def queue(
    db: AsyncSession,
    letter: Letter,
    to: str,
    *,
    user_id: str | None = None,
    dedupe_key: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Queue `letter` for `to`; False when a message with `dedupe_key` was queued before."""
    now = now or utcnow()
    queued = await repository.insert(
        db,
        {
            "id": new_id(),
            "kind": letter.kind,
            "dedupe_key": dedupe_key,
            "user_id": user_id,
            "to_address": to,
            "subject": letter.subject,
            "body_text": letter.text,
            "body_html": letter.html,
            "status": MailStatus.QUEUED,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    )
    if queued:
        log.info("mail_queued", kind=letter.kind, user_id=user_id)
    return queued


def message_of(settings: Settings, mail: OutgoingMail) -> EmailMessage:
    """The MIME message for a queued mail: plain text with an HTML alternative. Its
    Message-ID is derived from the mail's id, so a re-send is recognisably the same."""
    _, sender = parseaddr(settings.mail_from)
    domain = sender.rpartition("@")[2] or "localhost"
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = mail.to_address
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(mail.created_at)
    message["Message-ID"] = f"<{mail.id}@{domain}>"
    message["X-KSWiFi-Mail-Id"] = mail.id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(mail.body_text)
    message.add_alternative(mail.body_html, subtype="html")
    return message


@dataclass(frozen=True)
class Outgoing:
    id: str
    kind: str
    attempts: int
    message: EmailMessage


@dataclass(frozen=True)
class Claim:
    token: str
    items: Sequence[Outgoing] = field(default_factory=tuple)


async def claim_due(
    db: AsyncSession,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int = 20,
    claim_seconds: float = CLAIM_SECONDS,
) -> Claim:
    """Due messages, now this caller's for `claim_seconds`; commit before sending."""
    now = now or utcnow()
    token = new_id()
    claimed = await repository.claim(db, token, now, now + timedelta(seconds=claim_seconds), limit)
    items = [Outgoing(m.id, m.kind, m.attempts, message_of(settings, m)) for m in claimed]
    return Claim(token, items)


async def record_sent(db: AsyncSession, claim: Claim, item: Outgoing) -> bool:
    done = await repository.finish(
        db,
        item.id,
        claim.token,
        {"status": MailStatus.SENT, "sent_at": utcnow(), "last_error": None},
    )
    if done:
        log.info("mail_sent", mail_id=item.id, kind=item.kind, attempts=item.attempts)
    return done


async def record_failure(
    db: AsyncSession, claim: Claim, item: Outgoing, error: str, *, now: datetime | None = None
) -> bool:
    """Try again later (backing off), or give up after `MAX_ATTEMPTS`."""
    values, give_up = outbox.after_failure(item.attempts, error, now or utcnow())
    done = await repository.finish(db, item.id, claim.token, values)
    if done:
        log.warning(
            "mail_failed" if give_up else "mail_retry",
            mail_id=item.id,
            kind=item.kind,
            attempts=item.attempts,
            error=error[:200],
        )
    return done


async def recent(
    db: AsyncSession, *, limit: int = 50, offset: int = 0, status: str | None = None
) -> Sequence[OutgoingMail]:
    """Newest first (the operator console's mail log)."""
    return await repository.recent(db, limit=limit, offset=offset, status=status)


async def get(db: AsyncSession, mail_id: str) -> OutgoingMail:
    mail = await repository.get(db, mail_id)
    if mail is None:
        raise NotFound("No such message")
    return mail


async def to_user(db: AsyncSession, user_id: str) -> Sequence[OutgoingMail]:
    """Every message queued for a person, oldest first."""
    return await repository.of_user(db, user_id)


async def forget_user(db: AsyncSession, user_id: str) -> int:
    return await repository.forget_user(db, user_id)


async def purge_old(db: AsyncSession, now: datetime | None = None) -> int:
    """Settled messages older than `KEPT_DAYS` are deleted (for the periodic worker)."""
    return await repository.purge_sent_before(db, (now or utcnow()) - timedelta(days=KEPT_DAYS))
