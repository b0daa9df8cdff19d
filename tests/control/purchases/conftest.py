"""Fixtures of the purchases tests: accounts, vouchers, and Stripe on loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from kswifi.control.config import Settings, get_settings
from kswifi.control.deps import AppContext
from kswifi.control.purchases import service
from tests.control.plans.accounts import Account, create_account
from tests.control.plans.cli_support import CliDatabase, prepare_cli_database
from tests.control.purchases.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe

MakeVouchers = Callable[..., Awaitable[list[str]]]
MakeAccount = Callable[..., Awaitable[Account]]


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[FakeStripe]:
    server = FakeStripe()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_stripe(stripe_server: FakeStripe) -> Iterator[FakeStripe]:
    stripe_server.reset()
    yield stripe_server
    stripe_server.reset()


@pytest.fixture
def settings(settings: Settings, fake_stripe: FakeStripe) -> Settings:
    """The shared settings with Stripe pointed at the fake on loopback."""
    return settings.model_copy(
        update={
            "stripe_api_key": SecretStr(API_KEY),
            "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
            "stripe_api_base": fake_stripe.base_url,
        }
    )


@pytest.fixture
def make_account(ctx: AppContext, client: httpx.AsyncClient) -> MakeAccount:
    async def _make(is_admin: bool = False) -> Account:
        return await create_account(ctx, client, is_admin=is_admin)

    return _make


@pytest.fixture
async def admin(make_account: MakeAccount) -> Account:
    return await make_account(is_admin=True)


@pytest.fixture
async def buyer(make_account: MakeAccount) -> Account:
    return await make_account()


@pytest.fixture
def make_vouchers(ctx: AppContext) -> MakeVouchers:
    async def _make(plan_code: str = "premium", count: int = 1) -> list[str]:
        async with ctx.db.transaction() as db:
            return await service.create_vouchers(
                db, plan_code=plan_code, count=count, actor="fixture@example.com"
            )

    return _make


@pytest.fixture
def cli_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_template: Path
) -> Iterator[CliDatabase]:
    yield prepare_cli_database(tmp_path, monkeypatch, sqlite_template)
    get_settings.cache_clear()
