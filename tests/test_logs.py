"""One logging setup for the control plane and the agent: secrets never reach a log line."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from kswifi.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """structlog's configuration is global: leave it as the other tests found it."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.parametrize("as_json", [False, True])
def test_secret_fields_are_redacted_in_both_formats(
    capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    configure_logging("info", json=as_json)
    log = structlog.get_logger("kswifi.agent")
    log.info("peer_added", token="gw-token-s3cr3t", preshared_key="psk-s3cr3t", session_id="s1")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "s3cr3t" not in line
    assert "s1" in line and "[redacted]" in line
    if as_json:
        assert json.loads(line)["token"] == "[redacted]"


def test_the_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning")
    log = structlog.get_logger("kswifi.agent")
    log.info("quiet")
    log.warning("loud")
    err = capsys.readouterr().err
    assert "loud" in err and "quiet" not in err
