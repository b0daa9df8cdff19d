"""Service functions other domains and the CLI call: register, authenticate, lookups."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from kswifi.control.deps import AppContext
from kswifi.control.errors import NotFound, Unauthorized, Unprocessable
from kswifi.control.models import RefreshToken, User
from kswifi.control.security import hash_token, utcnow
from kswifi.control.users import service

PASSWORD = "correct horse 42"


class TestRegister:
    async def test_register_normalises_and_hashes(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            user = await service.register(db, "  Grace@Example.ORG ", PASSWORD)
        assert user.email == "grace@example.org"
        assert user.is_admin is False and user.is_disabled is False
        assert user.password_hash.startswith("$argon2id$")

    async def test_create_admin(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            admin = await service.create_admin(db, "ops@example.com", PASSWORD)
        assert admin.is_admin is True

    @pytest.mark.parametrize(
        ("email", "password", "field"),
        [
            ("nope", PASSWORD, "email"),
            ("a@example.com", "short", "password"),
            ("a@example.com", "z" * 257, "password"),
        ],
    )
    async def test_bad_input_is_refused_with_the_field(
        self, ctx: AppContext, email: str, password: str, field: str
    ) -> None:
        async with ctx.db.transaction() as db:
            with pytest.raises(Unprocessable) as refused:
                await service.register(db, email, password)
            assert refused.value.extra["field"] == field
            # Said in words, not the field's raw name.
            assert not refused.value.message.startswith(f"{field}:")
            assert await db.scalar(select(func.count()).select_from(User)) == 0

    async def test_racing_registration_is_email_taken(self, ctx: AppContext) -> None:
        """A second transaction that checked before the first committed still gets 409."""
        async with ctx.db.transaction() as first:
            await service.register(first, "race@example.com", PASSWORD)

            async def second() -> str:
                async with ctx.db.transaction() as db:
                    try:
                        await service.register(db, "RACE@example.com", PASSWORD)
                    except service.EmailTaken:
                        # the transaction is still usable after the refused insert
                        count = await db.scalar(select(func.count()).select_from(User))
                        return f"taken, {count} user(s)"
                    return "created"

            racer = asyncio.create_task(second())
            await asyncio.sleep(0.3)  # let it reach the lock / the unique index
            assert not racer.done()
        assert await racer == "taken, 1 user(s)"


class TestAuthenticate:
    async def test_right_and_wrong_credentials(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            created = await service.register(db, "heidi@example.com", PASSWORD)
        async with ctx.db.transaction() as db:
            assert (await service.authenticate(db, "HEIDI@example.com", PASSWORD)).id == created.id
            for email, password in [
                ("heidi@example.com", "wrong password"),
                ("nobody@example.com", PASSWORD),
                ("not an email", PASSWORD),
            ]:
                with pytest.raises(service.InvalidCredentials, match="Wrong email or password"):
                    await service.authenticate(db, email, password)

    async def test_disabled_account(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            created = await service.register(db, "ivan@example.com", PASSWORD)
            await service.set_disabled(db, created.id, True)
        async with ctx.db.transaction() as db:
            with pytest.raises(Unauthorized, match="not active"):
                await service.authenticate(db, "ivan@example.com", PASSWORD)
            await service.set_disabled(db, created.id, False)
        async with ctx.db.transaction() as db:
            assert (await service.authenticate(db, "ivan@example.com", PASSWORD)).id == created.id


class TestLookups:
    async def test_get_user_and_by_email(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            created = await service.register(db, "judy@example.com", PASSWORD)
        async with ctx.db.transaction() as db:
            assert (await service.get_user(db, created.id)).email == "judy@example.com"
            assert (await service.get_user_by_email(db, "Judy@Example.com")).id == created.id
            with pytest.raises(NotFound):
                await service.get_user(db, "0" * 32)
            with pytest.raises(NotFound):
                await service.get_user_by_email(db, "nobody@example.com")

    async def test_list_users_oldest_first(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            for name in ("one", "two", "three"):
                await service.register(db, f"{name}@example.com", PASSWORD)
        async with ctx.db.transaction() as db:
            emails = [user.email for user in await service.list_users(db)]
            assert emails == ["one@example.com", "two@example.com", "three@example.com"]
            assert len(await service.list_users(db, limit=2)) == 2


class TestTokens:
    async def test_disabling_revokes_every_login(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            created = await service.register(db, "ken@example.com", PASSWORD)
            first = await service.login(db, ctx.secrets, ctx.settings, created.email, PASSWORD)
            second = await service.login(db, ctx.secrets, ctx.settings, created.email, PASSWORD)
            await service.set_disabled(db, created.id, True)
        async with ctx.db.transaction() as db:
            rows = (await db.scalars(select(RefreshToken))).all()
            assert len(rows) == 2 and all(row.revoked_at is not None for row in rows)
            for tokens in (first, second):
                with pytest.raises(service.RefreshTokenReused):
                    await service.rotate_refresh_token(
                        db, ctx.secrets, ctx.settings, tokens.refresh_token
                    )

    async def test_refresh_token_expires_after_the_configured_days(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            created = await service.register(db, "leo@example.com", PASSWORD)
            tokens = await service.login(db, ctx.secrets, ctx.settings, created.email, PASSWORD)
        later = utcnow() + timedelta(days=ctx.settings.refresh_token_days, seconds=1)
        async with ctx.db.transaction() as db:
            with pytest.raises(service.InvalidRefreshToken, match="expired"):
                await service.rotate_refresh_token(
                    db, ctx.secrets, ctx.settings, tokens.refresh_token, now=later
                )

    async def test_purge_deletes_long_expired_tokens_only(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            created = await service.register(db, "mia@example.com", PASSWORD)
            old = await service.login(
                db,
                ctx.secrets,
                ctx.settings,
                created.email,
                PASSWORD,
                now=utcnow() - timedelta(days=400),
            )
            fresh = await service.login(db, ctx.secrets, ctx.settings, created.email, PASSWORD)
        async with ctx.db.transaction() as db:
            assert await service.purge_expired_refresh_tokens(db) == 1
        async with ctx.db.transaction() as db:
            hashes = set((await db.scalars(select(RefreshToken.token_hash))).all())
        assert hashes == {hash_token(fresh.refresh_token)}
        assert hash_token(old.refresh_token) not in hashes
