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
            return httpx.Response(
                200,
                json={"kind": "full", "tag": "t8", "state": {"revision": 7, "peers": []}},
            )

        client = client_with(httpx.MockTransport(handler))
        update = await client.desired_update(since=6, known="t7")
        first = await client.desired_update()
        await client.aclose()
        assert update.revision == 7 and update.kind == "full" and update.tag == "t8"
        assert seen[0].url.path == "/api/gateway/v1/desired-state"
        assert dict(seen[0].url.params) == {"changes": "true", "since": "6", "known": "t7"}
        assert dict(seen[1].url.params) == {"changes": "true"}  # nothing held: the whole state
        assert seen[0].headers["authorization"] == "Bearer secret-token"
        assert first.state is not None and first.state.revision == 7

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
            await client.desired_update()
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
        result = CliRunner(env={"KSWIFI_GATEWAY_TOKEN": "t"}).invoke(
            gateway_app,
            [
                "run",
                "--control-url",
                "ftp://x",
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
        result = CliRunner(env={"KSWIFI_GATEWAY_TOKEN": "t"}).invoke(gateway_app, ["run"])
        assert result.exit_code == 2
        assert "KSWIFI_GATEWAY_CONTROL_URL" in result.output

    def test_unknown_wan_interface(self, tmp_path: Path) -> None:
        result = CliRunner(env={"KSWIFI_GATEWAY_TOKEN": "t"}).invoke(
            gateway_app,
            [
                "run",
                "--control-url",
                "http://cp.invalid",
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


BASE = {"control_url": "http://cp.invalid", "endpoint": "gw:51820", "wan_interface": "eth0"}


class TestLeastPrivilege:
    def test_token_on_the_command_line_is_refused(self) -> None:
        result = CliRunner().invoke(gateway_app, ["run", "--token", "s3cr3t"])
        assert result.exit_code == 2
        assert "--token-file" in result.output and "ps" in result.output
        assert "s3cr3t" not in result.output

    def test_token_file_is_read_and_stripped(self, tmp_path: Path) -> None:
        path = tmp_path / "token"
        path.write_text("  tok-from-file\n")
        settings = GatewaySettings(**BASE, token_file=path)
        assert settings.token_value == "tok-from-file"

    @pytest.mark.parametrize("content", [None, "", "  \n"])
    def test_missing_or_empty_token_file_is_a_clear_error(
        self, tmp_path: Path, content: str | None
    ) -> None:
        path = tmp_path / "token"
        if content is not None:
            path.write_text(content)
        result = CliRunner(env={"KSWIFI_GATEWAY_TOKEN": None}).invoke(
            gateway_app,
            [
                *("run", "--token-file", str(path), "--control-url", "http://x"),
                *("--endpoint", "a:1", "--wan-interface", "eth0"),
            ],
        )
        assert result.exit_code == 2, result.output
        assert "token file" in result.output and "Traceback" not in result.output

    def test_no_token_at_all_names_both_ways(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("KSWIFI_GATEWAY_TOKEN", raising=False)
        with pytest.raises(ValueError, match="--token-file or KSWIFI_GATEWAY_TOKEN"):
            GatewaySettings(**BASE)

    def test_capabilities_are_read_from_proc_status(self) -> None:
        from kswifi.agent.cli import CAP_NET_ADMIN, effective_capabilities

        status = "Name:\tkswifi\nCapInh:\t0000000000001000\nCapEff:\t0000000000001000\n"
        assert effective_capabilities(status) == 1 << CAP_NET_ADMIN
        assert effective_capabilities("CapEff:\t0000000000000000\n") == 0

    def test_preflight_refuses_without_net_admin(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        from kswifi.agent import cli

        monkeypatch.setattr(cli, "effective_capabilities", lambda: 0)
        settings = GatewaySettings(**BASE, token="t", state_dir=tmp_path)
        with pytest.raises(Exception) as raised:
            cli.preflight(settings)
        assert getattr(raised.value, "exit_code", None) == 1


class TestFirewallSettings:
    def test_defaults_block_smtp_and_cap_connections(self) -> None:
        settings = GatewaySettings(**BASE, token="t")
        policy = settings.firewall
        assert policy.blocked_ports == (("tcp", 25),)
        assert policy.max_connections == 4096
        assert policy.refuses("169.254.169.254") and policy.refuses("10.1.2.3")
        assert not policy.refuses("198.51.100.2") and not policy.refuses("2001:db8::1")

    def test_operator_networks_and_ports(self) -> None:
        settings = GatewaySettings(
            **BASE,
            token="t",
            blocked_networks="198.51.100.0/25, 2001:db8:dead::/48",
            allowed_networks="10.20.0.0/16",
            blocked_ports="25, udp/137",
            max_connections_per_device=64,
        )
        policy = settings.firewall
        assert settings.blocked_ports == "tcp/25,udp/137"
        assert policy.refuses("198.51.100.2") and not policy.refuses("198.51.100.200")
        assert policy.refuses("2001:db8:dead::1")
        assert not policy.refuses("10.20.3.4") and policy.refuses("10.21.3.4")
        assert policy.max_connections == 64

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("blocked_networks", "10.0.0.0/8, nonsense", "not an IP network"),
            ("allowed_networks", "300.1.1.1", "not an IP network"),
            ("blocked_ports", "smtp", "not a port"),
            ("blocked_ports", "tcp/70000", "not a port"),
            ("route_table", 254, "main"),
        ],
    )
    def test_bad_values_are_refused(self, field: str, value: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            GatewaySettings(**BASE, token="t", **{field: value})
