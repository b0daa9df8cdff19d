"""Deleting an account.

Everything of the person's that works stops (sessions revoked, devices removed from their
gateways, logins ended), and what identifies them goes (e-mail address, password, device
names, the e-mail sent to them, their browsers' push subscriptions). Purchases stay, for the
books: they refer to the account's anonymous row by id only.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.events import EventBus
from kswifi.control.mail import service as mail
from kswifi.control.models import User, utcnow
from kswifi.control.profiles import service as profiles
from kswifi.control.push import service as push
from kswifi.control.sessions import service as sessions
from kswifi.control.users import recovery
from kswifi.control.users import service as users
from kswifi.logs import get_logger

log = get_logger("kswifi.control.accounts")

REASON = "account_deleted"


async def delete_account(
    db: AsyncSession, bus: EventBus, user: User, password: str, *, now: datetime | None = None
) -> None:
    """Delete `user`'s account after checking their password (422 `wrong_password`)."""
    now = now or utcnow()
    recovery.confirm_current(user, password)
    removed = await profiles.remove_all_profiles(db, bus, user_id=user.id, now=now)
    ended = await sessions.end_all_for_user(db, bus, user.id, REASON, now)
    forgotten = await mail.forget_user(db, user.id)
    await push.forget_user(db, user.id)
    await users.anonymise(db, user, now)
    log.info(
        "account_deleted",
        user_id=user.id,
        devices=removed,
        sessions=len(ended),
        messages=forgotten,
    )
