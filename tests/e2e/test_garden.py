"""Issue 15: install once, buy anytime. A real wireguard-go phone installs its profile once,
then lives through its sessions without ever touching it again:

    first session runs out -> walled garden (the app answers, other HTTP is sent to the shop,
    everything else is refused at once, garden bytes billed to nobody) -> a purchase through
    the API -> the same keys browse again within 2 s -> a second session queued behind the
    current one takes over by itself when the current one runs out, 0 bytes over on either.

    phone ── gateway (agent) ──WAN── provider ── the Internet 198.51.100.2
                                              └─ the KSWiFi app 198.51.100.3 (KSWIFI_PUBLIC_URL)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.netlab import SERVER_V4, Lab

from .conftest import e2e_skip_reason
from .harness import WEB, E2ESystem, Phone, build_system, wait_for

pytestmark = pytest.mark.root

PROBE = Path(__file__).with_name("probe.py")
APP = "198.51.100.3"
PUBLIC_URL = f"http://{APP}"
TICKS_PORT = 7007
MB = 1024 * 1024
QUOTA = 20 * MB  # the e2equota plan: 20 MB at 1000 Mbit/s


@pytest.fixture(scope="module")
def shop() -> Iterator[E2ESystem]:
    reason = e2e_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    data_dir = Path(tempfile.mkdtemp(prefix=f"kswifi-garden-{lab.prefix}-"))
    try:
        system = build_system(lab, data_dir, control_env={"KSWIFI_PUBLIC_URL": PUBLIC_URL})
        # The app's own host, on the Internet side: what a phone in the garden may reach.
        lab.sh(system.inet, ["ip", "addr", "add", f"{APP}/32", "dev", "lo"])
        app = lab.popen(system.inet, [sys.executable, str(WEB), "server", APP, "80"], stdout=-1)
        assert app.stdout is not None and app.stdout.readline().strip() == b"ready"
        ticks = lab.popen(
            system.inet,
            [sys.executable, str(PROBE), "udp-echo", SERVER_V4, str(TICKS_PORT)],
            stdout=-1,
        )
        assert ticks.stdout is not None and ticks.stdout.readline().strip() == b"ready"
        yield system
    finally:
        lab.cleanup()
        log = data_dir / "agent.log"
        if log.exists():
            print("---- agent log (tail) ----")
            print("\n".join(log.read_text().splitlines()[-30:]))
        shutil.rmtree(data_dir, ignore_errors=True)


def probe(system: E2ESystem, phone: Phone, *args: str, timeout: float = 60) -> dict[str, Any]:
    out = system.lab.sh(phone.ns, [sys.executable, str(PROBE), *args], timeout=timeout)
    return dict(json.loads(out.strip().splitlines()[-1]))


def get(system: E2ESystem, phone: Phone, url: str, idle: float = 3.0) -> dict[str, Any]:
    started = time.time()
    out = system.lab.sh(phone.ns, [sys.executable, str(WEB), "get", url, str(idle)], timeout=120)
    result = dict(json.loads(out))
    result["elapsed"] = result.get("last_byte_at", started) - started
    return result


def used(system: E2ESystem, session_id: str, phone: Phone) -> int:
    return int(system.session(session_id, phone.owner)["used_bytes"])


def settled(system: E2ESystem, session_id: str, phone: Phone) -> int:
    """used_bytes once it stopped changing for 2.5 s (reports come every second)."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 2.5:
        now = used(system, session_id, phone)
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.25)
    return last


def garden_bytes(system: E2ESystem) -> int:
    [gateway] = system.call("GET", "/api/admin/gateways", system.admin)
    return int(gateway["garden_rx_bytes"]) + int(gateway["garden_tx_bytes"])


def test_install_once_then_garden_purchase_and_hand_over(shop: E2ESystem) -> None:
    person = shop.person()
    first = shop.buy("e2equota", person)
    body = shop.generate(first, person)
    assert body["expires_at"] is None  # the clock starts at the first byte
    phone = shop.phone_from(body, person)  # installed once: this config is never touched again
    installed = phone.config

    # The first session runs out: cut at its quota, never beyond.
    assert get(shop, phone, f"http://{SERVER_V4}/bytes/{40 * MB}", idle=2.0)["received"] < QUOTA
    first_used = settled(shop, first, phone)
    assert QUOTA - 1280 <= first_used <= QUOTA, first_used
    wait_for(lambda: shop.session(first, person)["status"] == "exhausted", 10, "the first to end")
    assert shop.session(first, person)["expires_at"] is not None  # it had started at use

    # The walled garden: the app answers (slowly: a small shared rate) ...
    wait_for(
        lambda: probe(shop, phone, "http", APP, "80").get("outcome") == "answered",
        10,
        "the phone to reach the app from the garden",
    )
    from_app = get(shop, phone, f"{PUBLIC_URL}/bytes/{96 * 1024}")
    assert from_app["received"] == 96 * 1024
    assert from_app["elapsed"] >= 2.0, from_app  # 96 KB at about 256 kbit/s: about 3 s
    # ... any other plain-HTTP request is sent to the shop ...
    redirected = probe(shop, phone, "http", SERVER_V4, "80")
    assert redirected["status"] == 302, redirected
    assert redirected["location"] == f"{PUBLIC_URL}/plans"
    # ... and everything else is refused at once, never black-holed.
    for kind, port in (("tcp", 5201), ("udp", 9999)):
        refused = probe(shop, phone, kind, SERVER_V4, str(port))
        assert refused["outcome"] in ("refused", "prohibited", "unreachable"), (kind, refused)
        assert refused["seconds"] < 1, (kind, refused)
    # Garden bytes are billed to no session, and counted for the operator.
    assert settled(shop, first, phone) == first_used
    wait_for(lambda: garden_bytes(shop) > 96 * 1024, 15, "the garden's bytes in a heartbeat")

    # A purchase through the API: the same keys browse again within 2 s.
    second = shop.buy("e2equota", person)
    bought_at = time.monotonic()
    wait_for(
        lambda: probe(shop, phone, "tcp", SERVER_V4, "80")["outcome"] == "connected",
        10,
        "the phone to browse again after the purchase",
        interval=0.1,
    )
    assert time.monotonic() - bought_at <= 2.0, time.monotonic() - bought_at
    assert phone.config == installed
    assert shop.session(second, person)["status"] in ("active", "connected")

    # Bought while one is current: queued; it takes over by itself when the current one
    # runs out, within 2 s, and neither session is billed a byte beyond its limit.
    third = shop.buy("e2equota", person)
    assert shop.session(third, person)["status"] == "queued"
    assert shop.session(third, person)["expires_at"] is None
    ticks = shop.lab.popen(
        phone.ns,
        [sys.executable, str(PROBE), "ticks", SERVER_V4, str(TICKS_PORT), "14"],
        stdout=-1,
    )
    time.sleep(1.0)
    download = get(shop, phone, f"http://{SERVER_V4}/bytes/{30 * MB}", idle=5.0)
    out, _ = ticks.communicate(timeout=60)
    silence = json.loads(out.strip().splitlines()[-1])
    assert download["received"] == 30 * MB  # across both sessions, no new code, no toggle
    assert silence["longest_silence"] <= 2.0, silence
    wait_for(lambda: shop.session(second, person)["status"] == "exhausted", 10, "the hand-over")
    second_used, third_used = settled(shop, second, phone), settled(shop, third, phone)
    assert QUOTA - 1280 <= second_used <= QUOTA, second_used
    assert 0 < third_used <= QUOTA, third_used
    assert shop.session(third, person)["status"] == "connected"
    assert shop.session(third, person)["expires_at"] is not None
    # Every byte billed went through: the sessions together cover the download.
    assert second_used + third_used >= 30 * MB
    profiles = shop.call("GET", "/api/connect/profiles", person)["profiles"]
    assert [(p["connect_id"], p["state"], p["session_id"]) for p in profiles] == [
        (phone.connect_id, "active", third)
    ]
