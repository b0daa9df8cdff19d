"""Business rules of the users domain: accounts, credentials and refresh-token rotation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.config import Settings
from kswifi.control.errors import Conflict, NotFound, TooManyRequests, Unauthorized, Unprocessable
from kswifi.control.models import RefreshToken, User
from kswifi.control.models.base import new_id
from kswifi.control.security import (
    SecretBox,
    hash_password,
    hash_token,
    new_opaque_token,
    utcnow,
    verify_password,
)
from kswifi.control.users import repository
from kswifi.control.users.passwords import check_password
from kswifi.control.users.ratelimit import AuthRateLimits
from kswifi.control.users.schemas import TokenOut
from kswifi.logs import get_logger

log = get_logger("kswifi.control.users")

WRONG_CREDENTIALS = "Wrong email or password"
# With e-mail verification on, an account not yet confirmed is refused with the same words as a
# wrong password (anything else would tell who has an account), so they cover both.
WRONG_OR_UNCONFIRMED = "Wrong email or password. New here? Open the link we e-mailed you first."


class EmailTaken(Conflict):
    code = "email_taken"


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"


class InvalidRefreshToken(Unauthorized):
    code = "invalid_refresh_token"


class RefreshTokenReused(InvalidRefreshToken):
    """A spent or revoked refresh token came back: its whole family has been revoked.

    The revocation is pending in the session when this is raised; the caller must commit
    before answering, or a thief could simply retry.
    """


def normalize_email(email: str) -> str:
    """The stored form of an address: validated, then lower-cased (unique ignoring case)."""
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise Unprocessable(f"That email address is not valid: {exc}", field="email") from exc


def lookup_email(email: str) -> str:
    """Lower-cased for lookups; never raises, so a malformed login is just a failed login."""
    try:
        return normalize_email(email)
    except Unprocessable:
        return email.strip().lower()


async def register(
    db: AsyncSession, email: str, password: str, *, is_admin: bool = False, verified: bool = True
) -> User:
    """Create an account. EmailTaken (409) if the address exists in any letter case (for
    operators, whose accounts count as `verified`; people sign up through `recovery.sign_up`,
    which never tells)."""
    now = utcnow()
    normalized = normalize_email(email)
    check_password(password, normalized)
    if await repository.get_user_by_email(db, normalized) is not None:
        raise EmailTaken("An account with this email already exists")
    user = User(
        id=new_id(),
        email=normalized,
        password_hash=hash_password(password),
        is_admin=is_admin,
        is_disabled=False,
        created_at=now,
        email_verified_at=now if verified else None,
    )
    if not await repository.insert_user(db, user):
        raise EmailTaken("An account with this email already exists")
    log.info("user_registered", user_id=user.id, is_admin=is_admin)
    return user


async def create_admin(db: AsyncSession, email: str, password: str) -> User:
    """An operator account (the console and admin API need `is_admin`)."""
    return await register(db, email, password, is_admin=True)


async def authenticate(
    db: AsyncSession, email: str, password: str, *, require_verified: bool = False
) -> User:
    """The account these credentials open; InvalidCredentials (401) otherwise.

    Unknown email, wrong password and (with `require_verified`) an address not yet confirmed
    give the same answer in about the same time.
    """
    user = await repository.get_user_by_email(db, lookup_email(email))
    # Verify first, even for an unknown email (against a dummy hash), so timing tells nothing.
    if not verify_password(user.password_hash if user else None, password) or user is None:
        raise InvalidCredentials(WRONG_OR_UNCONFIRMED if require_verified else WRONG_CREDENTIALS)
    if require_verified and user.email_verified_at is None:
        raise InvalidCredentials(WRONG_OR_UNCONFIRMED)
    if user.is_disabled:
        raise Unauthorized("The account is not active")
    return user


async def find_user(db: AsyncSession, user_id: str) -> User | None:
    return await repository.get_user(db, user_id)


async def set_alerts_off(db: AsyncSession, user: User, off: set[str]) -> User:
    """Turn off exactly these "channel:kind" alerts (all others on)."""
    user.alerts_off = sorted(off)
    await db.flush()
    return user


async def anonymise(db: AsyncSession, user: User, now: datetime) -> None:
    """Remove what identifies a person from their account row, which stays (anonymous) for
    the purchases that refer to it; it can never log in again."""
    user.email = f"deleted-{user.id}@deleted.invalid"
    user.password_hash = hash_password(new_opaque_token())
    user.is_disabled = True
    user.email_verified_at = None
    user.alerts_off = []
    await repository.revoke_user_tokens(db, user.id, now)
    await repository.delete_account_tokens_of(db, user.id)
    await db.flush()
    log.info("user_anonymised", user_id=user.id)


async def get_user(db: AsyncSession, user_id: str) -> User:
    user = await repository.get_user(db, user_id)
    if user is None:
        raise NotFound("No such user")
    return user


async def lock(db: AsyncSession, user_id: str) -> User:
    """Serialize what changes a person's sessions and devices together (a purchase, a session
    ending, a device set up or removed): the one lock taken before any of their rows."""
    user = await repository.lock_user(db, user_id)
    if user is None:
        raise NotFound("No such user")
    return user


async def try_lock(db: AsyncSession, user_id: str) -> bool:
    """`lock` if no other transaction holds it; False (nothing waited for) otherwise."""
    return await repository.lock_user(db, user_id, wait=False) is not None


async def get_user_by_email(db: AsyncSession, email: str) -> User:
    user = await repository.get_user_by_email(db, lookup_email(email))
    if user is None:
        raise NotFound("No such user")
    return user


async def list_users(db: AsyncSession, *, limit: int = 1000, offset: int = 0) -> Sequence[User]:
    """Oldest first."""
    return await repository.list_users(db, limit=limit, offset=offset)


async def set_disabled(
    db: AsyncSession, user_id: str, disabled: bool, *, now: datetime | None = None
) -> User:
    """Disable or re-enable an account; disabling also ends every login it has."""
    user = await get_user(db, user_id)
    user.is_disabled = disabled
    if disabled:
        await repository.revoke_user_tokens(db, user.id, now or utcnow())
    await db.flush()
    log.info("user_disabled" if disabled else "user_enabled", user_id=user.id)
    return user


async def issue_tokens(
    db: AsyncSession,
    secrets: SecretBox,
    settings: Settings,
    user: User,
    *,
    family_id: str | None = None,
    now: datetime | None = None,
) -> TokenOut:
    """A new access token and refresh token (a new family unless `family_id` is given)."""
    now = now or utcnow()
    access_ttl = timedelta(minutes=settings.access_token_minutes)
    refresh_token = new_opaque_token()
    await repository.add_refresh_token(
        db,
        RefreshToken(
            id=new_id(),
            user_id=user.id,
            token_hash=hash_token(refresh_token),
            family_id=family_id or new_id(),
            created_at=now,
            expires_at=now + timedelta(days=settings.refresh_token_days),
        ),
    )
    return TokenOut(
        access_token=secrets.issue_access_token(user.id, user.is_admin, access_ttl),
        refresh_token=refresh_token,
        expires_in=int(access_ttl.total_seconds()),
    )


async def login(
    db: AsyncSession,
    secrets: SecretBox,
    settings: Settings,
    email: str,
    password: str,
    *,
    now: datetime | None = None,
) -> TokenOut:
    user = await authenticate(db, email, password, require_verified=settings.verify_email)
    tokens = await issue_tokens(db, secrets, settings, user, now=now)
    log.info("user_logged_in", user_id=user.id)
    return tokens


# --- sign-up and login under the rate limits (one policy for the API and the web pages) ---

_LIMITS_STATE = "kswifi_auth_rate_limits"


def rate_limits(state: object, settings: Settings) -> AuthRateLimits:
    """The app's limiters, kept on the app's state (made on first use, as long-lived as it)."""
    limits: AuthRateLimits | None = getattr(state, _LIMITS_STATE, None)
    if limits is None:
        limits = AuthRateLimits.from_settings(settings)
        setattr(state, _LIMITS_STATE, limits)
    return limits


def client_address(peer_host: str | None) -> str:
    """The address a client is limited by: the connection's peer. X-Forwarded-For is not
    trusted here: any client can write it."""
    return peer_host or "unknown"


async def login_limited(
    db: AsyncSession,
    secrets: SecretBox,
    settings: Settings,
    limits: AuthRateLimits,
    address: str,
    email: str,
    password: str,
) -> TokenOut:
    """`login`, refused (429) while the account or the address is being guessed; a wrong
    password counts against both, a right one clears the account."""
    wait = limits.login_wait(email, address)
    if wait is not None:
        raise TooManyRequests(f"Too many failed logins; try again in {wait} seconds", wait)
    try:
        tokens = await login(db, secrets, settings, email, password)
    except InvalidCredentials:
        limits.login_failed(email, address)
        raise
    limits.login_succeeded(email)
    return tokens


async def rotate_refresh_token(
    db: AsyncSession,
    secrets: SecretBox,
    settings: Settings,
    refresh_token: str,
    *,
    now: datetime | None = None,
) -> TokenOut:
    """Spend `refresh_token` for a new pair in the same family.

    Unknown or expired: InvalidRefreshToken. Already spent or revoked: the whole family is
    revoked (a stolen token and its rightful owner can no longer both use the chain) and
    RefreshTokenReused is raised; commit before answering so the revocation holds.
    """
    now = now or utcnow()
    stored = await repository.get_refresh_token_by_hash(
        db, hash_token(refresh_token), for_update=True
    )
    if stored is None:
        raise InvalidRefreshToken("The refresh token is not valid")
    if stored.used_at is not None or stored.revoked_at is not None:
        revoked = await repository.revoke_family(db, stored.family_id, now)
        await db.flush()
        log.warning(
            "refresh_token_reused",
            user_id=stored.user_id,
            family_id=stored.family_id,
            revoked=revoked,
        )
        raise RefreshTokenReused("The refresh token was already used; please log in again")
    if stored.expires_at <= now:
        raise InvalidRefreshToken("The refresh token has expired; please log in again")
    user = await repository.get_user(db, stored.user_id)
    if user is None or user.is_disabled:
        raise InvalidRefreshToken("The account is not active")
    stored.used_at = now
    return await issue_tokens(db, secrets, settings, user, family_id=stored.family_id, now=now)


async def logout(
    db: AsyncSession, user: User, refresh_token: str, *, now: datetime | None = None
) -> None:
    """End the login `refresh_token` belongs to (its whole family). Idempotent.

    A token that is unknown or belongs to someone else is ignored, so the answer never tells
    whether it exists.
    """
    stored = await repository.get_refresh_token_by_hash(db, hash_token(refresh_token))
    if stored is None or stored.user_id != user.id:
        return
    revoked = await repository.revoke_family(db, stored.family_id, now or utcnow())
    if revoked:
        log.info("user_logged_out", user_id=user.id, family_id=stored.family_id)


async def purge_expired_refresh_tokens(db: AsyncSession, *, now: datetime | None = None) -> int:
    """Delete refresh tokens that expired over a day ago (for the periodic worker)."""
    return await repository.delete_refresh_tokens_expired_before(
        db, (now or utcnow()) - timedelta(days=1)
    )
