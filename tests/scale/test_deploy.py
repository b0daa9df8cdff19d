"""Everything in deploy/ is exercised: units verified by systemd, nginx files parsed, env files
hold only real settings, the topology checker, and a backup/restore round trip."""

from __future__ import annotations

import asyncio
import configparser
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import crossplane
import pytest

from kswifi.agent.config import GatewaySettings
from kswifi.control.config import Settings
from tests.scale.replicas import PG_DSN, scale_database

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALLED_BINARY = "/opt/kswifi/venv/bin/kswifi"
KSWIFI = Path(sys.executable).with_name("kswifi")


def _unit(path: Path) -> configparser.ConfigParser:
    """A unit file as INI (systemd allows repeated keys: the parser keeps the last)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


class TestSystemdUnits:
    def test_units_exist(self) -> None:
        assert {path.name for path in UNITS} == {
            "kswifi-control@.service",
            "kswifi-gateway.service",
            "kswifi-migrate.service",
        }

    @pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
    def test_systemd_analyze_verify(self, tmp_path: Path) -> None:
        """systemd itself reads every unit; the binary path points at this checkout's venv."""
        assert KSWIFI.exists()
        names = []
        for unit in UNITS:
            name = unit.name.replace("@.service", "@8001.service")
            text = unit.read_text().replace(INSTALLED_BINARY, str(KSWIFI))
            (tmp_path / name).write_text(text)
            names.append(str(tmp_path / name))
        result = subprocess.run(
            ["systemd-analyze", "verify", *names],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
        )
        output = (result.stdout + result.stderr).strip()
        assert result.returncode == 0, output
        problems = [line for line in output.splitlines() if "kswifi" in line]
        assert problems == [], output

    def test_every_unit_is_hardened_and_reads_an_environment_file(self) -> None:
        for path in UNITS:
            service = _unit(path)["Service"]
            assert service["ExecStart"].startswith(INSTALLED_BINARY), path.name
            assert service["EnvironmentFile"].startswith("/etc/kswifi/"), path.name
            for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
                assert service.get(key) in ("yes", "strict"), (path.name, key)

    def test_control_plane_has_no_privileges(self) -> None:
        service = _unit(DEPLOY / "systemd" / "kswifi-control@.service")["Service"]
        assert service["DynamicUser"] == "yes"
        assert service["CapabilityBoundingSet"] == ""
        assert "--no-migrate" in service["ExecStart"] and "%i" in service["ExecStart"]
        assert "127.0.0.1" in service["ExecStart"]

    def test_gateway_has_a_dedicated_user_and_only_net_admin(self) -> None:
        service = _unit(DEPLOY / "systemd" / "kswifi-gateway.service")["Service"]
        assert service["User"] == "kswifi-gateway"
        assert service["AmbientCapabilities"] == "CAP_NET_ADMIN"
        assert service["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
        assert "/dev/net/tun" in service["DeviceAllow"]
        assert service["ExecStart"].endswith("gateway run")


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


class TestEnvironmentFiles:
    def test_control_env_names_only_real_settings_and_parses(self, tmp_path: Path) -> None:
        values = _env_file(DEPLOY / "env" / "control.env.example")
        known = {f"KSWIFI_{name.upper()}" for name in Settings.model_fields}
        assert set(values) <= known, set(values) - known
        settings = Settings(_env_file=DEPLOY / "env" / "control.env.example")  # type: ignore[call-arg]
        assert settings.database_url.startswith("postgresql+asyncpg://")
        assert settings.events_url.startswith("redis://")
        assert "{region}" in settings.region_probe_url

    def test_gateway_env_names_only_real_settings_and_parses(self) -> None:
        values = _env_file(DEPLOY / "env" / "gateway.env.example")
        known = {f"KSWIFI_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
        assert set(values) <= known, set(values) - known
        settings = GatewaySettings(_env_file=DEPLOY / "env" / "gateway.env.example")  # type: ignore[call-arg]
        assert settings.wan_interface == "eth0"

    def test_sysctl_file(self) -> None:
        lines = [
            line
            for line in (DEPLOY / "sysctl.d" / "90-kswifi-gateway.conf").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        settings = dict(line.replace(" ", "").split("=", 1) for line in lines)
        assert settings == {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}


def _parse_nginx(path: Path, tmp_path: Path) -> list[dict[str, object]]:
    """The file inside an nginx.conf's http block, parsed with directive and context checks."""
    main = tmp_path / "nginx.conf"
    main.write_text(f"events {{}}\nhttp {{\n    include {path};\n}}\n")
    payload = crossplane.parse(str(main), check_ctx=True, check_args=True)
    errors = [error for config in payload["config"] for error in config["errors"]]
    assert payload["status"] == "ok" and errors == [], errors
    included = [config for config in payload["config"] if config["file"] == str(path)]
    assert len(included) == 1
    parsed: list[dict[str, object]] = included[0]["parsed"]
    return parsed


def _find(block: list[dict[str, object]], directive: str) -> list[dict[str, object]]:
    found = []
    for entry in block:
        if entry["directive"] == directive:
            found.append(entry)
        found.extend(_find(entry.get("block", []), directive))  # type: ignore[arg-type]
    return found


class TestNginx:
    def test_control_plane_config(self, tmp_path: Path) -> None:
        parsed = _parse_nginx(DEPLOY / "nginx" / "kswifi-control.conf", tmp_path)
        locations = {" ".join(entry["args"]): entry for entry in _find(parsed, "location")}  # type: ignore[arg-type]
        stream = locations["~ ^/api/sessions/[^/]+/usage/stream$"]
        assert ["off"] in [d["args"] for d in _find(stream["block"], "proxy_buffering")]  # type: ignore[arg-type]
        assert [d["args"] for d in _find(locations["= /metrics"]["block"], "deny")] == [["all"]]  # type: ignore[arg-type]
        forwarded = [d["args"] for d in _find(parsed, "proxy_set_header")]
        assert ["X-Forwarded-For", "$remote_addr"] in forwarded
        upstream = _find(parsed, "upstream")[0]
        assert len(_find(upstream["block"], "server")) == 2  # type: ignore[arg-type]

    def test_probe_config(self, tmp_path: Path) -> None:
        parsed = _parse_nginx(DEPLOY / "nginx" / "kswifi-probe.conf", tmp_path)
        returns = [d["args"] for d in _find(parsed, "return")]
        assert ["204"] in returns
        headers = [d["args"] for d in _find(parsed, "add_header")]
        assert ["Cache-Control", "no-store", "always"] in headers


class TestTopology:
    def _run(self, path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(DEPLOY / "scripts" / "topology.py"), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_example_topology_checks_out_and_prints_the_steps(self) -> None:
        result = self._run(DEPLOY / "topology.example.toml")
        assert result.returncode == 0, result.stderr
        adds = [line for line in result.stdout.splitlines() if "gateways add" in line]
        assert len(adds) == 5
        assert any("--region ap-southeast" in line for line in adds)
        assert "kswifi-control@8001 kswifi-control@8002" in result.stdout

    def test_a_broken_topology_is_refused_with_reasons(self, tmp_path: Path) -> None:
        text = (DEPLOY / "topology.example.toml").read_text()
        broken = tmp_path / "broken.toml"
        broken.write_text(
            text.replace('continent = "AS"', 'continent = "XX"').replace(
                'region = "us-east"\nendpoint = "gw2', 'region = "mars"\nendpoint = "gw2'
            )
        )
        result = self._run(broken)
        assert result.returncode == 1
        assert "continent" in result.stderr and "'mars' is not defined" in result.stderr


async def _pg_counts(dsn: str) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        tables = [
            row["tablename"]
            for row in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        ]
        return {
            table: int(await connection.fetchval(f'SELECT count(*) FROM "{table}"'))
            for table in tables
        }
    finally:
        await connection.close()


async def _pg(sql: str) -> None:
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.mark.postgres
@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="no pg_dump")
def test_backup_and_restore_round_trip(tmp_path: Path) -> None:
    scripts = DEPLOY / "scripts"
    with scale_database("kswifi_backup") as database:
        original = asyncio.run(_pg_counts(database.dsn))
        assert original["plans"] == 3 and original["regions"] == 3
        backups = tmp_path / "backups"
        for _ in range(3):
            result = subprocess.run(
                ["bash", str(scripts / "backup-db.sh"), database.dsn, str(backups), "2"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
        dumps = sorted(backups.glob("kswifi-*.dump"))
        assert 1 <= len(dumps) <= 2  # one per second at most; the newest two kept
        assert not list(backups.glob(".*partial"))
        dump = result.stdout.strip()

        restored = f"kswifi_restored_{uuid.uuid4().hex[:8]}"
        asyncio.run(_pg(f'CREATE DATABASE "{restored}"'))
        try:
            dsn = f"{PG_DSN.rsplit('/', 1)[0]}/{restored}"
            env = {**os.environ, "KSWIFI_BIN": str(KSWIFI), "KSWIFI_DATA_DIR": str(tmp_path)}
            result = subprocess.run(
                ["bash", str(scripts / "restore-db.sh"), dsn, dump],
                capture_output=True,
                text=True,
                timeout=180,
                env=env,
            )
            assert result.returncode == 0, result.stderr + result.stdout
            assert asyncio.run(_pg_counts(dsn)) == original
            again = subprocess.run(
                ["bash", str(scripts / "restore-db.sh"), dsn, dump],
                capture_output=True,
                text=True,
                timeout=180,
                env=env,
            )
            assert again.returncode == 1 and "refusing" in again.stderr
        finally:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)'))
