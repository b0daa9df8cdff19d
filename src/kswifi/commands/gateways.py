"""`kswifi admin gateways add|list|rotate-token|disable|enable`: the operator's gateway registry."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.commands.common import run_in_transaction
from kswifi.control.config import Settings
from kswifi.control.gateways import service
from kswifi.control.gateways.schemas import GatewayOut
from kswifi.control.security import SecretBox, utcnow

app = typer.Typer(help="Gateways: the servers that carry the traffic.", no_args_is_help=True)

_ACTOR = "cli"


@app.command("add")
def add(
    name: Annotated[str, typer.Option(help="Unique name, e.g. eu-west-1")],
    region: Annotated[str, typer.Option(help="Region code, e.g. eu-west")],
    endpoint: Annotated[str, typer.Option(help="HOST:PORT phones dial ([addr]:port for IPv6)")],
    capacity: Annotated[
        int | None,
        typer.Option(min=1, help="Devices at once (default KSWIFI_DEFAULT_GATEWAY_CAPACITY)"),
    ] = None,
    listen_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="WireGuard listen port (default: endpoint's port)"),
    ] = None,
) -> None:
    """Register a gateway. Prints a summary, then its token alone on the last line."""

    async def work(db: AsyncSession, secrets: SecretBox, settings: Settings) -> tuple[str, str]:
        gateway, token = await service.register(
            db,
            secrets,
            settings,
            name=name,
            region_code=region,
            endpoint=endpoint,
            capacity=capacity,
            listen_port=listen_port,
            actor=_ACTOR,
        )
        out = service.to_out(gateway, active_devices=0, now=utcnow(), settings=settings)
        return _summary(out), token

    summary, token = run_in_transaction(work)
    typer.echo(summary)
    typer.echo("Token (shown once; start the agent with --token):")
    typer.echo(token)


def _summary(gateway: GatewayOut) -> str:
    return "\n".join(
        [
            f"Gateway {gateway.name} registered (id {gateway.id})",
            f"  region:      {gateway.region}",
            f"  endpoint:    {gateway.endpoint} (listen port {gateway.listen_port})",
            f"  public key:  {gateway.public_key}",
            f"  addresses:   {gateway.ipv4_pool}, {gateway.ipv6_pool}",
            f"  capacity:    {gateway.capacity} devices",
        ]
    )


@app.command("list")
def list_gateways() -> None:
    """Every gateway: region, endpoint, online, interface mode, peers, last heartbeat."""

    async def work(db: AsyncSession, _secrets: SecretBox, settings: Settings) -> list[GatewayOut]:
        return await service.list_out(db, utcnow(), settings)

    gateways = run_in_transaction(work)
    if not gateways:
        typer.echo("No gateways yet: add one with `kswifi admin gateways add`.")
        return
    header = ("NAME", "REGION", "ENDPOINT", "ONLINE", "MODE", "PEERS", "DEVICES", "LAST HEARTBEAT")
    rows = [header] + [
        (
            gateway.name + ("" if gateway.is_enabled else " (disabled)"),
            gateway.region,
            gateway.endpoint,
            "yes" if gateway.is_online else "no",
            gateway.interface_mode or "-",
            str(gateway.peer_count),
            f"{gateway.active_devices}/{gateway.capacity}",
            gateway.last_heartbeat_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            if gateway.last_heartbeat_at
            else "never",
        )
        for gateway in gateways
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@app.command("rotate-token")
def rotate_token(
    gateway: Annotated[str, typer.Argument(help="Gateway name or id")],
) -> None:
    """Issue a new token (the old one stops working); prints it alone on the last line."""

    async def work(db: AsyncSession, _secrets: SecretBox, _settings: Settings) -> tuple[str, str]:
        found = await service.find(db, gateway)
        updated, token = await service.rotate_token(db, found.id, actor=_ACTOR)
        return updated.name, token

    name, token = run_in_transaction(work)
    typer.echo(f"New token for gateway {name} (restart its agent with it):")
    typer.echo(token)


@app.command("set-endpoint")
def set_endpoint(
    name: Annotated[str, typer.Option("--name", help="Gateway name or id")],
    endpoint: Annotated[str, typer.Option(help="HOST:PORT phones dial; IPv6 as [addr]:port")],
) -> None:
    """Change where phones dial a gateway; devices get it the next time their code is shown."""

    async def work(db: AsyncSession, _secrets: SecretBox, _settings: Settings) -> tuple[str, str]:
        found = await service.find(db, name)
        updated = await service.set_endpoint(db, found.id, endpoint, actor=_ACTOR)
        return updated.name, updated.endpoint

    gateway, now = run_in_transaction(work)
    typer.echo(f"Gateway {gateway} now answers phones at {now}.")
    typer.echo("Devices get it the next time their Connect Code is shown.")


def _set_enabled(gateway: str, enabled: bool) -> None:
    async def work(db: AsyncSession, _secrets: SecretBox, _settings: Settings) -> str:
        found = await service.find(db, gateway)
        await service.set_enabled(db, found.id, enabled, actor=_ACTOR)
        return found.name

    name = run_in_transaction(work)
    typer.echo(f"Gateway {name} {'enabled' if enabled else 'disabled'}.")


@app.command("disable")
def disable(gateway: Annotated[str, typer.Argument(help="Gateway name or id")]) -> None:
    """Take a gateway out of service: no new devices, its token is refused."""
    _set_enabled(gateway, False)


@app.command("enable")
def enable(gateway: Annotated[str, typer.Argument(help="Gateway name or id")]) -> None:
    """Put a disabled gateway back in service."""
    _set_enabled(gateway, True)
