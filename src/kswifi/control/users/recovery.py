"""What reaches a person by e-mail about their account: sign-up that reveals nothing,
address confirmation, password reset, password and e-mail changes.

Every link carries a single-use token stored only as a hash (`account_tokens`). Answers never
tell whether an address has an account: sign-up and reset requests answer the same either
way, and the difference goes to the address's owner by e-mail. Mail is queued in the
request's transaction (`kswifi.control.mail`), so nothing waits on a mail server.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.errors import BadRequest, TooManyRequests, Unprocessable
from kswifi.control.mail import service as mail
from kswifi.control.mail.letters import compose, link
from kswifi.control.models import AccountToken, TokenPurpose, User, new_id
from kswifi.control.security import (
    SecretBox,
    hash_password,
    hash_token,
    new_opaque_token,
    utcnow,
    verify_password,
)
from kswifi.control.users import repository, service
from kswifi.control.users.passwords import check_password
from kswifi.control.users.ratelimit import AuthRateLimits, account_key
from kswifi.control.users.schemas import TokenOut
from kswifi.logs import get_logger

log = get_logger("kswifi.control.users")

RESET_MINUTES = 30
VERIFY_HOURS = 48
CHANGE_EMAIL_HOURS = 24

SIGNED_UP = "Check your e-mail: we have sent {email} a message to finish setting up your account."
RESET_REQUESTED = (
    "If an account exists for {email}, we have sent it a link to choose a new password. "
    f"The link works once, for {RESET_MINUTES} minutes."
)


class InvalidLink(BadRequest):
    code = "invalid_token"


def _link_refused() -> InvalidLink:
    return InvalidLink("This link has expired or was already used. Ask for a new one.")


async def _mint(
    db: AsyncSession,
    user: User,
    purpose: TokenPurpose,
    ttl: timedelta,
    now: datetime,
    new_email: str | None = None,
) -> str:
    token = new_opaque_token()
    await repository.add_account_token(
        db,
        AccountToken(
            id=new_id(),
            user_id=user.id,
            purpose=purpose,
            token_hash=hash_token(token),
            new_email=new_email,
            created_at=now,
            expires_at=now + ttl,
        ),
    )
    return token


async def _usable(
    db: AsyncSession, token: str, purpose: TokenPurpose, now: datetime
) -> AccountToken:
    """The token's row (locked); InvalidLink when unknown, spent or expired."""
    row = await repository.get_account_token(db, hash_token(token), purpose)
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise _link_refused()
    return row


async def _spend(
    db: AsyncSession, token: str, purpose: TokenPurpose, now: datetime
) -> AccountToken:
    """The token's row, now spent (see `_usable`)."""
    row = await _usable(db, token, purpose, now)
    row.used_at = now
    return row


async def _queue(
    db: AsyncSession,
    settings: Settings,
    user: User,
    kind: str,
    to: str | None = None,
    **values: object,
) -> None:
    letter = compose(settings, kind, email=to or user.email, **values)
    await mail.queue(db, letter, to or user.email, user_id=user.id)


# --- sign-up ----------------------------------------------------------------------------------


async def sign_up(
    db: AsyncSession,
    settings: Settings,
    limits: AuthRateLimits,
    address: str,
    email: str,
    password: str,
    *,
    now: datetime | None = None,
) -> str:
    """Create an account, answering the same whether or not the address had one.

    A new account is sent a confirmation link (it can log in once it is followed, when
    `settings.verify_email`; at once otherwise). An existing one is told, by e-mail, that
    someone tried to sign up with it. Refused (429) past the sign-ups one address may make;
    bad addresses and weak passwords are refused (422) before anything is looked up.
    """
    now = now or utcnow()
    wait = limits.register_by_address.hit(address)
    if wait is not None:
        raise TooManyRequests("Too many sign-ups from this address; try again shortly", wait)
    normalized = service.normalize_email(email)
    check_password(password, normalized)
    existing = await repository.get_user_by_email(db, normalized)
    if existing is not None:
        hash_password(password)  # the same work as a new account: timing tells nothing
        if limits.mail_by_account.hit(account_key(normalized)) is None:
            await _queue(
                db,
                settings,
                existing,
                "account_exists",
                login_url=link(settings, "/login"),
                reset_url=link(settings, "/password-reset"),
            )
        log.info("sign_up_existing_address", user_id=existing.id)
        return SIGNED_UP.format(email=normalized)
    try:
        user = await service.register(db, normalized, password, verified=not settings.verify_email)
    except service.EmailTaken:  # a concurrent sign-up won the race: the same answer
        return SIGNED_UP.format(email=normalized)
    if settings.verify_email:
        await send_verification(db, settings, user, now=now)
    return SIGNED_UP.format(email=normalized)


async def send_verification(
    db: AsyncSession, settings: Settings, user: User, *, now: datetime | None = None
) -> None:
    now = now or utcnow()
    token = await _mint(db, user, TokenPurpose.VERIFY_EMAIL, timedelta(hours=VERIFY_HOURS), now)
    await _queue(db, settings, user, "verify_email", url=link(settings, f"/verify-email/{token}"))


async def resend_verification(
    db: AsyncSession,
    settings: Settings,
    limits: AuthRateLimits,
    address: str,
    email: str,
    *,
    now: datetime | None = None,
) -> None:
    """A new confirmation link for an unconfirmed account; silently nothing otherwise."""
    wait = limits.reset_by_address.hit(address)
    if wait is not None:
        raise TooManyRequests("Too many requests from this address; try again shortly", wait)
    user = await repository.get_user_by_email(db, service.lookup_email(email))
    if user is None or user.is_disabled or user.email_verified_at is not None:
        return
    if limits.mail_by_account.hit(account_key(user.email)) is None:
        await send_verification(db, settings, user, now=now)


async def verify_email(db: AsyncSession, token: str, *, now: datetime | None = None) -> User:
    now = now or utcnow()
    row = await _spend(db, token, TokenPurpose.VERIFY_EMAIL, now)
    user = await service.get_user(db, row.user_id)
    if user.email_verified_at is None:
        user.email_verified_at = now
    log.info("email_verified", user_id=user.id)
    return user


# --- password reset ---------------------------------------------------------------------------


async def request_password_reset(
    db: AsyncSession,
    settings: Settings,
    limits: AuthRateLimits,
    address: str,
    email: str,
    *,
    now: datetime | None = None,
) -> str:
    """E-mail a reset link if the address has an active account; the answer is the same
    either way. An address may ask a few times a minute (429 beyond); an account gets at most
    a few messages an hour, silently (no mail-bombing through this form)."""
    now = now or utcnow()
    wait = limits.reset_by_address.hit(address)
    if wait is not None:
        raise TooManyRequests("Too many requests from this address; try again shortly", wait)
    lookup = service.lookup_email(email)
    user = await repository.get_user_by_email(db, lookup)
    if (
        user is not None
        and not user.is_disabled
        and limits.mail_by_account.hit(account_key(user.email)) is None
    ):
        token = await _mint(
            db, user, TokenPurpose.PASSWORD_RESET, timedelta(minutes=RESET_MINUTES), now
        )
        await _queue(
            db,
            settings,
            user,
            "password_reset",
            url=link(settings, f"/password-reset/{token}"),
            minutes=RESET_MINUTES,
        )
        log.info("password_reset_requested", user_id=user.id)
    return RESET_REQUESTED.format(email=lookup)


async def reset_password(
    db: AsyncSession, settings: Settings, token: str, password: str, *, now: datetime | None = None
) -> User:
    """Set a new password with an e-mailed link: every login of the account ends, every
    other reset link stops working, and the address counts as confirmed."""
    now = now or utcnow()
    row = await _usable(db, token, TokenPurpose.PASSWORD_RESET, now)
    user = await service.get_user(db, row.user_id)
    check_password(password, user.email)  # refused: the link stays usable for a better one
    await repository.spend_account_tokens(db, user.id, TokenPurpose.PASSWORD_RESET, now)
    await _set_password(db, settings, user, password, now)
    if user.email_verified_at is None:
        user.email_verified_at = now
    log.info("password_reset", user_id=user.id)
    return user


async def _set_password(
    db: AsyncSession, settings: Settings, user: User, password: str, now: datetime
) -> None:
    user.password_hash = hash_password(password)
    await repository.revoke_user_tokens(db, user.id, now)
    await _queue(
        db, settings, user, "password_changed", reset_url=link(settings, "/password-reset")
    )


# --- changes a logged-in person makes ----------------------------------------------------------


class WrongPassword(Unprocessable):
    code = "wrong_password"


def confirm_current(user: User, password: str) -> None:
    if not verify_password(user.password_hash, password):
        raise WrongPassword("Your current password is not right.", field="current_password")


async def change_password(
    db: AsyncSession,
    secrets: SecretBox,
    settings: Settings,
    user: User,
    current_password: str,
    new_password: str,
    *,
    now: datetime | None = None,
) -> TokenOut:
    """Change the password: every login ends (other devices must log in again) and this one
    gets a fresh pair of tokens."""
    now = now or utcnow()
    confirm_current(user, current_password)
    check_password(new_password, user.email)
    await _set_password(db, settings, user, new_password, now)
    log.info("password_changed", user_id=user.id)
    return await service.issue_tokens(db, secrets, settings, user, now=now)


async def request_email_change(
    db: AsyncSession,
    settings: Settings,
    user: User,
    password: str,
    new_email: str,
    *,
    now: datetime | None = None,
) -> str:
    """Send a confirmation link to the new address; the change happens when it is opened.
    The answer is the same whether or not the new address already has an account."""
    now = now or utcnow()
    confirm_current(user, password)
    normalized = service.normalize_email(new_email)
    if normalized == user.email:
        raise Unprocessable("That is already your e-mail address.", field="email")
    if await repository.get_user_by_email(db, normalized) is None:
        token = await _mint(
            db,
            user,
            TokenPurpose.CHANGE_EMAIL,
            timedelta(hours=CHANGE_EMAIL_HOURS),
            now,
            new_email=normalized,
        )
        await _queue(
            db,
            settings,
            user,
            "change_email",
            to=normalized,
            old_email=user.email,
            url=link(settings, f"/verify-email/{token}?change=1"),
        )
    return f"We have sent a link to {normalized}. Your address changes when you open it."


async def confirm_email_change(
    db: AsyncSession, settings: Settings, token: str, *, now: datetime | None = None
) -> User:
    now = now or utcnow()
    row = await _spend(db, token, TokenPurpose.CHANGE_EMAIL, now)
    user = await service.get_user(db, row.user_id)
    assert row.new_email is not None
    if await repository.get_user_by_email(db, row.new_email) is not None:
        raise _link_refused()
    old = user.email
    user.email = row.new_email
    user.email_verified_at = now
    await _queue(db, settings, user, "email_changed", to=old, new_email=row.new_email)
    log.info("email_changed", user_id=user.id)
    return user


async def purge_expired_tokens(db: AsyncSession, *, now: datetime | None = None) -> int:
    return await repository.delete_account_tokens_expired_before(
        db, (now or utcnow()) - timedelta(days=1)
    )
