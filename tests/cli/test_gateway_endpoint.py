"""`kswifi admin gateways set-endpoint`: where phones dial a gateway, changed by an operator;
devices get it the next time their code is shown."""

from __future__ import annotations

from typer.testing import CliRunner

from kswifi.cli import app
from kswifi.control.config import Settings


def test_set_endpoint_changes_it_and_refuses_bad_input(demo_settings: Settings) -> None:
    runner = CliRunner()
    added = runner.invoke(
        app,
        ["admin", "gateways", "add", "--name", "home", "--region", "eu-west",
         "--endpoint", "127.0.0.1:51820"],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    changed = runner.invoke(
        app,
        ["admin", "gateways", "set-endpoint", "--name", "home", "--endpoint", "192.0.2.7:51820"],
    )
    assert changed.exit_code == 0, changed.output
    assert "Gateway home now answers phones at 192.0.2.7:51820." in changed.output
    listed = runner.invoke(app, ["admin", "gateways", "list"])
    assert "192.0.2.7:51820" in listed.output and "127.0.0.1:51820" not in listed.output
    for bad in ("192.0.2.7", "192.0.2.7:99999", "not a host:51820"):
        refused = runner.invoke(
            app, ["admin", "gateways", "set-endpoint", "--name", "home", "--endpoint", bad]
        )
        assert refused.exit_code != 0
        assert "Traceback" not in refused.output and "endpoint" in refused.output
    missing = runner.invoke(
        app, ["admin", "gateways", "set-endpoint", "--name", "nope", "--endpoint", "a.b:1"]
    )
    assert missing.exit_code != 0 and "No gateway 'nope'" in missing.output
    assert "192.0.2.7:51820" in runner.invoke(app, ["admin", "gateways", "list"]).output
