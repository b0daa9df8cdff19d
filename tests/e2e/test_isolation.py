"""Issue 13: the gateway, tried as an attacker would, from real phones (wireguard-go) through a
real agent that runs as an unprivileged user with CAP_NET_ADMIN alone.

    phones ── gateway (agent as uid 65534) ──WAN 192.0.2.1/24── provider's router 192.0.2.254
                                                                (on-link: must stay unreachable)
                                                                ├── "metadata" 169.254.169.254
                                                                └── the Internet 198.51.100.2,
                                                                    2001:db8:2::2

Each probe asserts what a phone gets (reached, or refused at once) and what it is billed.
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

from tests.agent.netlab import PROVIDER_V4, PROVIDER_V6, SERVER_V4, SERVER_V6, Lab

from .conftest import e2e_skip_reason
from .harness import (
    GATEWAY_WAN,
    GATEWAY_WAN_V6,
    WIREGUARD_MODE,
    E2ESystem,
    Phone,
    build_system,
    wait_for,
)

pytestmark = pytest.mark.root

PROBE = Path(__file__).with_name("probe.py")
METADATA = "169.254.169.254"
AGENT_UID = 65534
METRICS_PORT = 9587
CONNECTION_LIMIT = 64
MB = 1024 * 1024


@pytest.fixture(scope="module")
def gateway() -> Iterator[E2ESystem]:
    reason = e2e_skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("setpriv") is None or shutil.which("unshare") is None:
        pytest.fail("setpriv and unshare (util-linux) are needed to run the agent unprivileged")
    lab = Lab()
    data_dir = Path(tempfile.mkdtemp(prefix=f"kswifi-iso-{lab.prefix}-"))
    try:
        system = build_system(
            lab,
            data_dir,
            agent_env={
                "KSWIFI_GATEWAY_METRICS_LISTEN": f"0.0.0.0:{METRICS_PORT}",
                "KSWIFI_GATEWAY_MAX_CONNECTIONS_PER_DEVICE": str(CONNECTION_LIMIT),
                "KSWIFI_GATEWAY_RESYNC_INTERVAL_S": "5",
            },
            agent_uid=AGENT_UID,
        )
        prepare_targets(system)
        yield system
    finally:
        lab.cleanup()
        log = data_dir / "agent.log"
        if log.exists():
            print("---- agent log (tail) ----")
            print("\n".join(log.read_text().splitlines()[-30:]))
        shutil.rmtree(data_dir, ignore_errors=True)


def start(system: E2ESystem, ns: str, *args: str) -> None:
    process = system.lab.popen(ns, [sys.executable, str(PROBE), *args], stdout=-1)
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"


def prepare_targets(system: E2ESystem) -> None:
    """Listeners an attacker would aim at, each noting every connection that reaches it."""
    lab, inet = system.lab, system.inet
    lab.sh(inet, ["ip", "addr", "add", f"{METADATA}/32", "dev", "lo"])
    for name, host, port in [
        ("metadata", METADATA, 80),
        ("provider4", PROVIDER_V4, 8080),
        ("provider6", PROVIDER_V6, 8080),
        ("smtp4", SERVER_V4, 25),
        ("smtp6", SERVER_V6, 25),
        ("submission", SERVER_V4, 587),
        ("internet6", SERVER_V6, 8080),
    ]:
        start(system, inet, "sink", host, str(port), str(sink_file(system, name)))
    start(system, inet, "echo", SERVER_V4, "7001")
    start(system, inet, "flood-server", SERVER_V4, "9000")
    start(system, inet, "flood-server", SERVER_V6, "9000")
    # Unsolicited traffic needs a way to the phones: the provider routes their pools to us.
    lab.sh(inet, ["ip", "route", "add", "100.64.0.0/10", "via", GATEWAY_WAN])
    lab.sh(inet, ["ip", "-6", "route", "add", "fd00::/8", "via", GATEWAY_WAN_V6])
    # What crossed the WAN into the gateway from the Internet's servers, fragment by fragment.
    wire = f"""table netdev e2e_wire {{
  counter wire4 {{ }}
  counter wire6 {{ }}
  chain ingress {{
    type filter hook ingress device {json.dumps(system.wan)} priority 0;
    ip saddr {SERVER_V4} counter name "wire4"
    ip6 saddr {SERVER_V6} counter name "wire6"
  }}
}}
"""
    lab.sh(system.gw, ["nft", "-f", "-"], input_text=wire)


def sink_file(system: E2ESystem, name: str) -> Path:
    return system.data_dir / f"sink-{name}.log"


def reached(system: E2ESystem, name: str) -> int:
    path = sink_file(system, name)
    return len(path.read_text().splitlines()) if path.exists() else 0


def reached_once(system: E2ESystem, name: str) -> bool:
    """The sink notes a connection just after accepting it: wait for the note (a probe that
    connected may return first on a busy machine), then it must be exactly one."""
    wait_for(lambda: reached(system, name) >= 1, 5, f"the {name} sink to note the connection")
    return reached(system, name) == 1


def probe(system: E2ESystem, ns: str, *args: str, timeout: float = 60) -> dict[str, Any]:
    out = system.lab.sh(ns, [sys.executable, str(PROBE), *args], timeout=timeout)
    return dict(json.loads(out.strip().splitlines()[-1]))


def phone_addresses(phone: Phone) -> tuple[str, str]:
    for line in phone.config.splitlines():
        if line.replace(" ", "").lower().startswith("address="):
            parts = [p.strip().split("/")[0] for p in line.split("=", 1)[1].split(",")]
            v4 = next(p for p in parts if ":" not in p)
            v6 = next(p for p in parts if ":" in p)
            return v4, v6
    raise AssertionError("no Address line in the profile")


def tunnel_addresses(system: E2ESystem) -> tuple[str, str]:
    out = system.lab.sh(system.gw, ["ip", "-j", "addr", "show", "dev", system.wg])
    infos = json.loads(out)[0]["addr_info"]
    v4 = next(a["local"] for a in infos if a["family"] == "inet")
    v6 = next(a["local"] for a in infos if a["family"] == "inet6" and a["scope"] == "global")
    return v4, v6


def billed(system: E2ESystem, phone: Phone) -> int:
    return system.settle_usage(phone)


def refused_at_once(result: dict[str, Any]) -> bool:
    return result["outcome"] in ("refused", "unreachable", "prohibited") and result["seconds"] < 1


def wait_until_the_tunnel_carries(system: E2ESystem, phone: Phone) -> None:
    wait_for(
        lambda: system.fetch(phone, 10_000, idle=2.0)["received"] == 10_000,
        60,
        "the tunnel to carry traffic again",
        interval=1.0,
    )


def refusal(system: E2ESystem, ns: str, kind: str, host: str, port: int) -> dict[str, Any]:
    """The fastest of up to three tries: a healthy tunnel refuses within a second; one lost SYN
    or reset on a loaded machine costs TCP's retransmission timer (seen: 4.1 s) and is tried
    again. A try that got no answer at all counts only if the tunnel itself carries traffic
    (a tunnel stalled for a while by a loaded machine, seen once, is not a black hole)."""
    best: dict[str, Any] = {}
    for _ in range(3):
        result = probe(system, ns, kind, host, str(port))
        if result["outcome"] == "timeout":
            wait_until_the_tunnel_carries(system, next(p for p in system.phones if p.ns == ns))
            result = probe(system, ns, kind, host, str(port))
        assert result["outcome"] in ("refused", "unreachable", "prohibited"), (host, result)
        if not best or result["seconds"] < best["seconds"]:
            best = result
        if refused_at_once(best):
            break
    return best


@pytest.fixture(scope="module")
def phone(gateway: E2ESystem) -> Phone:
    phone = gateway.connect_phone("premium")
    assert gateway.fetch(phone, 10_000)["received"] == 10_000  # tunnel up
    return phone


def test_the_agent_runs_unprivileged_and_a_phone_browses(gateway: E2ESystem, phone: Phone) -> None:
    assert gateway.agent is not None
    status = Path(f"/proc/{gateway.agent.pid}/status").read_text()
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in status.splitlines()}
    assert fields["Uid"][:2] == [str(AGENT_UID)] * 2, fields["Uid"]
    assert int(fields["CapEff"][0], 16) == 1 << 12  # CAP_NET_ADMIN, nothing else
    assert int(fields["CapBnd"][0], 16) == 1 << 12
    assert gateway.fetch(phone, 2 * MB)["received"] == 2 * MB
    assert probe(gateway, phone.ns, "tcp", SERVER_V6, "8080")["outcome"] == "connected"
    assert reached_once(gateway, "internet6")
    gateways = gateway.call("GET", "/api/admin/gateways", gateway.admin)
    assert [g["interface_mode"] for g in gateways] == [WIREGUARD_MODE]  # its heartbeat came


@pytest.mark.parametrize(
    ("target", "port", "sink"),
    [
        (METADATA, 80, "metadata"),
        (PROVIDER_V4, 8080, "provider4"),
        (PROVIDER_V6, 8080, "provider6"),
        ("10.1.2.3", 80, None),
        ("172.16.5.5", 443, None),
        ("192.168.1.1", 80, None),
        ("fd00::1", 80, None),
        ("100::1", 80, None),
    ],
)
def test_non_global_and_on_link_destinations_are_refused_at_once(
    gateway: E2ESystem, phone: Phone, target: str, port: int, sink: str | None
) -> None:
    before = billed(gateway, phone)
    tcp = refusal(gateway, phone.ns, "tcp", target, port)
    assert refused_at_once(tcp), tcp
    udp = refusal(gateway, phone.ns, "udp", target, port)
    assert refused_at_once(udp), udp
    if sink is not None:
        assert reached(gateway, sink) == 0, f"{target} was reached"
    assert billed(gateway, phone) == before


def test_the_gateway_answers_phones_only_with_replies_and_echo(
    gateway: E2ESystem, phone: Phone
) -> None:
    tunnel_v4, tunnel_v6 = tunnel_addresses(gateway)
    # The agent's metrics really listen on every address of the gateway...
    inside = probe(gateway, gateway.gw, "tcp", GATEWAY_WAN, str(METRICS_PORT))
    assert inside["outcome"] == "connected"
    before = billed(gateway, phone)
    # ...but no phone reaches them, nor anything else on any of its addresses.
    for address in (tunnel_v4, tunnel_v6, GATEWAY_WAN, GATEWAY_WAN_V6):
        result = refusal(gateway, phone.ns, "tcp", address, METRICS_PORT)
        assert refused_at_once(result), (address, result)
        result = refusal(gateway, phone.ns, "udp", address, 53)
        assert refused_at_once(result), (address, result)
    for address in (tunnel_v4, tunnel_v6):
        assert probe(gateway, phone.ns, "ping", address, "3")["replies"] == 3
    assert probe(gateway, phone.ns, "ping", GATEWAY_WAN, "2")["replies"] == 0
    assert billed(gateway, phone) == before  # nothing to or from the gateway is billed


def test_echo_to_the_gateway_is_rate_limited(gateway: E2ESystem, phone: Phone) -> None:
    tunnel_v4, tunnel_v6 = tunnel_addresses(gateway)
    time.sleep(3.1)  # the bucket refills (60 packets at 20/s)
    for address in (tunnel_v4, tunnel_v6):
        result = probe(gateway, phone.ns, "burst", address, "300")
        # 20 a second for all phones together, with room for a burst of 40 more: of 300
        # requests sent back to back, about 60 are answered.
        assert result["seconds"] < 1.0, result
        assert 40 <= result["replies"] <= 60 + 20 * result["seconds"] + 3, result


def test_nothing_unsolicited_reaches_a_phone_or_its_bill(gateway: E2ESystem) -> None:
    target = gateway.connect_phone("premium")
    v4, v6 = phone_addresses(target)
    start(gateway, target.ns, "sink", "::", "7000", str(sink_file(gateway, "phone")))
    assert gateway.fetch(target, 10_000)["received"] == 10_000
    before = billed(gateway, target)
    for address in (v4, v6):
        assert probe(gateway, gateway.inet, "tcp", address, "7000")["outcome"] == "timeout"
        assert probe(gateway, gateway.inet, "blast", address, "7000", "2")["sent"] > 100
    assert reached(gateway, "phone") == 0
    assert billed(gateway, target) == before


def test_a_udp_flood_is_billed_only_for_what_the_phone_received(gateway: E2ESystem) -> None:
    flooded = gateway.connect_phone("basic")  # 10 Mbit/s
    assert gateway.fetch(flooded, 10_000)["received"] == 10_000
    before = billed(gateway, flooded)
    size = 1200
    result = probe(gateway, flooded.ns, "flood", SERVER_V4, "9000", "4", "100", str(size))
    received_ip = result["datagrams"] * (size + 28)
    sent_ip = result["request"] + 28
    bill = billed(gateway, flooded) - before
    ratio = bill / (received_ip + sent_ip)
    print(
        f"UDP flood at 10x 10 Mbit/s: billed {bill} B for {received_ip + sent_ip} B ({ratio:.4f})"
    )
    rate = received_ip * 8 / result["seconds"] / 1e6
    assert 9.0 <= rate <= 10.5, rate  # the tier's rate went through, and no more
    assert 0.99 <= ratio <= 1.01, (bill, received_ip, sent_ip)


def test_a_phone_past_its_connection_limit_is_refused_and_others_flow(
    gateway: E2ESystem,
) -> None:
    busy = gateway.connect_phone("premium")
    other = gateway.connect_phone("premium")
    held = probe(gateway, busy.ns, "hold", SERVER_V4, "7001", str(CONNECTION_LIMIT + 20))
    assert held["opened"] == CONNECTION_LIMIT, held
    # Refused, not black-holed (that would be the 5 s timeout); one SYN retransmission allowed.
    assert held["failure"]["outcome"] == "refused" and held["failure"]["seconds"] < 3, held
    assert held["first_still_works"] is True
    assert probe(gateway, other.ns, "tcp", SERVER_V4, "7001")["outcome"] == "connected"
    assert gateway.fetch(other, MB)["received"] == MB


def test_outbound_smtp_is_closed_other_ports_open(gateway: E2ESystem, phone: Phone) -> None:
    for host in (SERVER_V4, SERVER_V6):
        result = refusal(gateway, phone.ns, "tcp", host, 25)
        assert refused_at_once(result), (host, result)
    assert reached(gateway, "smtp4") == reached(gateway, "smtp6") == 0
    assert probe(gateway, phone.ns, "tcp", SERVER_V4, "587")["outcome"] == "connected"
    assert reached_once(gateway, "submission")


@pytest.mark.parametrize(("server", "header", "extra"), [(SERVER_V4, 20, 0), (SERVER_V6, 48, 8)])
def test_fragments_are_billed_by_the_documented_rule(
    gateway: E2ESystem, phone: Phone, server: str, header: int, extra: int
) -> None:
    """Billed: each datagram once, reassembled. Not billed: the IP headers of its second and
    later fragments (IPv4: 20 B each; IPv6: 48 B each, plus the first fragment's 8-byte
    fragment header)."""
    counter = "wire4" if ":" not in server else "wire6"
    size = 3000
    # The server's first fragments may not fit the tunnel: on IPv6 the gateway answers Packet
    # Too Big (as any router must) and that datagram is neither delivered nor billed. Let path
    # MTU discovery settle before measuring.
    probe(gateway, phone.ns, "flood", server, "9000", "0.1", "1", str(size))
    gateway.lab.sh(gateway.gw, ["nft", "reset", "counter", "netdev", "e2e_wire", counter])
    before = billed(gateway, phone)
    result = probe(gateway, phone.ns, "flood", server, "9000", "2", "1", str(size))
    datagrams = result["datagrams"]
    assert datagrams >= 50
    out = gateway.lab.sh(
        gateway.gw, ["nft", "-j", "list", "counter", "netdev", "e2e_wire", counter]
    )
    wire = next(e["counter"] for e in json.loads(out)["nftables"] if "counter" in e)
    fragments = int(wire["packets"])
    assert fragments >= 3 * datagrams  # 3000 bytes do not fit one 1500-byte packet
    request_ip = result["request"] + 8 + (20 if ":" not in server else 40)
    download = billed(gateway, phone) - before - request_ip
    unbilled = header * (fragments - datagrams) + extra * datagrams
    print(
        f"fragments ({'IPv6' if ':' in server else 'IPv4'}): wire {wire['bytes']} B in"
        f" {fragments} fragments, billed {download} B, gap {int(wire['bytes']) - download} B"
        f" ({(int(wire['bytes']) - download) / int(wire['bytes']):.2%})"
    )
    assert download == int(wire["bytes"]) - unbilled


def test_the_firewall_follows_the_wan_addresses(gateway: E2ESystem, phone: Phone) -> None:
    """A new on-link network on the WAN is refused after the next full read (resync)."""
    lab = gateway.lab
    neighbour = "198.51.100.130"
    lab.sh(gateway.inet, ["ip", "addr", "add", f"{neighbour}/25", "dev", lab.ifname("net")])
    start(gateway, gateway.inet, "sink", neighbour, "8080", str(sink_file(gateway, "new")))
    assert probe(gateway, phone.ns, "tcp", neighbour, "8080")["outcome"] == "connected"
    lab.sh(gateway.gw, ["ip", "addr", "add", "198.51.100.129/25", "dev", gateway.wan])
    try:
        wait_for(
            lambda: refused_at_once(probe(gateway, phone.ns, "tcp", neighbour, "8080")),
            20,
            "the new on-link network to be refused after the agent's resync (every 5 s)",
            interval=1.0,
        )
    finally:
        lab.sh(gateway.gw, ["ip", "addr", "del", "198.51.100.129/25", "dev", gateway.wan])
