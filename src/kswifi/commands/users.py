"""`kswifi admin users`: create and list accounts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from kswifi.commands.common import run_in_transaction
from kswifi.control.config import Settings
from kswifi.control.models import User
from kswifi.control.security import SecretBox
from kswifi.control.users import service

app = typer.Typer(help="Accounts: create operators and users, list them.", no_args_is_help=True)


@app.command("create")
def create(
    email: Annotated[str, typer.Option(help="Login email (stored lower-cased)")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            help="8 to 256 characters; asked for when not given",
        ),
    ],
    admin: Annotated[bool, typer.Option("--admin", help="An operator account")] = False,
) -> None:
    """Create an account and print its id and email."""

    async def work(db: AsyncSession, _secrets: SecretBox, _settings: Settings) -> User:
        return await service.register(db, email, password, is_admin=admin)

    user = run_in_transaction(work)
    typer.echo(f"{user.id} {user.email}")


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, help="At most this many")] = 1000,
) -> None:
    """One line per account, oldest first: id, email, role, status, created."""

    async def work(db: AsyncSession, _secrets: SecretBox, _settings: Settings) -> Sequence[User]:
        return await service.list_users(db, limit=limit)

    users = run_in_transaction(work)
    for user in users:
        role = "admin" if user.is_admin else "user"
        state = "disabled" if user.is_disabled else "active"
        typer.echo(
            f"{user.id}\t{user.email}\t{role}\t{state}\t{user.created_at.isoformat(timespec='seconds')}"
        )
    if not users:
        typer.echo("no users", err=True)
