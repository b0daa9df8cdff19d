"""Network-namespace lab for root tests: namespaces, veths, processes, always cleaned up.

Names carry a per-run random prefix (interface names stay <= 15 characters). Everything made
here is undone by `Lab.cleanup()`, which the fixtures call in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_BINARIES = ("ip", "nft", "tc", "wg", "wireguard-go", "sysctl")
UAPI_DIR = Path("/var/run/wireguard")

# The "Internet" of the tests, routed as a real host sees it: the gateway's WAN is on-link only
# with its provider's router; the servers are behind that router.
PROVIDER_V4 = "192.0.2.254"
PROVIDER_V6 = "2001:db8:1::fe"
SERVER_V4 = "198.51.100.2"
SERVER_V6 = "2001:db8:2::2"


def root_skip_reason() -> str | None:
    """Why the namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, tc)"
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        hint = "apt-get install wireguard-go wireguard-tools nftables iproute2"
        return f"missing binaries: {', '.join(missing)} ({hint})"
    probe = f"kprobe{secrets.token_hex(3)}"
    done = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return f"cannot create network namespaces: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


@dataclass
class Lab:
    """Creates namespaces and links with a unique prefix; `cleanup()` removes all of them."""

    prefix: str = field(default_factory=lambda: "k" + secrets.token_hex(2))
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ifname(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        assert len(name) <= 15, name
        return name

    def netns(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        self.sh(None, ["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.sh(name, ["ip", "link", "set", "lo", "up"])
        return name

    def sh(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        input_text: str | None = None,
        timeout: float = 30,
    ) -> str:
        full = list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]
        done = subprocess.run(
            full, input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout

    def link(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A veth pair between two namespaces (no addresses, down)."""
        self.sh(
            None,
            [
                *("ip", "link", "add", name_a, "netns", ns_a),
                *("type", "veth", "peer", name_b, "netns", ns_b),
            ],
        )

    def veth(
        self, ns_a: str, name_a: str, addr_a: str, ns_b: str, name_b: str, addr_b: str
    ) -> None:
        self.link(ns_a, name_a, ns_b, name_b)
        for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
            self.sh(ns, ["ip", "addr", "add", addr, "dev", name])
            self.sh(ns, ["ip", "link", "set", name, "up"])

    def popen(self, ns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    def python(self, ns: str, script: Path, *args: str, timeout: float = 60) -> str:
        return self.sh(ns, [sys.executable, str(script), *args], timeout=timeout)

    def cleanup(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
        for ns in reversed(self.namespaces):
            # Processes still inside (wireguard-go daemons, servers) are ours: kill them by pid.
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            )
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                left = subprocess.run(
                    ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
                )
                if not left.stdout.strip():
                    break
                time.sleep(0.05)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.namespaces.clear()
        if UAPI_DIR.is_dir():
            for sock in UAPI_DIR.glob(f"{self.prefix}*.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()


def provider_network(lab: Lab, inet: str, link: str) -> None:
    """Make `inet` the provider's router on `link` (on-link with gateway WANs in 192.0.2.0/24
    and 2001:db8:1::/64) and the Internet's servers behind it (on its loopback)."""
    lab.sh(inet, ["ip", "addr", "add", f"{PROVIDER_V4}/24", "dev", link])
    lab.sh(inet, ["ip", "addr", "add", f"{PROVIDER_V6}/64", "dev", link, "nodad"])
    lab.sh(inet, ["ip", "addr", "add", f"{SERVER_V4}/32", "dev", "lo"])
    lab.sh(inet, ["ip", "addr", "add", f"{SERVER_V6}/128", "dev", "lo"])
    # Internet packets arrive MTU-sized (a veth would pass 64 KB TSO super-packets; the
    # quota's granularity is one packet).
    lab.sh(inet, ["ip", "link", "set", "dev", link, "gso_max_segs", "1", "up"])


def gateway_wan(lab: Lab, gw: str, wan: str, address_v4: str, address_v6: str) -> None:
    """A gateway's WAN address in the provider's network and its default routes."""
    lab.sh(gw, ["ip", "addr", "add", f"{address_v4}/24", "dev", wan])
    lab.sh(gw, ["ip", "addr", "add", f"{address_v6}/64", "dev", wan, "nodad"])
    lab.sh(gw, ["ip", "link", "set", wan, "up"])
    lab.sh(gw, ["ip", "route", "add", "default", "via", PROVIDER_V4])
    lab.sh(gw, ["ip", "-6", "route", "add", "default", "via", PROVIDER_V6])


def parse_wg_quick(config: str) -> dict[str, list[str]]:
    """[Interface] fields of a wg-quick config that `wg setconf` does not take."""
    fields: dict[str, list[str]] = {}
    section = ""
    for raw in config.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.lower()
            continue
        if section != "[interface]" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        fields.setdefault(key.lower(), []).extend(v.strip() for v in value.split(","))
    return fields


def import_wg_quick(lab: Lab, ns: str, ifname: str, config: str, routes: bool = True) -> None:
    """Bring up `ifname` in `ns` from a wg-quick config, like the WireGuard app would.

    `wg-quick strip` gives the part `wg setconf` accepts; addresses, MTU and routes are set
    here. AllowedIPs 0.0.0.0/0, ::/0 become default routes (the endpoint stays reachable over
    its more specific on-link route)."""
    tmp = Path(f"/tmp/{lab.prefix}-{ifname}.conf")
    tmp.write_text(config)
    tmp.chmod(0o600)
    try:
        stripped = lab.sh(None, ["wg-quick", "strip", str(tmp)])
    finally:
        tmp.unlink()
    if os.environ.get("KSWIFI_E2E_WIREGUARD") == "kernel":  # the VM's kernel has the module
        lab.sh(ns, ["ip", "link", "add", "dev", ifname, "type", "wireguard"])
    else:
        lab.sh(ns, ["env", "-u", "LOG_LEVEL", "wireguard-go", ifname])
        deadline = time.monotonic() + 5
        while not (UAPI_DIR / f"{ifname}.sock").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go {ifname} did not start")
            time.sleep(0.02)
    lab.sh(ns, ["wg", "setconf", ifname, "/dev/stdin"], input_text=stripped)
    fields = parse_wg_quick(config)
    for address in fields.get("address", []):
        lab.sh(ns, ["ip", "addr", "add", address, "dev", ifname])
    if fields.get("mtu"):
        lab.sh(ns, ["ip", "link", "set", "dev", ifname, "mtu", fields["mtu"][0]])
    lab.sh(ns, ["ip", "link", "set", "dev", ifname, "up"])
    if routes:
        lab.sh(ns, ["ip", "route", "add", "default", "dev", ifname])
        if any(":" in a for a in fields.get("address", [])):
            lab.sh(ns, ["ip", "-6", "route", "add", "default", "dev", ifname])


def steady_rate(measure: Callable[[], float], mbps: int, attempts: int = 3) -> float:
    """Shaping must never exceed the rate (checked on every attempt); falling short can be a
    CPU-starved machine (wireguard-go is userspace), so that alone is measured again."""
    best = 0.0
    for _ in range(attempts):
        rate = measure()
        assert rate <= 1.1 * mbps, f"{rate:.2f} Mbit/s is over the {mbps} Mbit/s tier"
        best = max(best, rate)
        if best >= 0.9 * mbps:
            break
    return best
