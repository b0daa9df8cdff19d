"""Screenshots of the main pages at phone and desktop sizes (see tests/browser/screenshots.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.browser.conftest import LiveServer
from tests.browser.screenshots import DEFAULT_OUT, capture


def test_main_pages_at_phone_and_desktop_sizes(
    browser: Any, live_server: LiveServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    out = getattr(request.config, "kswifi_screenshots_dir", None)
    if out is None:
        out = DEFAULT_OUT if os.environ.get("KSWIFI_WRITE_SCREENSHOTS") == "1" else tmp_path
    shots = capture(browser, live_server, Path(out))
    names = {path.name for path in shots}
    for page in ("home", "plans", "setup", "profile-ready", "usage", "console-gateways"):
        assert f"phone-{page}.png" in names
        assert f"desktop-{page}.png" in names
    for path in shots:
        width = Image.open(path).size[0]
        assert width == (390 if path.name.startswith("phone-") else 1280), path.name
