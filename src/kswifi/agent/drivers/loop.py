"""The download loop: downloads cross a veth pair inside the gateway before they are counted.

    WAN ─forward (stateful gate)─▶ loop entry ══ tier shaper (HTB) ══▶ loop exit
        ─forward (quota, counter)─▶ WireGuard device ─▶ phone

The tier's shaper sits on the entry's egress, so a download packet it drops never reaches the
forward pass that counts and bills (the shaper of the upload side already sits before it, on
the IFB device). A policy rule sends what arrives on the WAN for the tunnel's networks into
the loop; the second pass is not tracked by conntrack (nftables `notrack`), so each flow keeps
one conntrack entry. Neither end has an address: both carry the same MAC with ARP off, so the
kernel hands the frame straight across.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from kswifi.agent.drivers.command import Runner
from kswifi.agent.errors import CommandError, DriverError

log = structlog.get_logger("kswifi.agent.loop")

LOOP_MAC = "02:6b:73:77:66:69"
LOOP_MTU = 65535
"""Nothing is fragmented between the two passes."""
DEFAULT_ROUTE_TABLE = 27507
RULE_PRIORITY = 27507
"""Before the main table (32766); falls through to it for everything not in the loop's table."""


def loop_names(interface: str) -> tuple[str, str]:
    """(entry, exit) device names of the loop for a WireGuard interface (<= 15 characters)."""
    return (f"dl-{interface}"[:15], f"dlr-{interface}"[:15])


def tunnel_networks(addresses: Iterable[str]) -> set[str]:
    """The networks of the tunnel interface's addresses (`100.64.0.1/10` -> `100.64.0.0/10`)."""
    return {str(ipaddress.ip_interface(address).network) for address in addresses}


@dataclass
class DownloadLoop:
    """The veth pair, the policy rule that feeds it and the routes of its table."""

    runner: Runner
    wan_interface: str
    interface: str
    table: int = DEFAULT_ROUTE_TABLE

    @property
    def entry(self) -> str:
        return loop_names(self.interface)[0]

    @property
    def exit(self) -> str:
        return loop_names(self.interface)[1]

    def _run(self, argv: list[str]) -> str:
        try:
            return self.runner(argv)
        except CommandError as exc:
            raise DriverError(f"download loop: {' '.join(argv)}: {exc.stderr.strip()}") from exc

    def _exists(self, name: str) -> bool:
        try:
            self.runner(["ip", "link", "show", "dev", name])
        except CommandError:
            return False
        return True

    def ensure(self) -> None:
        """Create what is missing (an agent restart keeps the loop and its routes)."""
        if not self._exists(self.entry):
            with contextlib.suppress(CommandError):  # half of a pair left by a crash
                self.runner(["ip", "link", "del", "dev", self.exit])
            self._run(["ip", "link", "add", self.entry, "type", "veth", "peer", "name", self.exit])
        for device in (self.entry, self.exit):
            # No addresses at all: no link-local (the two ends share a MAC), nothing to reach.
            self._run(["ip", "link", "set", "dev", device, "addrgenmode", "none"])
            self._run(
                [
                    "ip", "link", "set", "dev", device, "address", LOOP_MAC,
                    "arp", "off", "mtu", str(LOOP_MTU), "up",
                ]
            )  # fmt: skip
        self._allow_foreign_sources()
        for family in ("-4", "-6"):
            self._ensure_rule(family)

    def _allow_foreign_sources(self) -> None:
        """Internet addresses arrive on the loop's exit: strict reverse-path filtering would
        drop them (the kernel applies the stricter of `all` and the device's own value)."""
        self._run(["sysctl", "-q", "-w", f"net/ipv4/conf/{self.exit}/rp_filter=0"])
        current = self._run(["sysctl", "-n", "net/ipv4/conf/all/rp_filter"]).strip()
        if current == "1":
            self._run(["sysctl", "-q", "-w", "net/ipv4/conf/all/rp_filter=2"])
            log.warning("rp_filter_loosened", was="strict", now="loose", reason="download loop")

    def _ensure_rule(self, family: str) -> None:
        rules = json.loads(self._run(["ip", "-j", family, "rule", "show"]) or "[]")
        wanted = {"priority": RULE_PRIORITY, "iif": self.wan_interface, "table": str(self.table)}
        ours = [rule for rule in rules if rule.get("priority") == RULE_PRIORITY]
        if any(all(rule.get(k) == v for k, v in wanted.items()) for rule in ours):
            return
        for _ in ours:  # a rule of an older configuration (another WAN interface or table)
            self._run(["ip", family, "rule", "del", "priority", str(RULE_PRIORITY)])
        self._run(
            [
                "ip", family, "rule", "add", "priority", str(RULE_PRIORITY),
                "iif", self.wan_interface, "lookup", str(self.table),
            ]
        )  # fmt: skip

    def routes(self) -> set[str]:
        """The networks the loop's table sends into the loop."""
        found: set[str] = set()
        for family in ("-4", "-6"):
            try:
                out = self.runner(["ip", "-j", family, "route", "show", "table", str(self.table)])
            except CommandError as exc:
                if "does not exist" in exc.stderr:  # no route was ever added to it
                    continue
                raise DriverError(f"download loop: cannot read table {self.table}") from exc
            for route in json.loads(out or "[]"):
                if route.get("dev") == self.entry and route.get("dst") not in (None, "default"):
                    found.add(str(ipaddress.ip_network(route["dst"], strict=False)))
        return found

    def route(self, networks: Iterable[str]) -> None:
        """Downloads for exactly `networks` (the tunnel's) go through the loop."""
        wanted = set(networks)
        present = self.routes()
        for network in sorted(wanted - present):
            self._run(
                ["ip", "route", "replace", network, "dev", self.entry, "table", str(self.table)]
            )
        for network in sorted(present - wanted):
            with contextlib.suppress(DriverError):
                self._run(["ip", "route", "del", network, "table", str(self.table)])

    def teardown(self) -> None:
        """Remove the pair, its routes and the rule."""
        for argv in (
            ["ip", "link", "del", "dev", self.entry],
            ["ip", "-4", "rule", "del", "priority", str(RULE_PRIORITY)],
            ["ip", "-6", "rule", "del", "priority", str(RULE_PRIORITY)],
            ["ip", "-4", "route", "flush", "table", str(self.table)],
            ["ip", "-6", "route", "flush", "table", str(self.table)],
        ):
            with contextlib.suppress(CommandError):
                self.runner(argv)
