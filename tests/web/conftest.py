"""Fixtures of the web app tests: a browser-like client that signs up through the forms."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import httpx
import pytest

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "correct horse 42"


def csrf_from(html: str) -> str:
    match = CSRF_INPUT.search(html)
    assert match, "page has no CSRF field"
    return match.group(1)


async def post_form(
    client: httpx.AsyncClient, page: str, action: str | None = None, **fields: str
) -> httpx.Response:
    """Load `page`, then submit its form to `action` (default: the same path) with its token."""
    loaded = await client.get(page)
    assert loaded.status_code == 200, loaded.text
    data = {"csrf_token": csrf_from(loaded.text), **fields}
    return await client.post(action or page.split("?")[0], data=data)


@dataclass
class WebUser:
    email: str
    password: str
    client: httpx.AsyncClient


async def web_signup(client: httpx.AsyncClient, email: str | None = None) -> WebUser:
    email = email or f"web-{uuid.uuid4().hex[:10]}@example.com"
    response = await post_form(client, "/signup", email=email, password=PASSWORD)
    assert response.status_code == 303, response.text
    return WebUser(email, PASSWORD, client)


@pytest.fixture
async def web_user(client: httpx.AsyncClient) -> WebUser:
    return await web_signup(client)
