"""Fixtures of the CLI tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kswifi.control.config import Settings, get_settings
from kswifi.control.migrate import upgrade


@pytest.fixture
def demo_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The settings of a fresh embedded install (SQLite in a temporary data dir), migrated."""
    monkeypatch.setenv("KSWIFI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KSWIFI_DATABASE_URL", "")
    monkeypatch.delenv("KSWIFI_SECRET_KEY", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.resolved_database_url)
    yield settings
    get_settings.cache_clear()
