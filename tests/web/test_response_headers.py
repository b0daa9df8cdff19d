"""Issue 13, web: hardened responses on every page and API answer, HEAD for every GET route,
and the branded 404 for people (the API keeps its JSON error shape)."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from kswifi.control.deps import AppContext
from tests.conftest import ApiUser
from tests.hardening.test_authorization_matrix import served_routes

from .conftest import make_admin, web_login, web_signup

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def assert_hardened_html(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/html"), response.headers
    policy = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy, (response.url, policy)
    assert "default-src" in policy and "'unsafe-eval'" not in policy
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.headers.get("referrer-policy") in ("same-origin", "no-referrer")


class TestPages:
    @pytest.mark.parametrize("path", ["/", "/plans", "/login", "/signup", "/offline"])
    async def test_public_pages(self, client: httpx.AsyncClient, path: str) -> None:
        response = await client.get(path, headers=HTML)
        assert response.status_code == 200
        assert_hardened_html(response)

    async def test_pages_of_a_signed_in_person_and_of_the_console(
        self, client: httpx.AsyncClient, ctx: AppContext
    ) -> None:
        await web_signup(client)
        for path in ("/sessions", "/plans"):
            assert_hardened_html(await client.get(path, headers=HTML))
        client.cookies.clear()
        await web_login(client, await make_admin(ctx))
        for path in ("/admin", "/admin/sessions", "/admin/users", "/admin/audit"):
            response = await client.get(path, headers=HTML)
            assert response.status_code == 200, path
            assert_hardened_html(response)

    async def test_the_api_docs_page_keeps_working_but_cannot_be_framed(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/api/docs")
        assert_hardened_html(response)
        assert "cdn.jsdelivr.net" in response.headers["content-security-policy"]

    async def test_every_answer_is_nosniff(self, client: httpx.AsyncClient) -> None:
        for path in ("/api/plans", "/static/app.css", "/manifest.webmanifest", "/nowhere"):
            response = await client.get(path)
            assert response.headers.get("x-content-type-options") == "nosniff", path


class TestNoStore:
    async def test_token_answers(self, client: httpx.AsyncClient, user: ApiUser) -> None:
        login = await client.post(
            "/api/auth/login", json={"email": user.email, "password": user.password}
        )
        assert login.status_code == 200
        assert login.headers["cache-control"] == "no-store"
        refresh = await client.post(
            "/api/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
        )
        assert refresh.status_code == 200
        assert refresh.headers["cache-control"] == "no-store"

    async def test_api_answers_default_to_no_store(self, client: httpx.AsyncClient) -> None:
        for path in ("/api/plans", "/api/regions", "/api/no/such/thing"):
            response = await client.get(path)
            assert response.headers["cache-control"] == "no-store", path


def get_routes(app: FastAPI) -> list[str]:
    """Every GET path the app serves, path parameters filled with a placeholder."""
    paths = {
        re.sub(r"\{[^}]+\}", "x", path) for method, path in served_routes(app) if method == "GET"
    }
    return sorted(path + "/app.css" if path == "/static" else path for path in paths)


async def test_every_get_route_answers_head(app: FastAPI, client: httpx.AsyncClient) -> None:
    paths = get_routes(app)
    assert len(paths) > 30
    for path in paths:
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code != 405, path
        assert head.status_code == get.status_code, (path, head.status_code, get.status_code)
        assert head.content == b"", path
        if path.startswith("/static/"):  # the same bytes twice: the same length announced
            assert head.headers.get("content-length") == get.headers["content-length"], path


async def test_unknown_paths_people_get_the_branded_page_the_api_its_json(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/no/such/page", headers=HTML)
    assert page.status_code == 404
    assert_hardened_html(page)
    assert "Page not found" in page.text and "KSWiFi Connect" in page.text
    assert '"error"' not in page.text
    api = await client.get("/api/no/such/thing", headers=HTML)
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "not_found"
    plain = await client.get("/no/such/page", headers={"Accept": "application/json"})
    assert plain.status_code == 404 and plain.json()["error"]["code"] == "not_found"
    head = await client.head("/no/such/page", headers=HTML)
    assert head.status_code == 404 and head.content == b""
