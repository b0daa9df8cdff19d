"""Fixtures of the plans tests: an operator and a customer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kswifi.control.config import get_settings
from kswifi.control.deps import AppContext
from tests.control.plans.accounts import Account, create_account
from tests.control.plans.cli_support import CliDatabase, prepare_cli_database


@pytest.fixture
async def admin(ctx: AppContext, client: httpx.AsyncClient) -> Account:
    return await create_account(ctx, client, is_admin=True)


@pytest.fixture
async def buyer(ctx: AppContext, client: httpx.AsyncClient) -> Account:
    return await create_account(ctx, client)


@pytest.fixture
def cli_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_template: Path
) -> Iterator[CliDatabase]:
    yield prepare_cli_database(tmp_path, monkeypatch, sqlite_template)
    get_settings.cache_clear()
