"""Send the session alerts the sessions domain noted (`session_alerts`), each once.

The worker claims pending alerts in one transaction (PostgreSQL: `SKIP LOCKED`, so replicas
take different ones), queues what each person keeps on, and marks them handled in the same
transaction: an alert is sent once whatever the number of replicas, and a crash before the
commit leaves it pending. E-mail is queued with a key per session and alert as well, so a
second queueing could not send it twice either.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.errors import Unprocessable
from kswifi.control.mail import service as mail
from kswifi.control.mail.letters import compose, link
from kswifi.control.models import ALERT_KINDS, AlertKind, DataSession, User, utcnow
from kswifi.control.push import service as push
from kswifi.control.sessions import service as sessions
from kswifi.control.users import service as users
from kswifi.logs import get_logger

log = get_logger("kswifi.control.notify")

CHANNELS = ("email", "push")
"""How alerts reach people: e-mail, and Web Push to each browser that turned it on."""

ALERT_LABELS = {
    AlertKind.USAGE_80: "80% of a session's data used",
    AlertKind.USAGE_95: "95% of a session's data used",
    AlertKind.DATA_USED_UP: "A session's data used up",
    AlertKind.EXPIRING: "A day before a session expires",
    AlertKind.EXPIRED: "A session expired",
    AlertKind.NEXT_STARTED: "Your next session has started",
}


def _buy(settings: Settings, _session: DataSession) -> str:
    return link(settings, "/plans")


def _session_page(settings: Settings, session: DataSession) -> str:
    return link(settings, f"/sessions/{session.id}")


# Where tapping a notification leads: the buy page when more data is what helps.
PUSH_TARGETS = {
    AlertKind.USAGE_80: _buy,
    AlertKind.USAGE_95: _buy,
    AlertKind.DATA_USED_UP: _buy,
    AlertKind.EXPIRING: _buy,
    AlertKind.EXPIRED: _buy,
    AlertKind.NEXT_STARTED: _session_page,
}


def _push_body(session: DataSession, kind: str) -> str:
    usage = sessions.usage_text(session.used_bytes, session.data_limit_bytes)
    if kind == AlertKind.NEXT_STARTED:
        return "Your devices draw from it by themselves: nothing to set up."
    return f"{usage}. Tap to buy more: no new setup needed."


def wants(user: User, channel: str, kind: str) -> bool:
    return f"{channel}:{kind}" not in (user.alerts_off or [])


def choices(user: User) -> dict[str, dict[str, bool]]:
    """{channel: {kind: on}} for every channel and alert."""
    return {
        channel: {kind.value: wants(user, channel, kind) for kind in ALERT_KINDS}
        for channel in CHANNELS
    }


async def choose(db: AsyncSession, user: User, wanted: dict[str, dict[str, bool]]) -> User:
    """Keep on what `wanted` turns on; what it leaves out keeps its current choice.
    Unknown channels or alerts are refused (422)."""
    off = set(user.alerts_off or [])
    for channel, kinds in wanted.items():
        if channel not in CHANNELS:
            raise Unprocessable(f"Unknown channel {channel!r}", field=channel)
        for kind, on in kinds.items():
            if kind not in ALERT_KINDS:
                raise Unprocessable(f"Unknown alert {kind!r}", field=f"{channel}.{kind}")
            (off.discard if on else off.add)(f"{channel}:{kind}")
    return await users.set_alerts_off(db, user, off)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%d %b %Y, %H:%M UTC") if moment is not None else ""


def _letter_values(settings: Settings, session: DataSession, kind: str) -> dict[str, object]:
    return {
        "plan_name": session.plan_name,
        "usage": sessions.usage_text(session.used_bytes, session.data_limit_bytes),
        "percent": kind.removeprefix("usage_") if kind.startswith("usage_") else "",
        "expires": _when(session.expires_at),
        "session_url": link(settings, f"/sessions/{session.id}"),
        "plans_url": link(settings, "/plans"),
        "account_url": link(settings, "/account"),
    }


async def send_pending_alerts(
    db: AsyncSession, settings: Settings, *, now: datetime | None = None, limit: int = 200
) -> int:
    """Queue the pending alerts' messages and mark them handled; how many were handled."""
    now = now or utcnow()
    claimed = await sessions.claim_pending_alerts(db, limit)
    people: dict[str, User | None] = {}
    for alert, session in claimed:
        alert.handled_at = now
        if session.user_id not in people:
            people[session.user_id] = await users.find_user(db, session.user_id)
        person = people[session.user_id]
        if person is None or person.is_disabled:
            continue
        kind = AlertKind(alert.kind)
        if not (wants(person, "email", kind) or wants(person, "push", kind)):
            continue
        key = f"alert:{session.id}:{kind}"
        letter = compose(
            settings, f"alert_{kind}", email=person.email, **_letter_values(settings, session, kind)
        )
        if wants(person, "email", kind):
            await mail.queue(db, letter, person.email, user_id=person.id, dedupe_key=key, now=now)
        if wants(person, "push", kind):
            notification = push.Notification(
                title=letter.subject,
                body=_push_body(session, kind),
                url=PUSH_TARGETS[kind](settings, session),
                tag=f"{session.id}:{kind}",
            )
            await push.queue(db, person.id, notification, dedupe_key=key, now=now)
        log.info("session_alert_sent", session_id=session.id, kind=alert.kind)
    await db.flush()
    return len(claimed)
