"""`kswifi gateway run`: the typer app the main `kswifi` CLI mounts as `gateway`."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from kswifi.agent.client import ControlPlaneClient
from kswifi.agent.config import GatewaySettings, check_interface_name
from kswifi.agent.dataplane import KernelDataplane
from kswifi.agent.drivers.command import CommandRunner
from kswifi.agent.drivers.loop import DEFAULT_ROUTE_TABLE, DownloadLoop
from kswifi.agent.drivers.nftables import NftConfig, NftTable
from kswifi.agent.drivers.tc import TcShaper
from kswifi.agent.drivers.wireguard import WireguardInterface
from kswifi.agent.errors import AgentError, AuthenticationError, ControlPlaneError
from kswifi.agent.main import Agent
from kswifi.agent.metrics import AgentMetrics
from kswifi.logs import configure_logging, get_logger

log = get_logger("kswifi.agent")

gateway_app = typer.Typer(
    help="Run a KSWiFi gateway: WireGuard + nftables quotas + tc speed tiers.",
    no_args_is_help=True,
)

REQUIRED_COMMANDS = ("ip", "nft", "tc", "wg", "sysctl")
CAP_NET_ADMIN = 12


@gateway_app.callback()
def gateway() -> None:
    """Run a KSWiFi gateway: WireGuard + nftables quotas + tc speed tiers."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def build_settings(options: dict[str, Any]) -> GatewaySettings:
    """Settings from CLI options over `KSWIFI_GATEWAY_*`; a clear error for bad input."""
    given = {key: value for key, value in options.items() if value is not None}
    try:
        return GatewaySettings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "settings"
            flag = "--" + name.replace("_", "-")
            env = "KSWIFI_GATEWAY_" + name.upper()
            problems.append(f"{flag} / {env}: {error['msg']}")
        raise _fail("invalid gateway settings:\n  " + "\n  ".join(problems)) from None


def build_dataplane(settings: GatewaySettings) -> KernelDataplane:
    runner = CommandRunner(timeout_s=settings.command_timeout_s)
    return KernelDataplane(
        runner=runner,
        wireguard=WireguardInterface(
            runner, settings.interface, userspace_only=settings.userspace_only
        ),
        nft=NftTable(runner, NftConfig(settings.interface, settings.wan_interface)),
        tc=TcShaper(runner, settings.interface, settings.ifb_name),
        loop=DownloadLoop(
            runner, settings.wan_interface, settings.interface, table=settings.route_table
        ),
        policy=settings.firewall,
    )


def effective_capabilities(status: str | None = None) -> int:
    """The process' effective capability set (`CapEff` of /proc/self/status)."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def preflight(settings: GatewaySettings) -> None:
    """Operator mistakes caught before touching anything."""
    if not effective_capabilities() & (1 << CAP_NET_ADMIN):
        raise _fail(
            "the gateway needs CAP_NET_ADMIN (it configures WireGuard, nftables and tc): run it"
            " as the shipped systemd unit does (AmbientCapabilities=CAP_NET_ADMIN) or as root",
            1,
        )
    missing = [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]
    if missing:
        raise _fail(
            f"missing commands: {', '.join(missing)} "
            "(apt-get install wireguard-tools nftables iproute2 procps)",
            1,
        )
    if not Path(f"/sys/class/net/{settings.wan_interface}").exists():
        raise _fail(f"WAN interface {settings.wan_interface!r} does not exist", 2)
    if settings.control_url.startswith("unix:"):
        socket_path = Path(settings.control_url[len("unix:") :])
        if not socket_path.parent.exists():
            raise _fail(f"control-plane socket directory {socket_path.parent} does not exist", 2)


async def _run(settings: GatewaySettings) -> int:
    client = ControlPlaneClient(
        settings.control_url,
        settings.token_value,
        poll_timeout_s=settings.poll_timeout_s,
    )
    try:
        try:
            await client.desired_update()
        except AuthenticationError:
            typer.echo(
                "error: the control plane refused the gateway token "
                "(check --token-file / KSWIFI_GATEWAY_TOKEN)",
                err=True,
            )
            return 3
        except ControlPlaneError as exc:
            typer.echo(
                f"warning: control plane not reachable yet ({exc}); enforcing last state", err=True
            )
        metrics = AgentMetrics()
        agent = Agent(settings, build_dataplane(settings), client, metrics=metrics)
        if settings.metrics_listen:
            metrics.watch(agent)
            try:
                metrics.serve(settings.metrics_listen)
            except OSError as exc:
                raise _fail(
                    f"cannot serve metrics on {settings.metrics_listen}: {exc}", 1
                ) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()
        return 0
    finally:
        await client.aclose()


@gateway_app.command("run")
def run(
    control_url: Annotated[
        str | None, typer.Option(help="http(s)://host[:port] or unix:/path/to.sock")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the gateway token (or KSWIFI_GATEWAY_TOKEN)"),
    ] = None,
    token: Annotated[str | None, typer.Option(hidden=True)] = None,
    endpoint: Annotated[str | None, typer.Option(help="HOST:PORT phones connect to")] = None,
    wan_interface: Annotated[
        str | None, typer.Option(help="Interface towards the Internet")
    ] = None,
    interface: Annotated[str | None, typer.Option(help="WireGuard interface [kswifi0]")] = None,
    listen_port: Annotated[int | None, typer.Option(help="WireGuard UDP port [51820]")] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Agent state [/var/lib/kswifi/gateway]")
    ] = None,
    ifb_interface: Annotated[str | None, typer.Option(help="IFB device for upload")] = None,
    userspace_only: Annotated[
        bool | None, typer.Option(help="Use wireguard-go even if the kernel module exists")
    ] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(help="Serve Prometheus /metrics on HOST:PORT (off if unset)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    log_json: Annotated[bool, typer.Option(help="JSON log lines")] = False,
) -> None:
    """Run the gateway agent until SIGINT/SIGTERM (the data plane stays up when it stops)."""
    if token is not None:
        raise _fail(
            "the token is never taken from the command line (every local user can read it"
            " with ps): use --token-file FILE or KSWIFI_GATEWAY_TOKEN"
        )
    settings = build_settings(
        {
            "control_url": control_url,
            "token_file": token_file,
            "endpoint": endpoint,
            "wan_interface": wan_interface,
            "interface": interface,
            "listen_port": listen_port,
            "state_dir": state_dir,
            "ifb_interface": ifb_interface,
            "userspace_only": userspace_only,
            "metrics_listen": metrics_listen,
        }
    )
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise _fail(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    preflight(settings)
    configure_logging(log_level, json=log_json)
    try:
        code = asyncio.run(_run(settings))
    except AgentError as exc:
        raise _fail(f"gateway stopped: {exc}", 1) from None
    except KeyboardInterrupt:
        code = 130
    if code:
        raise typer.Exit(code)


def teardown(runner: CommandRunner, interface: str, ifb: str, route_table: int) -> list[str]:
    """Remove everything a gateway agent put in the kernel (the interface, the firewall table,
    the shapers, the download loop); what was removed, for the operator."""
    removed: list[str] = []
    wireguard = WireguardInterface(runner, interface)
    tc = TcShaper(runner, interface, ifb)
    nft = NftTable(runner, NftConfig(interface, "none"), netlink=None)
    loop = DownloadLoop(runner, "none", interface, table=route_table)
    for what, step in (
        (f"shapers on {tc.download_interface} and {ifb}", tc.teardown),
        ("download loop, its routes and rules", loop.teardown),
        ("nftables table inet kswifi", nft.delete_table),
        (f"WireGuard interface {interface}", wireguard.delete_interface),
    ):
        try:
            step()
        except AgentError as exc:
            log.warning("teardown_step_failed", step=what, error=str(exc))
            continue
        removed.append(what)
    return removed


@gateway_app.command("down")
def down(
    interface: Annotated[str, typer.Option(help="WireGuard interface the agent owned")] = (
        "kswifi0"
    ),
    ifb_interface: Annotated[
        str | None, typer.Option(help="IFB device for upload [ifb-INTERFACE]")
    ] = None,
    route_table: Annotated[
        int, typer.Option(help="Routing table of the download loop")
    ] = DEFAULT_ROUTE_TABLE,
) -> None:
    """Remove what a stopped gateway agent left in the kernel (the data plane stays up when
    the agent stops, so phones keep their tunnels through a restart): its WireGuard
    interface, firewall table, shapers and download loop. Phones on it lose their tunnel."""
    try:
        interface = check_interface_name(interface)
        ifb = check_interface_name(ifb_interface) if ifb_interface else ("ifb-" + interface)[:15]
    except ValueError as exc:
        raise _fail(str(exc)) from None
    runner = CommandRunner(timeout_s=20.0)
    for item in teardown(runner, interface, ifb, route_table):
        typer.echo(f"removed: {item}")
