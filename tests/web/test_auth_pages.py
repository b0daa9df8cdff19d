"""Sign up, log in and log out through the forms; cookies, CSRF and redirects."""

from __future__ import annotations

import re

import httpx

from kswifi.control.deps import AppContext
from tests.web.conftest import PASSWORD, WebUser, csrf_from, post_form, web_signup


class TestSignup:
    async def test_signup_then_log_in_with_httponly_lax_cookies(
        self, client: httpx.AsyncClient
    ) -> None:
        loaded = await client.get("/signup")
        response = await client.post(
            "/signup",
            data={
                "csrf_token": csrf_from(loaded.text),
                "email": "new@example.com",
                "password": PASSWORD,
            },
        )
        assert response.status_code == 200  # the log-in form: signing up never logs in
        assert "Almost there: log in with the password you just chose." in response.text
        assert 'value="new@example.com"' in response.text
        assert not any(
            c.startswith("kswifi_access=") for c in response.headers.get_list("set-cookie")
        )
        response = await client.post(
            "/login",
            data={
                "csrf_token": csrf_from(response.text),
                "email": "new@example.com",
                "password": PASSWORD,
                "next": "/plans",
            },
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/plans"
        cookies = response.headers.get_list("set-cookie")
        access = next(c for c in cookies if c.startswith("kswifi_access="))
        refresh = next(c for c in cookies if c.startswith("kswifi_refresh="))
        for cookie in (access, refresh):
            assert "HttpOnly" in cookie
            assert "SameSite=lax" in cookie
        page = await client.get("/sessions")
        assert page.status_code == 200
        assert "My sessions" in page.text

    async def test_a_taken_address_gets_the_same_page_as_a_new_one(
        self, client: httpx.AsyncClient
    ) -> None:
        await web_signup(client, "twice@example.com")
        client.cookies.clear()
        taken = await post_form(
            client, "/signup", email="twice@example.com", password="a different one"
        )
        client.cookies.clear()
        fresh = await post_form(client, "/signup", email="fresh@example.com", password=PASSWORD)
        assert taken.status_code == fresh.status_code == 200
        hidden = re.compile(r'value="[^"]*"|content="[^"]*"|twice@example\.com|fresh@example\.com')
        assert hidden.sub("", taken.text) == hidden.sub("", fresh.text)
        assert not any(c.startswith("kswifi_access=") for c in taken.headers.get_list("set-cookie"))

    async def test_short_password_is_refused(self, client: httpx.AsyncClient) -> None:
        response = await post_form(client, "/signup", email="short@example.com", password="abc")
        assert response.status_code == 422
        assert "password" in response.text

    async def test_next_is_kept_but_only_on_this_site(self, client: httpx.AsyncClient) -> None:
        response = await post_form(
            client,
            "/signup?next=/checkout/basic",
            email="next@example.com",
            password=PASSWORD,
            next="/checkout/basic",
        )
        assert 'name="next" value="/checkout/basic"' in response.text
        client.cookies.clear()
        response = await post_form(
            client, "/signup", email="evil@example.com", password=PASSWORD, next="//evil.example"
        )
        assert 'name="next" value="/plans"' in response.text


class TestLogin:
    async def test_login_and_logout(self, client: httpx.AsyncClient, web_user: WebUser) -> None:
        client.cookies.clear()
        assert (await client.get("/sessions")).status_code == 303
        response = await post_form(
            client, "/login", email=web_user.email, password=PASSWORD, next="/sessions"
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/sessions"
        assert (await client.get("/sessions")).status_code == 200
        home = await client.get("/")
        logout = await client.post("/logout", data={"csrf_token": csrf_from(home.text)})
        assert logout.status_code == 303
        redirect = await client.get("/sessions")
        assert redirect.status_code == 303
        assert redirect.headers["location"] == "/login?next=/sessions"

    async def test_wrong_password(self, client: httpx.AsyncClient, web_user: WebUser) -> None:
        client.cookies.clear()
        response = await post_form(client, "/login", email=web_user.email, password="wrong pass")
        assert response.status_code == 401
        assert "Wrong email or password" in response.text

    async def test_logout_revokes_the_refresh_token(
        self, client: httpx.AsyncClient, web_user: WebUser
    ) -> None:
        refresh = client.cookies["kswifi_refresh"]
        home = await client.get("/")
        await client.post("/logout", data={"csrf_token": csrf_from(home.text)})
        reuse = await client.post("/api/auth/refresh", json={"refresh_token": refresh})
        assert reuse.status_code == 401

    async def test_expired_access_cookie_is_refreshed(
        self, client: httpx.AsyncClient, web_user: WebUser, ctx: AppContext
    ) -> None:
        old_refresh = client.cookies["kswifi_refresh"]
        client.cookies.delete("kswifi_access")
        page = await client.get("/sessions")
        assert page.status_code == 200
        assert client.cookies["kswifi_refresh"] != old_refresh
        assert ctx.secrets.read_access_token(client.cookies["kswifi_access"])

    async def test_stolen_refresh_cookie_reused_logs_out(
        self, client: httpx.AsyncClient, web_user: WebUser
    ) -> None:
        old_refresh = client.cookies["kswifi_refresh"]
        client.cookies.delete("kswifi_access")
        assert (await client.get("/sessions")).status_code == 200
        client.cookies.clear()
        client.cookies.set("kswifi_refresh", old_refresh)
        assert (await client.get("/sessions")).status_code == 303


class TestCsrf:
    async def test_post_without_token_is_refused(self, client: httpx.AsyncClient) -> None:
        await client.get("/signup")
        response = await client.post(
            "/signup", data={"email": "x@example.com", "password": PASSWORD}
        )
        assert response.status_code == 403
        assert "reload the page" in response.text

    async def test_token_of_another_browser_is_refused(self, client: httpx.AsyncClient) -> None:
        loaded = await client.get("/signup")
        token = csrf_from(loaded.text)
        client.cookies.set("kswifi_csrf", "someone-elses-nonce")
        response = await client.post(
            "/signup", data={"csrf_token": token, "email": "y@example.com", "password": PASSWORD}
        )
        assert response.status_code == 403

    async def test_logout_needs_the_token(
        self, client: httpx.AsyncClient, web_user: WebUser
    ) -> None:
        response = await client.post("/logout", data={})
        assert response.status_code == 403
        assert (await client.get("/sessions")).status_code == 200
