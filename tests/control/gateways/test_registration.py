"""Registering gateways: service rules, the admin API, the CLI, and the audit trail."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select
from typer.testing import CliRunner

from kswifi.cli import app as cli_app
from kswifi.control.config import get_settings
from kswifi.control.db import Database
from kswifi.control.deps import AppContext
from kswifi.control.errors import Conflict, Unprocessable
from kswifi.control.gateways import addresses as gateway_addresses
from kswifi.control.gateways import service
from kswifi.control.models import AuditEntry, Gateway
from kswifi.control.security import hash_token
from tests.conftest import TEST_SECRET


async def _register(ctx: AppContext, **overrides: object) -> tuple[Gateway, str]:
    fields: dict[str, object] = {
        "name": "eu-1",
        "region_code": "eu-west",
        "endpoint": "gw1.example.net:51820",
    }
    fields.update(overrides)
    async with ctx.db.transaction() as db:
        return await service.register(db, ctx.secrets, ctx.settings, **fields)  # type: ignore[arg-type]


class TestRegister:
    async def test_keys_token_and_blocks(self, ctx: AppContext) -> None:
        gateway, token = await _register(ctx)
        assert gateway.token_hash == hash_token(token)
        assert token not in gateway.token_hash
        private_key = ctx.secrets.decrypt(gateway.private_key_encrypted)
        assert private_key not in gateway.private_key_encrypted
        derived = (
            X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        assert base64.b64encode(derived).decode() == gateway.public_key
        assert gateway.ipv4_pool == "100.64.0.0/16"
        assert gateway.ipv6_pool == "fd4b:5357:4946::/64"
        assert gateway.next_host_index == 2
        assert gateway.listen_port == 51820
        assert gateway.capacity == ctx.settings.default_gateway_capacity

    async def test_each_gateway_gets_the_next_blocks(self, ctx: AppContext) -> None:
        await _register(ctx, name="a")
        second, _ = await _register(ctx, name="b", region_code="us-east", capacity=50)
        assert second.ipv4_pool == "100.65.0.0/16"
        assert second.ipv6_pool == "fd4b:5357:4946:1::/64"
        assert second.capacity == 50

    @pytest.mark.parametrize(
        ("endpoint", "normalized"),
        [
            ("GW.Example.net:443", "gw.example.net:443"),
            ("203.0.113.7:51820", "203.0.113.7:51820"),
            ("[2001:DB8::0001]:51820", "[2001:db8::1]:51820"),
        ],
    )
    async def test_endpoints_accepted(
        self, ctx: AppContext, endpoint: str, normalized: str
    ) -> None:
        gateway, _ = await _register(ctx, endpoint=endpoint, listen_port=51999)
        assert gateway.endpoint == normalized
        assert gateway.listen_port == 51999

    @pytest.mark.parametrize(
        "endpoint",
        [
            "gw.example.net",
            "gw.example.net:0",
            "gw.example.net:70000",
            "2001:db8::1:51820",
            "[not-v6]:51820",
            "bad host:51820",
            "-bad.example:1",
            "300.1.2.3:51820",
        ],
    )
    async def test_bad_endpoints_refused(self, ctx: AppContext, endpoint: str) -> None:
        with pytest.raises(Unprocessable, match="endpoint"):
            await _register(ctx, endpoint=endpoint)
        await self._assert_no_gateways(ctx)

    async def test_unknown_region(self, ctx: AppContext) -> None:
        with pytest.raises(Unprocessable, match="unknown region 'mars'"):
            await _register(ctx, region_code="mars")
        await self._assert_no_gateways(ctx)

    async def test_duplicate_name(self, ctx: AppContext) -> None:
        await _register(ctx)
        with pytest.raises(Conflict):
            await _register(ctx)

    async def test_concurrent_registrations_get_distinct_blocks(self, ctx: AppContext) -> None:
        created = await asyncio.gather(*(_register(ctx, name=f"gw-{n}") for n in range(8)))
        assert len({gateway.ipv4_pool for gateway, _ in created}) == 8
        assert len({gateway.ipv6_pool for gateway, _ in created}) == 8

    async def test_concurrent_duplicate_names_give_one_gateway(self, ctx: AppContext) -> None:
        results = await asyncio.gather(
            *(_register(ctx, name="same") for _ in range(4)), return_exceptions=True
        )
        assert sum(isinstance(result, tuple) for result in results) == 1
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, tuple))

    async def test_capacity_larger_than_block(self, ctx: AppContext) -> None:
        with pytest.raises(Unprocessable, match="capacity"):
            await _register(ctx, capacity=70_000)

    async def test_pool_of_blocks_exhausted(self, ctx: AppContext) -> None:
        ctx.settings.address_pool_v4 = "100.64.0.0/15"
        await _register(ctx, name="a")
        await _register(ctx, name="b")
        with pytest.raises(gateway_addresses.AddressPoolExhausted, match="no free /16"):
            await _register(ctx, name="c")

    async def _assert_no_gateways(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            assert list(await db.scalars(select(Gateway))) == []


class TestAdminApi:
    async def test_create_and_list(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str], ctx: AppContext
    ) -> None:
        body = {"name": "eu-1", "region": "eu-west", "endpoint": "gw1.example.net:51820"}
        created = await client.post("/api/admin/gateways", json=body, headers=admin_headers)
        assert created.status_code == 201, created.text
        payload = created.json()
        token = payload["token"]
        assert payload["gateway"]["name"] == "eu-1"
        assert payload["gateway"]["ipv4_pool"] == "100.64.0.0/16"
        assert payload["gateway"]["is_online"] is False
        assert "private_key" not in str(payload)

        listed = await client.get("/api/admin/gateways", headers=admin_headers)
        assert listed.status_code == 200
        [row] = listed.json()
        assert row["id"] == payload["gateway"]["id"]
        assert "token" not in row and token not in listed.text

        async with ctx.db.transaction() as db:
            entries = list(await db.scalars(select(AuditEntry)))
        assert [(e.action, e.target) for e in entries] == [
            ("gateway.create", payload["gateway"]["id"])
        ]
        assert "@" in entries[0].actor

    async def test_errors(self, client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
        bad_region = {"name": "x", "region": "mars", "endpoint": "gw.example.net:1"}
        response = await client.post("/api/admin/gateways", json=bad_region, headers=admin_headers)
        assert response.status_code == 422
        assert "mars" in response.json()["error"]["message"]
        ok = {"name": "x", "region": "eu-west", "endpoint": "gw.example.net:1"}
        assert (
            await client.post("/api/admin/gateways", json=ok, headers=admin_headers)
        ).status_code == 201
        duplicate = await client.post("/api/admin/gateways", json=ok, headers=admin_headers)
        assert duplicate.status_code == 409
        assert duplicate.json()["error"]["code"] == "conflict"
        unknown_field = {**ok, "name": "y", "colour": "blue"}
        response = await client.post(
            "/api/admin/gateways", json=unknown_field, headers=admin_headers
        )
        assert response.status_code == 422

    async def test_needs_an_operator(self, client: httpx.AsyncClient, user: object) -> None:
        headers = user.headers  # type: ignore[attr-defined]
        body = {"name": "eu-1", "region": "eu-west", "endpoint": "gw1.example.net:51820"}
        assert (
            await client.post("/api/admin/gateways", json=body, headers=headers)
        ).status_code == 403
        assert (await client.get("/api/admin/gateways")).status_code == 401

    async def test_rotate_and_disable_revoke_the_token(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        body = {"name": "eu-1", "region": "eu-west", "endpoint": "gw1.example.net:51820"}
        created = (
            await client.post("/api/admin/gateways", json=body, headers=admin_headers)
        ).json()
        gateway_id, old_token = created["gateway"]["id"], created["token"]

        def agent(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        url = "/api/gateway/v1/desired-state"
        assert (await client.get(url, headers=agent(old_token))).status_code == 200
        rotated = await client.post(
            f"/api/admin/gateways/{gateway_id}/rotate-token", headers=admin_headers
        )
        new_token = rotated.json()["token"]
        assert (await client.get(url, headers=agent(old_token))).status_code == 401
        assert (await client.get(url, headers=agent(new_token))).status_code == 200

        disabled = await client.post(
            f"/api/admin/gateways/{gateway_id}/disable", headers=admin_headers
        )
        assert disabled.json()["is_enabled"] is False
        assert (await client.get(url, headers=agent(new_token))).status_code == 401
        await client.post(f"/api/admin/gateways/{gateway_id}/enable", headers=admin_headers)
        assert (await client.get(url, headers=agent(new_token))).status_code == 200
        missing = await client.post("/api/admin/gateways/nope/disable", headers=admin_headers)
        assert missing.status_code == 404


class TestCli:
    @pytest.fixture
    def cli_env(self, database_url: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setenv("KSWIFI_DATABASE_URL", database_url)
        monkeypatch.setenv("KSWIFI_SECRET_KEY", TEST_SECRET)
        monkeypatch.setenv("KSWIFI_DATA_DIR", str(tmp_path))
        get_settings.cache_clear()
        yield database_url  # type: ignore[misc]
        get_settings.cache_clear()

    def test_add_prints_the_token_on_its_last_line(self, cli_env: str) -> None:
        runner = CliRunner()
        result = runner.invoke(
            cli_app,
            [
                "admin",
                "gateways",
                "add",
                "--name",
                "eu-1",
                "--region",
                "eu-west",
                "--endpoint",
                "gw1.example.net:51820",
                "--capacity",
                "500",
            ],
        )
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        token = lines[-1]
        assert token.strip() == token and " " not in token and len(token) >= 40
        assert "100.64.0.0/16" in result.stdout

        async def stored() -> Gateway | None:
            database = Database(cli_env)
            try:
                async with database.transaction() as db:
                    return await db.scalar(select(Gateway).where(Gateway.name == "eu-1"))
            finally:
                await database.dispose()

        gateway = asyncio.run(stored())
        assert gateway is not None
        assert gateway.token_hash == hash_token(token)
        assert gateway.capacity == 500

        listed = runner.invoke(cli_app, ["admin", "gateways", "list"])
        assert listed.exit_code == 0
        header, row = listed.stdout.strip().splitlines()[-2:]
        assert header.split()[:5] == ["NAME", "REGION", "ENDPOINT", "ONLINE", "MODE"]
        assert row.split()[:6] == ["eu-1", "eu-west", "gw1.example.net:51820", "no", "-", "0"]
        assert "never" in row

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--region", "mars", "--endpoint", "gw.example.net:1"], "unknown region"),
            (["--region", "eu-west", "--endpoint", "gw.example.net"], "HOST:PORT"),
        ],
    )
    def test_bad_input_is_one_clear_line(self, cli_env: str, args: list[str], message: str) -> None:
        result = CliRunner().invoke(cli_app, ["admin", "gateways", "add", "--name", "x", *args])
        assert result.exit_code == 1
        assert message in result.stderr
        assert "Traceback" not in result.output

    def test_duplicate_name(self, cli_env: str) -> None:
        args = [
            "admin",
            "gateways",
            "add",
            "--name",
            "x",
            "--region",
            "eu-west",
            "--endpoint",
            "gw.example.net:1",
        ]
        runner = CliRunner()
        assert runner.invoke(cli_app, args).exit_code == 0
        again = runner.invoke(cli_app, args)
        assert again.exit_code == 1
        assert "already exists" in again.stderr
