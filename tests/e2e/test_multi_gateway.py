"""Issue 5: one multi-device session on two gateways (two agents, two namespaces) whose budget
is split into leases. Two phones download in parallel: both are served, and together they never
pass the budget.

    phone A ── gw A (us-east, agent A) ──┐
                                         ├── bridge in the "internet" ns (the provider's
                                         │   router, 192.0.2.254): HTTP on 198.51.100.2
    phone B ── gw B (eu-west, agent B) ──┘
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kswifi.agent.drivers.nftables import object_name
from tests.agent.netlab import Lab, gateway_wan, import_wg_quick, provider_network

from .conftest import e2e_skip_reason
from .harness import KSWIFI, SERVER, WEB, E2ESystem, Person, Phone, decode_qr, wait_for

pytestmark = pytest.mark.root

MB = 1024 * 1024
BUDGET = 30 * MB


@dataclass
class Gateway:
    name: str
    region: str
    ns: str
    wan: str
    wan_address: str
    lan: str
    lan_address: str
    wg: str
    ifb: str
    token: str = ""
    agent: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.lan_address}:51820"


@dataclass
class TwoGateways:
    system: E2ESystem
    gateways: list[Gateway]

    def start_agent(self, gateway: Gateway) -> None:
        system = self.system
        log = (system.data_dir / f"agent-{gateway.name}.log").open("ab")
        gateway.agent = system.lab.popen(
            gateway.ns,
            [
                KSWIFI,
                "gateway",
                "run",
                "--control-url",
                f"unix:{system.socket}",
                "--token-file",
                str(system.token_file(gateway.name, gateway.token)),
                "--endpoint",
                gateway.endpoint,
                "--wan-interface",
                gateway.wan,
                "--interface",
                gateway.wg,
                "--ifb-interface",
                gateway.ifb,
                "--state-dir",
                str(system.data_dir / f"gateway-{gateway.name}"),
                "--userspace-only",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=system.env,
        )

        def configured() -> bool:
            try:
                out = system.lab.sh(gateway.ns, ["wg", "show", gateway.wg, "listen-port"])
            except RuntimeError:
                return False
            return out.strip() == "51820"

        wait_for(configured, 30, f"agent {gateway.name} to configure its interface")

    def phone(self, gateway: Gateway, body: dict[str, Any], person: Person, index: int) -> Phone:
        lab = self.system.lab
        config = decode_qr(body["config_qr"])
        ns = lab.netns(f"ph{index}")
        host_side, phone_side = lab.ifname(f"b{index}"), lab.ifname(f"p{index}")
        lab.sh(
            None,
            [
                "ip", "link", "add", host_side, "netns", gateway.ns, "type", "veth",
                "peer", phone_side, "netns", ns,
            ],
        )  # fmt: skip
        lab.sh(gateway.ns, ["ip", "link", "set", host_side, "master", gateway.lan, "up"])
        base = gateway.lan_address.rsplit(".", 1)[0]
        host = int(gateway.lan_address.rsplit(".", 1)[1]) + 10 + index
        lab.sh(ns, ["ip", "addr", "add", f"{base}.{host}/25", "dev", phone_side])
        lab.sh(ns, ["ip", "link", "set", phone_side, "up"])
        ifname = lab.ifname(f"w{index}")
        import_wg_quick(lab, ns, ifname, config)
        return Phone(ns, ifname, config, body["session_id"], body["connect_id"], person)

    def counted(self, gateway: Gateway, session_id: str) -> int | None:
        """Bytes the gateway's nftables counters forwarded for the session (None: gone)."""
        try:
            out = self.system.lab.sh(
                gateway.ns, ["nft", "-j", "list", "counters", "table", "inet", "kswifi"]
            )
        except RuntimeError:
            return None
        names = {object_name("up", session_id), object_name("down", session_id)}
        values = [
            int(entry["counter"]["bytes"])
            for entry in json.loads(out)["nftables"]
            if "counter" in entry and entry["counter"]["name"] in names
        ]
        return sum(values) if values else None


def build(lab: Lab, data_dir: Path) -> TwoGateways:
    system = E2ESystem(lab=lab, data_dir=data_dir, socket=data_dir / "control.sock")
    system.env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KSWIFI_GATEWAY_")},
        "KSWIFI_DATA_DIR": str(data_dir),
        "KSWIFI_DATABASE_URL": "",
        "KSWIFI_LONGPOLL_SECONDS": "2",
    }
    inet = lab.netns("inet")
    system.inet = inet
    bridge = lab.ifname("ibr")
    lab.sh(inet, ["ip", "link", "add", bridge, "type", "bridge"])
    provider_network(lab, inet, bridge)
    gateways = []
    for index, (region, wan_address, lan_address) in enumerate(
        [("us-east", "192.0.2.1", "203.0.113.1"), ("eu-west", "192.0.2.3", "203.0.113.129")]
    ):
        ns = lab.netns(f"gw{index}")
        wan, port = lab.ifname(f"wan{index}"), lab.ifname(f"ip{index}")
        lab.sh(
            None,
            ["ip", "link", "add", wan, "netns", ns, "type", "veth", "peer", port, "netns", inet],
        )
        gateway_wan(lab, ns, wan, wan_address, f"2001:db8:1::{index + 1}")
        # Internet packets arrive MTU-sized (the quota's granularity is one packet).
        lab.sh(inet, ["ip", "link", "set", port, "master", bridge, "gso_max_segs", "1", "up"])
        lan = lab.ifname(f"br{index}")
        lab.sh(ns, ["ip", "link", "add", lan, "type", "bridge"])
        lab.sh(ns, ["ip", "addr", "add", f"{lan_address}/25", "dev", lan])
        lab.sh(ns, ["ip", "link", "set", lan, "up"])
        gateways.append(
            Gateway(
                name=f"e2e-{lab.prefix}-{region}",
                region=region,
                ns=ns,
                wan=wan,
                wan_address=wan_address,
                lan=lan,
                lan_address=lan_address,
                wg=lab.ifname(f"wg{index}"),
                ifb=lab.ifname(f"ifb{index}"),
            )
        )
    lab.sh(inet, ["ip", "link", "set", "dev", bridge, "gso_max_segs", "1"])
    web = lab.popen(inet, [sys.executable, str(WEB), "server", SERVER, "80"], stdout=-1)
    assert web.stdout is not None and web.stdout.readline().strip() == b"ready"

    system.kswifi("db", "upgrade")
    system.kswifi(
        "admin", "plans", "create", "--code", "e2eultra", "--name", "E2E Ultra 30 MB",
        "--data-mb", "30", "--speed-mbps", "1000", "--validity-days", "1",
        "--price-cents", "0", "--max-devices", "3",
    )  # fmt: skip
    for gateway in gateways:
        out = system.kswifi(
            "admin", "gateways", "add", "--name", gateway.name, "--region", gateway.region,
            "--endpoint", gateway.endpoint,
        )  # fmt: skip
        gateway.token = out.strip().splitlines()[-1].strip()
    system.start_control_plane()
    two = TwoGateways(system, gateways)
    for gateway in gateways:
        two.start_agent(gateway)
    return two


@pytest.fixture(scope="module")
def two() -> Iterator[TwoGateways]:
    reason = e2e_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    data_dir = Path(tempfile.mkdtemp(prefix=f"kswifi-e2e2-{lab.prefix}-"))
    try:
        yield build(lab, data_dir)
    finally:
        lab.cleanup()
        for log in sorted(data_dir.glob("agent-*.log")):
            print(f"---- {log.name} (tail) ----")
            print("\n".join(log.read_text().splitlines()[-30:]))
        shutil.rmtree(data_dir, ignore_errors=True)


def test_two_phones_of_one_session_on_two_gateways_never_pass_the_budget(
    two: TwoGateways,
) -> None:
    system = two.system
    person = system.person()
    session_id = system.buy("e2eultra", person)
    bodies = []
    for gateway, device in zip(two.gateways, ("phone-a", "phone-b"), strict=True):
        body = system.call(
            "POST",
            "/api/connect/generate-profile",
            person,
            json={"session_id": session_id, "region": gateway.region, "device_name": device},
        )
        assert body["success"] is True and body["region"] == gateway.region
        bodies.append(body)
    assert bodies[0]["connect_id"] != bodies[1]["connect_id"]  # two devices, one session
    phones = [
        two.phone(gateway, body, person, index)
        for index, (gateway, body) in enumerate(zip(two.gateways, bodies, strict=True))
    ]

    # The gateways' own counters are the bill; sample them until the objects are deleted.
    highest: dict[str, int] = {}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for gateway in two.gateways:
                value = two.counted(gateway, session_id)
                if value is not None:
                    highest[gateway.name] = max(highest.get(gateway.name, 0), value)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    downloads = [system.fetch_background(phone, 40 * MB, idle=4.0) for phone in phones]
    outputs = [download.communicate(timeout=120)[0] for download in downloads]
    results = [json.loads(out) if out.strip() else {"received": 0} for out in outputs]
    wait_for(
        lambda: system.session(session_id, person)["status"] == "exhausted",
        20,
        "the session to become exhausted",
    )
    time.sleep(1.0)
    sampling.set()
    sampler.join(5)

    received = sum(int(result["received"]) for result in results)
    counted = sum(highest.values())
    session = system.session(session_id, person)
    print(f"received {received}, counted per gateway {highest}, billed {session['used_bytes']}")
    assert received < BUDGET  # payload the phones got
    # Both phones were served: the first gateway gave back half of the budget it held when
    # the second phone's gateway asked for its share.
    for result in results:
        assert int(result["received"]) >= BUDGET // 5, results
    # No byte past the budget was forwarded by the two gateways together...
    assert counted <= BUDGET, (highest, BUDGET)
    # ...and the bill is those bytes, ending at the budget (at most a packet per gateway short).
    assert session["used_bytes"] <= BUDGET
    assert session["used_bytes"] >= BUDGET - 2 * 1500, session["used_bytes"]
    assert abs(session["used_bytes"] - counted) <= 2 * 1500, (session["used_bytes"], counted)
    assert session["status"] == "exhausted"
