"""The `kswifi` command: serve, database, operator tasks, the gateway agent and the demo."""

from __future__ import annotations

import gc
import importlib
from pathlib import Path
from typing import Annotated

import typer

from kswifi import __version__
from kswifi.commands.common import fail
from kswifi.control.config import get_settings

app = typer.Typer(
    name="kswifi",
    help="KSWiFi Connect: prepaid, metered Secure Internet Access.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
admin_app = typer.Typer(
    help="Operator tasks: users, plans, vouchers, gateways.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")

# Command groups that live in their own modules: (module, attribute, parent, name).
_GROUPS = [
    ("kswifi.commands.users", "app", admin_app, "users"),
    ("kswifi.commands.plans", "app", admin_app, "plans"),
    ("kswifi.commands.vouchers", "app", admin_app, "vouchers"),
    ("kswifi.commands.gateways", "app", admin_app, "gateways"),
    ("kswifi.agent.cli", "gateway_app", app, "gateway"),
]
for module_name, attribute, parent, group_name in _GROUPS:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        continue
    parent.add_typer(getattr(module, attribute), name=group_name)


@app.command("demo")
def demo_command(
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
            "so a phone on the same network can try it (what `make run-lan` does)"
        ),
    ] = False,
) -> None:
    """Start KSWiFi Connect on the embedded default (what `make run` does)."""
    from kswifi.commands.demo import demo

    demo(host=host, port=port, gateway_endpoint=gateway_endpoint, gateway=gateway, lan=lan)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command("settings")
def settings_command(
    readme: Annotated[Path | None, typer.Option(help="Rewrite the table in this README")] = None,
) -> None:
    """Print the settings table (or rewrite it in the README)."""
    from kswifi.commands.settings_doc import replace_table, settings_table

    if readme is None:
        typer.echo(settings_table())
        return
    readme.write_text(replace_table(readme.read_text()))
    typer.echo(f"updated {readme}")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the schema migrations to KSWIFI_DATABASE_URL."""
    from kswifi.control.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        upgrade(settings.resolved_database_url, revision)
    except Exception as exc:  # an operator sees one line, not a traceback
        fail(f"migration failed: {type(exc).__name__}: {exc}".splitlines()[0])
    typer.echo(f"database at {revision}")


def _settle_garbage_collector() -> None:
    """Leave what the process loaded to start (modules, models, routes: most of its heap) out
    of garbage collection, and collect the young generation less often. A replica serving
    thousands of streams otherwise spends a large share of its time re-scanning that heap."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 10)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    uds: Annotated[Path | None, typer.Option(help="Listen on this Unix socket instead")] = None,
    migrate: Annotated[bool, typer.Option(help="Run migrations before starting")] = True,
) -> None:
    """Run the control plane (API, web app, worker)."""
    import uvicorn

    from kswifi.control.app import create_app
    from kswifi.control.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        try:
            upgrade(settings.resolved_database_url)
        except Exception as exc:
            fail(f"migration failed: {type(exc).__name__}: {exc}".splitlines()[0])
    application = create_app(settings, with_worker=settings.run_worker)
    _settle_garbage_collector()
    if uds is not None:
        uds.parent.mkdir(parents=True, exist_ok=True)
        uds.unlink(missing_ok=True)
        uvicorn.run(application, uds=str(uds), log_level="warning")
    else:
        uvicorn.run(application, host=host, port=port, log_level="warning")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
