"""Queries of the users domain."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.control.models import AccountToken, RefreshToken, User


async def get_user(db: AsyncSession, user_id: str) -> User | None:
    return await db.get(User, user_id)


async def lock_user(db: AsyncSession, user_id: str, *, wait: bool = True) -> User | None:
    """The user's row, locked to the end of the transaction (SQLite: one writer anyway);
    without `wait`, None when another transaction holds it.

    FOR NO KEY UPDATE: it excludes itself but not the key-share locks that rows referring to
    the user take (a purchase inserted before this lock must not deadlock with it)."""
    return await db.scalar(
        select(User)
        .where(User.id == user_id)
        .with_for_update(key_share=True, skip_locked=not wait)
        .execution_options(populate_existing=True)
    )


async def get_user_by_email(db: AsyncSession, email: str) -> User | None:
    """`email` must already be normalised (emails are stored lower-cased)."""
    return await db.scalar(select(User).where(User.email == email))


async def insert_user(db: AsyncSession, user: User) -> bool:
    """Add `user`; False (and nothing written) if the email is already taken.

    A savepoint keeps the surrounding transaction usable when a concurrent registration
    wins the race for the same email.
    """
    try:
        async with db.begin_nested():
            db.add(user)
            await db.flush()
    except IntegrityError:
        return False
    return True


async def list_users(db: AsyncSession, *, limit: int = 1000, offset: int = 0) -> Sequence[User]:
    result = await db.scalars(
        select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
    )
    return result.all()


async def add_refresh_token(db: AsyncSession, token: RefreshToken) -> None:
    db.add(token)
    await db.flush()


async def get_refresh_token_by_hash(
    db: AsyncSession, token_hash: str, *, for_update: bool = False
) -> RefreshToken | None:
    """The token row; `for_update` locks it (PostgreSQL) so concurrent rotations serialise."""
    query = select(RefreshToken).where(RefreshToken.token_hash == token_hash)
    if for_update:
        query = query.with_for_update()
    return await db.scalar(query)


async def revoke_family(db: AsyncSession, family_id: str, now: datetime) -> int:
    """Revoke every not-yet-revoked token of a family; returns how many."""
    result = await db.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session="fetch")
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def revoke_user_tokens(db: AsyncSession, user_id: str, now: datetime) -> int:
    """Revoke every not-yet-revoked token of a user; returns how many."""
    result = await db.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session="fetch")
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_refresh_tokens_expired_before(db: AsyncSession, cutoff: datetime) -> int:
    result = await db.execute(
        delete(RefreshToken)
        .where(RefreshToken.expires_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def add_account_token(db: AsyncSession, token: AccountToken) -> None:
    db.add(token)
    await db.flush()


async def get_account_token(db: AsyncSession, token_hash: str, purpose: str) -> AccountToken | None:
    """The token row for this hash and purpose, locked (PostgreSQL) so it is spent once."""
    return await db.scalar(
        select(AccountToken)
        .where(AccountToken.token_hash == token_hash, AccountToken.purpose == purpose)
        .with_for_update()
    )


async def spend_account_tokens(db: AsyncSession, user_id: str, purpose: str, now: datetime) -> int:
    """Mark every unspent token of this purpose of a user as spent (one link works, once)."""
    result = await db.execute(
        update(AccountToken)
        .where(
            AccountToken.user_id == user_id,
            AccountToken.purpose == purpose,
            AccountToken.used_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session="fetch")
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_account_tokens_expired_before(db: AsyncSession, cutoff: datetime) -> int:
    result = await db.execute(
        delete(AccountToken)
        .where(AccountToken.expires_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_account_tokens_of(db: AsyncSession, user_id: str) -> None:
    await db.execute(
        delete(AccountToken)
        .where(AccountToken.user_id == user_id)
        .execution_options(synchronize_session=False)
    )
