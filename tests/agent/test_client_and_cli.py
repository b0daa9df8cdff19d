"""ControlPlaneClient over httpx.MockTransport, settings validation, CLI operator errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kswifi.agent.cli import build_settings, gateway_app
from kswifi.agent.client import ControlPlaneClient, make_transport
from kswifi.agent.config import GatewaySettings
from kswifi.agent.errors import AuthenticationError, ControlPlaneError
from kswifi.protocol import GatewayHeartbeat, SessionUsageDelta, UsageReport


def client_with(handler: httpx.MockTransport) -> ControlPlaneClient:
    return ControlPlaneClient("http://cp.invalid", "secret-token", transport=handler)


class TestClient:
    async def test_long_poll_sends_since_and_bearer_token(self) -> None:
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={"revision": 7, "peers": []})

        client = client_with(httpx.MockTransport(handler))
        state = await client.desired_state(since=6)
        await client.aclose()
        assert state.revision == 7
        assert seen[0].url.path == "/api/gateway/v1/desired-state"
        assert seen[0].url.params["since"] == "6"
        assert seen[0].headers["authorization"] == "Bearer secret-token"

    async def test_usage_round_trip(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            assert body["sequence"] == 3
            return httpx.Response(
                200, json={"accepted": True, "duplicate": False, "last_sequence": 3}
            )

        client = client_with(httpx.MockTransport(handler))
        report = UsageReport(
            sequence=3,
            sent_at=datetime.now(UTC),
            deltas=[SessionUsageDelta(session_id="s", rx_bytes=1, tx_bytes=2)],
        )
        ack = await client.post_usage(report)
        await client.aclose()
        assert ack.accepted and ack.last_sequence == 3

    async def test_401_is_an_authentication_error(self) -> None:
        client = client_with(httpx.MockTransport(lambda r: httpx.Response(401, json={})))
        with pytest.raises(AuthenticationError):
            await client.heartbeat(
                GatewayHeartbeat(agent_version="x", interface_mode="userspace", peer_count=0)
            )
        await client.aclose()

    async def test_500_and_garbage_are_control_plane_errors(self) -> None:
        for response in (httpx.Response(500, text="boom"), httpx.Response(200, text="<html>")):
            client = client_with(httpx.MockTransport(lambda r, resp=response: resp))
            with pytest.raises(ControlPlaneError):
                await client.leases(["s1"])
            await client.aclose()

    async def test_unreachable_is_a_control_plane_error(self, tmp_path: Path) -> None:
        client = ControlPlaneClient(f"unix:{tmp_path}/nothing.sock", "t")
        with pytest.raises(ControlPlaneError):
            await client.desired_state()
        await client.aclose()

    def test_unix_url_uses_a_uds_transport(self) -> None:
        base, transport = make_transport("unix:/run/kswifi.sock")
        assert base.startswith("http://") and isinstance(transport, httpx.AsyncHTTPTransport)
        assert make_transport("https://cp.example.net/") == ("https://cp.example.net", None)


class TestSettings:
    def test_environment_prefix(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KSWIFI_GATEWAY_CONTROL_URL", "unix:/run/k.sock")
        monkeypatch.setenv("KSWIFI_GATEWAY_TOKEN", "s3cr3t-value")
        monkeypatch.setenv("KSWIFI_GATEWAY_ENDPOINT", "gw.example.net:51820")
        monkeypatch.setenv("KSWIFI_GATEWAY_WAN_INTERFACE", "eth0")
        settings = GatewaySettings()  # type: ignore[call-arg]
        assert settings.interface == "kswifi0" and settings.listen_port == 51820
        assert settings.usage_interval_s == 1.0
        assert settings.ifb_name == "ifb-kswifi0"
        assert settings.token.get_secret_value() == "s3cr3t-value"
        assert "s3cr3t" not in repr(settings)

    def test_interface_names_are_checked(self) -> None:
        with pytest.raises(ValueError):
            GatewaySettings(
                control_url="http://x",
                token="t",
                endpoint="a:1",
                wan_interface="eth0",
                interface="much-too-long-name0",
            )


class TestCli:
    def test_bad_options_are_reported_without_traceback(self) -> None:
        result = CliRunner().invoke(
            gateway_app,
            [
                "run",
                "--control-url",
                "ftp://x",
                "--token",
                "t",
                "--endpoint",
                "nohost",
                "--wan-interface",
                "eth0",
            ],
        )
        assert result.exit_code == 2
        assert "--control-url" in result.output and "--endpoint" in result.output
        assert "Traceback" not in result.output

    def test_missing_required_setting_names_flag_and_env(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in ("CONTROL_URL", "TOKEN", "ENDPOINT", "WAN_INTERFACE"):
            monkeypatch.delenv(f"KSWIFI_GATEWAY_{name}", raising=False)
        result = CliRunner().invoke(gateway_app, ["run", "--token", "t"])
        assert result.exit_code == 2
        assert "KSWIFI_GATEWAY_CONTROL_URL" in result.output

    def test_unknown_wan_interface(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(
            gateway_app,
            [
                "run",
                "--control-url",
                "http://cp.invalid",
                "--token",
                "t",
                "--endpoint",
                "gw:51820",
                "--wan-interface",
                "nosuchif0",
                "--state-dir",
                str(tmp_path),
            ],
        )
        assert result.exit_code in (1, 2)
        assert "Traceback" not in result.output

    def test_build_settings_ignores_unset_options(self) -> None:
        settings = build_settings(
            {
                "control_url": "http://cp",
                "token": "t",
                "endpoint": "a:1",
                "wan_interface": "eth0",
                "interface": None,
            }
        )
        assert settings.interface == "kswifi0"
