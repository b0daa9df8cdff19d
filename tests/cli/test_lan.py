"""`make run-lan` (`kswifi demo --lan`): served on the machine's LAN address, the local gateway
registered where a phone on that network dials it, a QR code of the app in the terminal, and a
second start on another address moves the gateway's endpoint along. Run in a network
namespace the test made (a LAN address from 192.0.2.0/24)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kswifi.control.profiles import qr
from tests.agent.netlab import Lab, root_skip_reason

pytestmark = pytest.mark.root

KSWIFI = str(Path(sys.executable).with_name("kswifi"))
PORT = 18080


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = root_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        yield lab
    finally:
        lab.cleanup()


def _start(lab: Lab, ns: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "KSWIFI_DATA_DIR": str(data_dir), "KSWIFI_DATABASE_URL": ""}
    env.pop("KSWIFI_PUBLIC_URL", None)
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns, KSWIFI, "demo", "--lan", "--no-gateway", "--port", str(PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    lab.processes.append(process)
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "stop with Ctrl-C" in line:
            break
    return process, "\n".join(lines)


def _set_lan(lab: Lab, ns: str, link: str, address: str) -> None:
    lab.sh(ns, ["ip", "addr", "flush", "dev", link])
    lab.sh(ns, ["ip", "addr", "add", f"{address}/24", "dev", link])
    lab.sh(ns, ["ip", "route", "replace", "default", "via", "192.0.2.254", "dev", link, "onlink"])


def _answers(lab: Lab, ns: str, url: str) -> bool:
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=2).status)"
    try:
        return lab.sh(ns, [sys.executable, "-c", code], timeout=10).strip() == "200"
    except Exception:
        return False


def _gateway_endpoint(data_dir: Path) -> str:
    env = {**os.environ, "KSWIFI_DATA_DIR": str(data_dir), "KSWIFI_DATABASE_URL": ""}
    out = subprocess.run(
        [KSWIFI, "admin", "gateways", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout
    [line] = [line for line in out.splitlines() if "local" in line]
    return next(word for word in line.split() if word.endswith(":51820"))


def test_lan_mode_serves_on_the_lan_address_and_moves_the_endpoint(lab: Lab) -> None:
    ns = lab.netns("lan")
    link, peer = lab.ifname("l0"), lab.ifname("l1")
    lab.sh(ns, ["ip", "link", "add", link, "type", "veth", "peer", "name", peer])
    lab.sh(ns, ["ip", "link", "set", link, "up"])
    lab.sh(ns, ["ip", "link", "set", peer, "up"])
    _set_lan(lab, ns, link, "192.0.2.20")
    data_dir = Path(tempfile.mkdtemp(prefix=f"kswifi-lan-{lab.prefix}-"))
    try:
        _lan_mode(lab, ns, link, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _lan_mode(lab: Lab, ns: str, link: str, data_dir: Path) -> None:
    process, printed = _start(lab, ns, data_dir)
    url = f"http://192.0.2.20:{PORT}"
    assert f"open        {url}" in printed, printed
    # The terminal QR code holds the app's URL: the rows drawn are the code's modules.
    drawn = printed.split(f"scan this to open {url}\n", 1)[1].splitlines()
    expected = qr.terminal_text(url).splitlines()
    assert drawn[: len(expected)] == expected
    deadline = time.monotonic() + 30
    while not _answers(lab, ns, f"{url}/api/plans"):
        assert time.monotonic() < deadline, "the app did not answer on the LAN address"
        time.sleep(0.3)
    process.terminate()
    process.wait(20)
    assert _gateway_endpoint(data_dir) == "192.0.2.20:51820"

    # The machine moved to another network: a new start moves the gateway's endpoint along.
    _set_lan(lab, ns, link, "192.0.2.33")
    process, printed = _start(lab, ns, data_dir)
    assert f"open        http://192.0.2.33:{PORT}" in printed
    process.terminate()
    process.wait(20)
    assert _gateway_endpoint(data_dir) == "192.0.2.33:51820"


def test_the_terminal_code_decodes_to_the_url() -> None:
    import zxingcpp
    from PIL import Image

    text = qr.terminal_text("http://192.0.2.20:18080")
    rows: list[list[bool]] = []
    for line in text.splitlines():  # each character: an upper and a lower module
        # A terminal draws the glyph light on dark: a module is dark where none is drawn.
        top = [char in ("\u2584", " ") for char in line]
        bottom = [char in ("\u2580", " ") for char in line]
        rows += [top, bottom]
    scale = 8
    image = Image.new("L", (len(rows[0]) * scale, len(rows) * scale), 255)
    for y, row in enumerate(rows):
        for x, is_dark in enumerate(row):
            if is_dark:
                image.paste(0, (x * scale, y * scale, (x + 1) * scale, (y + 1) * scale))
    [result] = zxingcpp.read_barcodes(image)
    assert result.text == "http://192.0.2.20:18080"
