"""Fixtures of the plans tests: an operator and a customer."""

from __future__ import annotations

import httpx
import pytest

from kswifi.control.deps import AppContext
from tests.control.plans.accounts import Account, create_account


@pytest.fixture
async def admin(ctx: AppContext, client: httpx.AsyncClient) -> Account:
    return await create_account(ctx, client, is_admin=True)


@pytest.fixture
async def buyer(ctx: AppContext, client: httpx.AsyncClient) -> Account:
    return await create_account(ctx, client)
