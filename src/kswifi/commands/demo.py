"""`kswifi demo` (what `make run` starts): the embedded service, ready to try in a minute.

It migrates the SQLite database, makes sure an operator account, a local gateway and a few
vouchers exist, starts the gateway agent beside the control plane when it can (root, with
wireguard-go or the kernel module, nftables and tc), and serves on http://HOST:PORT.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.commands.common import fail, run_in_transaction
from kswifi.control.config import Settings, get_settings
from kswifi.control.errors import NotFound
from kswifi.control.gateways import service as gateways
from kswifi.control.models import Plan, Voucher
from kswifi.control.profiles import qr
from kswifi.control.purchases import service as purchases
from kswifi.control.security import SecretBox
from kswifi.control.users import service as users

ADMIN_EMAIL = "admin@example.com"
GATEWAY_NAME = "local-1"
GATEWAY_COMMANDS = ("ip", "nft", "tc", "wg")


@dataclass
class DemoState:
    admin_password: str
    gateway_token: str
    vouchers: dict[str, list[str]]


def _secret_file(path: Path, make: str) -> str:
    """Read a secret kept in the data dir, writing `make` there first if it is missing."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(make + "\n")
    path.chmod(0o600)
    return make


def _prepare(settings: Settings, gateway_endpoint: str) -> DemoState:
    password_file = settings.data_dir / "admin-password"
    token_file = settings.data_dir / f"gateway-{GATEWAY_NAME}.token"

    async def work(db: AsyncSession, box: SecretBox, settings: Settings) -> DemoState:
        password = _secret_file(password_file, pysecrets.token_urlsafe(12))
        try:
            await users.get_user_by_email(db, ADMIN_EMAIL)
        except NotFound:
            await users.register(db, ADMIN_EMAIL, password, is_admin=True)
        try:
            found = await gateways.find(db, GATEWAY_NAME)
            if found.endpoint != gateways.normalize_endpoint(gateway_endpoint):
                await gateways.set_endpoint(db, found.id, gateway_endpoint, actor="demo")
            token = token_file.read_text().strip() if token_file.exists() else ""
            if not token:
                _gateway, token = await gateways.rotate_token(
                    db, (await gateways.find(db, GATEWAY_NAME)).id, actor="demo"
                )
                _secret_file(token_file, token)
        except NotFound:
            _gateway, token = await gateways.register(
                db,
                box,
                settings,
                name=GATEWAY_NAME,
                region_code="us-east",
                endpoint=gateway_endpoint,
                actor="demo",
            )
            token_file.unlink(missing_ok=True)
            _secret_file(token_file, token)
        vouchers: dict[str, list[str]] = {}
        for plan_code in ("basic", "premium", "ultra"):
            unused = await _unused_vouchers(db, plan_code)
            if len(unused) < 2:
                unused += await purchases.create_vouchers(
                    db, plan_code=plan_code, count=2 - len(unused), actor="demo"
                )
            vouchers[plan_code] = sorted(unused)
        return DemoState(password, token, vouchers)

    return run_in_transaction(work)


async def _unused_vouchers(db: AsyncSession, plan_code: str) -> list[str]:
    rows = await db.scalars(
        select(Voucher.code)
        .join(Plan, Plan.id == Voucher.plan_id)
        .where(Plan.code == plan_code, Voucher.redeemed_at.is_(None))
        .order_by(Voucher.created_at, Voucher.code)
        .limit(2)
    )
    return list(rows)


def _ip_json(*arguments: str) -> list[dict[str, Any]]:
    """What `ip -j ARGUMENTS` lists (empty when `ip` is missing, fails or says nonsense)."""
    try:
        result = subprocess.run(
            ["ip", "-j", *arguments], capture_output=True, text=True, timeout=5, check=True
        )
        listed = json.loads(result.stdout or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return [item for item in listed if isinstance(item, dict)] if isinstance(listed, list) else []


def _default_route_interface() -> str | None:
    for route in _ip_json("route", "show", "default"):
        if route.get("dev"):
            return str(route["dev"])
    return None


def lan_address() -> str | None:
    """The IPv4 address of the interface the default route leaves by (what a phone on the
    same network reaches this machine at)."""
    interface = _default_route_interface()
    if interface is None:
        return None
    for link in _ip_json("-4", "addr", "show", "dev", interface):
        for address in link.get("addr_info", []):
            if address.get("family") == "inet" and address.get("scope") == "global":
                return str(address["local"])
    return None


def _why_no_gateway() -> str | None:
    """None when a local gateway can run here, else the reason in one line."""
    if os.geteuid() != 0:
        return "not running as root (`sudo make run` starts one)"
    missing = [name for name in GATEWAY_COMMANDS if shutil.which(name) is None]
    if missing:
        return f"missing commands: {', '.join(missing)} (make run installs them as root)"
    if shutil.which("wireguard-go") is None and not Path("/sys/module/wireguard").exists():
        return "neither the WireGuard kernel module nor wireguard-go is available"
    if _default_route_interface() is None:
        return "no default route to masquerade through (set KSWIFI_GATEWAY_WAN_INTERFACE)"
    return None


def _start_gateway(
    settings: Settings, control_url: str, token: str, endpoint: str
) -> subprocess.Popen[bytes]:
    wan = os.environ.get("KSWIFI_GATEWAY_WAN_INTERFACE") or _default_route_interface() or "eth0"
    state_dir = settings.data_dir / "gateway"
    log_path = settings.data_dir / "gateway.log"
    log_file = log_path.open("ab")
    command = [
        sys.executable,
        "-m",
        "kswifi.cli",
        "gateway",
        "run",
        "--control-url",
        control_url,
        "--endpoint",
        endpoint,
        "--wan-interface",
        wan,
        "--state-dir",
        str(state_dir),
    ]
    env = {**os.environ, "KSWIFI_GATEWAY_TOKEN": token}
    return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)


def demo(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    gateway_endpoint: Annotated[
        str, typer.Option(help="HOST:PORT phones dial for the local gateway")
    ] = "127.0.0.1:51820",
    gateway: Annotated[bool, typer.Option(help="Start a local gateway when possible")] = True,
    lan: Annotated[
        bool,
        typer.Option(
            help="Serve on this machine's LAN address and register the local gateway there, "
            "so a phone on the same network can try it (prints a QR code of the app)"
        ),
    ] = False,
) -> None:
    """Start KSWiFi Connect on the embedded default, with an operator account and vouchers."""
    import uvicorn

    from kswifi.control.app import create_app
    from kswifi.control.migrate import upgrade

    if lan:
        address = lan_address()
        if address is None:
            fail("--lan: no IPv4 address on the interface of the default route")
        host, gateway_endpoint = address, f"{address}:{gateway_endpoint.rsplit(':', 1)[1]}"

    os.environ.setdefault("KSWIFI_DEV_PAYMENTS", "true")
    os.environ.setdefault("KSWIFI_PUBLIC_URL", f"http://{host}:{port}")
    get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    typer.echo(f"==> database: {settings.resolved_database_url}")
    try:
        upgrade(settings.resolved_database_url)
    except Exception as exc:
        fail(f"migration failed: {type(exc).__name__}: {exc}".splitlines()[0])
    state = _prepare(settings, gateway_endpoint)

    agent: subprocess.Popen[bytes] | None = None
    reason = _why_no_gateway() if gateway else "switched off with --no-gateway"
    if reason is None:
        agent = _start_gateway(
            settings, f"http://{host}:{port}", state.gateway_token, gateway_endpoint
        )
        gateway_line = (
            f"local gateway {GATEWAY_NAME} running (log: {settings.data_dir / 'gateway.log'})"
        )
    else:
        gateway_line = f"no local gateway: {reason}; profiles are issued, traffic does not flow"

    lines = [
        "",
        "KSWiFi Connect is starting",
        f"  open        {settings.public_url}",
        f"  operator    {ADMIN_EMAIL} / {state.admin_password}  (console at /admin)",
        f"  API docs    {settings.public_url}/api/docs",
        "  payments    the free `dev` provider is on; or redeem a voucher:",
    ]
    lines += [f"    {plan:<8} {', '.join(codes)}" for plan, codes in state.vouchers.items()]
    lines += [f"  gateway     {gateway_line}"]
    if lan:
        lines += [
            f"  a phone on this network: scan this to open {settings.public_url}",
            qr.terminal_text(settings.public_url),
        ]
    lines += ["  stop with Ctrl-C", ""]
    typer.echo("\n".join(lines))
    try:
        uvicorn.run(
            create_app(settings, with_worker=True), host=host, port=port, log_level="warning"
        )
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
            typer.echo(
                "The local gateway's WireGuard interface, firewall table and shapers stay in"
                " the kernel (phones keep their tunnels through a restart). Remove them with:"
                " sudo kswifi gateway down"
            )
