"""The README says what the code does: its settings table is the settings classes' own."""

from __future__ import annotations

from pathlib import Path

from kswifi.commands.settings_doc import settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "run `kswifi settings --readme README.md`"


def test_readme_quick_start_is_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
