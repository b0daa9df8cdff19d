"""nftables driver: the gateway firewall, per-session quota + counters, address maps and NAT.

One table, `inet kswifi`. Per session: quota `q-SID` and counters `up-SID` / `dn-SID`; maps
keyed by device address (`quota4/6`, `up4/6`, `dn4/6`) name the objects, so each packet costs
one hash lookup whatever the number of sessions. Every reconcile is ONE nf_tables netlink
batch (the kernel applies it atomically) and every usage read is ONE netlink dump of the
table's objects (see `nfnetlink` for why not `nft`). The skeleton (table, sets, maps, chains,
rules) is loaded with one `nft -f -` at start and whenever the firewall policy changes.

Accounting rule: a session is billed the IP packets the gateway forwarded for it, headers
included: uploads after the upload shaper (IFB), downloads after the download shaper (the
download loop, see `loop`), so a packet a shaper drops is never billed. A fragmented datagram
is billed once, as the reassembled packet: conntrack reassembles before the counters, so the
IP headers of its second and later fragments (20 bytes each on IPv4, 48 on IPv6 with the
fragment header) are not billed.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import json
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from kswifi.agent.actions import (
    Action,
    CreateSession,
    DeleteSession,
    MapAddress,
    SetQuota,
    UnmapAddress,
)
from kswifi.agent.drivers import nfnetlink
from kswifi.agent.drivers.command import Runner
from kswifi.agent.drivers.loop import loop_names
from kswifi.agent.errors import CommandError, DriverError
from kswifi.agent.firewall import FirewallPolicy, Garden
from kswifi.agent.model import Direction, SessionObjects

TABLE = "kswifi"
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PREFIXES = {"quota": "q", "up": "up", "down": "dn"}
_MAPS = {"quota": "quota", "up": "up", "down": "dn"}
_KINDS = ("quota", "up", "down")


def object_name(kind: str, session_id: str) -> str:
    """Reversible object name: `q-SID` for plain ids, `qx-HEX` for anything else."""
    prefix = _PREFIXES[kind]
    if _SAFE.fullmatch(session_id):
        return f"{prefix}-{session_id}"
    name = f"{prefix}x-{session_id.encode().hex()}"
    if len(name) > 255:  # NFT_OBJ_MAXNAMELEN, with its NUL
        raise DriverError(f"session id too long for an nftables object name: {session_id!r}")
    return name


@functools.lru_cache(maxsize=1 << 17)
def parse_object_name(name: str) -> tuple[str, str] | None:
    """(`quota`|`up`|`down`, session id) for a name made by `object_name`, else None."""
    for kind, prefix in _PREFIXES.items():
        if name.startswith(prefix + "x-"):
            try:
                return kind, bytes.fromhex(name[len(prefix) + 2 :]).decode()
            except ValueError:
                return None
        if name.startswith(prefix + "-"):
            return kind, name[len(prefix) + 1 :]
    return None


def map_name(kind: str, address: str) -> str:
    version = ipaddress.ip_address(address).version
    return f"{_MAPS[kind]}{version}"


@dataclass(frozen=True)
class NftReading:
    """Session objects and address maps as the kernel holds them."""

    sessions: dict[str, SessionObjects] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    counters: dict[tuple[str, Direction], tuple[int, int]] = field(default_factory=dict)
    """(session, direction) -> (kernel handle, bytes)"""
    table_present: bool = True
    garden: tuple[int, int] = (0, 0)
    """Bytes forwarded from and to walled-garden peers (the kernel's counters)."""

    def exhausted(self) -> set[str]:
        return {session for session, objects in self.sessions.items() if objects.exhausted}


@dataclass(frozen=True)
class NftConfig:
    interface: str
    wan_interface: str
    table: str = TABLE
    policy: FirewallPolicy = field(default_factory=FirewallPolicy)


class NftablesDriver(Protocol):
    def use_policy(self, policy: FirewallPolicy) -> None: ...

    def read(self) -> NftReading: ...

    def read_usage(self) -> NftReading: ...

    def apply(self, actions: Sequence[Action], mapped: Mapping[str, str]) -> None: ...

    def delete_table(self) -> None: ...


CHAINS = (
    "forward",
    "from_peer",
    "upload",
    "from_internet",
    "to_peer",
    "garden_up",
    "garden_down",
    "untrack",
    "input",
    "to_gateway",
    "refuse",
    "garden_redirect",
    "postrouting",
)
GARDEN_COUNTERS = ("garden_up", "garden_dn")
"""Bytes forwarded from and to peers in the walled garden (billed to no session)."""
CONN_SET_SIZE = 262_144
"""Devices a gateway tracks connection counts for (dynamic set entries expire with them)."""


def render_skeleton(config: NftConfig) -> list[str]:
    """Table, sets, maps, chains and rules. Chains and policy sets are flushed and refilled
    (atomically, in the same batch) so rules never pile up and setting changes take effect."""
    t = f"inet {config.table}"
    wg = json.dumps(config.interface)
    wan = json.dumps(config.wan_interface)
    entry, exit_ = (json.dumps(name) for name in loop_names(config.interface))
    policy = config.policy
    lines = [f"add table {t}"]
    for kind in ("quota", "up", "down"):
        target = "quota" if kind == "quota" else "counter"
        for version, key in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            lines.append(f"add map {t} {_MAPS[kind]}{version} {{ type {key} : {target}; }}")
    policy_sets = {
        "blocked4": ("ipv4_addr", policy.blocked_v4()),
        "blocked6": ("ipv6_addr", policy.blocked_v6()),
        "allowed4": ("ipv4_addr", policy.allowed_v4()),
        "allowed6": ("ipv6_addr", policy.allowed_v6()),
    }
    garden = policy.garden
    for version, key in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        policy_sets[f"garden_allow{version}"] = (key, garden.allow_v(version) if garden else [])
        policy_sets[f"garden_dns{version}"] = (key, garden.dns_v(version) if garden else [])
    for name, (key, _) in policy_sets.items():
        lines.append(f"add set {t} {name} {{ type {key}; flags interval; }}")
    lines += [f"add counter {t} {name}" for name in GARDEN_COUNTERS]
    lines.append(f"add set {t} blocked_ports {{ type inet_proto . inet_service; }}")
    for version, key in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        lines.append(
            f"add set {t} conn{version} {{ type {key}; size {CONN_SET_SIZE}; flags dynamic; }}"
        )
    lines += [
        f"add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}",
        f"add chain {t} untrack {{ type filter hook prerouting priority raw; policy accept; }}",
        f"add chain {t} input {{ type filter hook input priority filter; policy accept; }}",
        f"add chain {t} postrouting"
        " { type nat hook postrouting priority srcnat; policy accept; }",
        f"add chain {t} garden_redirect"
        " { type nat hook prerouting priority dstnat; policy accept; }",
    ]
    lines += [f"add chain {t} {c}" for c in ("from_peer", "upload", "from_internet", "to_peer")]
    lines += [f"add chain {t} {c}" for c in ("garden_up", "garden_down")]
    lines += [f"add chain {t} {c}" for c in ("to_gateway", "refuse")]
    lines += [f"flush chain {t} {c}" for c in CHAINS]
    lines += [f"flush set {t} {name}" for name in (*policy_sets, "blocked_ports")]
    for name, (_, networks) in policy_sets.items():
        if networks:
            lines.append(f"add element {t} {name} {{ {', '.join(networks)} }}")
    if policy.blocked_ports:
        ports = ", ".join(f"{proto} . {port}" for proto, port in policy.blocked_ports)
        lines.append(f"add element {t} blocked_ports {{ {ports} }}")
    limit = policy.max_connections
    echo4 = "icmp type echo-request fib daddr . iif type local"
    echo6 = "icmpv6 type echo-request fib daddr . iif type local"
    rate = policy.echo_per_second
    over = f"limit rate over {rate}/second burst {2 * rate} packets"
    lines += [
        # From a phone: the Internet only. Downloads come in from the WAN once (the stateful
        # gate), cross the loop's shaper, and are counted on their second pass.
        f"add rule {t} forward iifname {wg} jump from_peer",
        f"add rule {t} forward iifname {wan} oifname {entry} jump from_internet",
        f"add rule {t} forward iifname {exit_} oifname {wg} jump to_peer",
        f"add rule {t} forward oifname {{ {wg}, {entry} }} drop",
        f"add rule {t} forward iifname {exit_} drop",
        f"add rule {t} untrack iifname {exit_} notrack",
        # Refused at once, never black-holed: apps fail fast.
        f"add rule {t} refuse meta l4proto tcp reject with tcp reset",
        f"add rule {t} refuse reject with icmpx admin-prohibited",
        f"add rule {t} from_peer oifname != {wan} jump refuse",
        # A flow's first packet was checked; the rest of it goes straight to the accounting.
        f"add rule {t} from_peer ct state established,related goto upload",
        f"add rule {t} from_peer ip daddr != @allowed4 ip daddr @blocked4 jump refuse",
        f"add rule {t} from_peer ip6 daddr != @allowed6 ip6 daddr @blocked6 jump refuse",
        f"add rule {t} from_peer meta l4proto . th dport @blocked_ports jump refuse",
        f"add rule {t} from_peer ct state new"
        f" add @conn4 {{ ip saddr ct count over {limit} }} jump refuse",
        f"add rule {t} from_peer ct state new"
        f" add @conn6 {{ ip6 saddr ct count over {limit} }} jump refuse",
        # Nothing unsolicited reaches a phone, and it is dropped before anything counts it.
        f"add rule {t} from_internet ct state established,related accept",
        f"add rule {t} from_internet drop",
        # The gateway itself answers phones with replies and echo on its tunnel addresses. Echo
        # is limited before conntrack's shortcut (after one reply, later requests of the same
        # ping read as an established flow).
        f"add rule {t} input iifname {wg} jump to_gateway",
        f"add rule {t} to_gateway {echo4} {over} drop",
        f"add rule {t} to_gateway {echo6} {over} drop",
        f"add rule {t} to_gateway {echo4} accept",
        f"add rule {t} to_gateway {echo6} accept",
        f"add rule {t} to_gateway ct state established,related accept",
    ]
    lines += _garden_rules(t, wg, garden)
    lines += [
        f"add rule {t} to_gateway jump refuse",
        f"add rule {t} from_peer goto upload",
    ]
    for chain, key, cnt in (("upload", "saddr", "up"), ("to_peer", "daddr", "dn")):
        for family, v in (("ip", 4), ("ip6", 6)):
            # The quota counts every packet it sees and matches once over: drop. The counter
            # then counts only what is really forwarded: billing reads the counters.
            lines.append(f"add rule {t} {chain} quota name {family} {key} map @quota{v} drop")
            lines.append(f"add rule {t} {chain} counter name {family} {key} map @{cnt}{v} accept")
        # No session's address: the walled garden (or dropped, without one).
        lines.append(f"add rule {t} {chain} goto garden_{'up' if cnt == 'up' else 'down'}")
    lines.append(f"add rule {t} postrouting iifname {wg} oifname {wan} masquerade")
    return lines


def _garden_rules(t: str, wg: str, garden: Garden | None) -> list[str]:
    """The walled garden: a peer address no session maps (`@quota4/6` names every address
    drawing from one) reaches DNS at its resolvers and the app's networks; its other plain
    HTTP is redirected to the agent's redirect server (which points at the shop); anything
    else is refused at once. Garden bytes count on their own counters, billed to no one."""
    if garden is None:
        return [f"add rule {t} garden_up drop", f"add rule {t} garden_down drop"]
    port = garden.redirect_port
    lines = []
    for family, v in (("ip", 4), ("ip6", 6)):
        lines += [
            f"add rule {t} garden_up {family} daddr @garden_dns{v}"
            " meta l4proto { tcp, udp } th dport 53 counter name garden_up accept",
            f"add rule {t} garden_up {family} daddr @garden_allow{v} counter name garden_up accept",
            f"add rule {t} garden_redirect iifname {wg} {family} saddr != @quota{v}"
            f" {family} daddr != @garden_allow{v} tcp dport 80 redirect to :{port}",
        ]
    lines += [
        f"add rule {t} garden_up jump refuse",
        f"add rule {t} garden_down counter name garden_dn accept",
        f"add rule {t} to_gateway ct status dnat tcp dport {port} accept",
    ]
    return lines


def render_batch(
    config: NftConfig, actions: Iterable[Action], mapped: Mapping[str, str]
) -> list[nfnetlink.Message]:
    """The nf_tables messages for the nftables part of `actions` (one transaction).

    `mapped` is the address -> session mapping the kernel holds (element deletes must name
    existing elements, or the whole batch fails). The table's skeleton is not part of it.
    """
    t = config.table
    unmapped: set[str] = set()  # not a copy of `mapped`: a change costs what it touches
    deletes: dict[str, list[tuple[bytes, str]]] = {}
    objects: list[nfnetlink.Message] = []
    adds: dict[str, list[tuple[bytes, str, str]]] = {}
    removals: list[nfnetlink.Message] = []

    def element(kind: str, address: str, session_id: str) -> None:
        packed, version = _packed(address)
        entry = (packed, object_name(kind, session_id), address)
        adds.setdefault(f"{_MAPS[kind]}{version}", []).append(entry)

    def unelement(kind: str, address: str) -> None:
        packed, version = _packed(address)
        deletes.setdefault(f"{_MAPS[kind]}{version}", []).append((packed, address))

    actions = list(actions)
    for action in actions:
        if (
            isinstance(action, UnmapAddress | MapAddress)
            and action.address in mapped
            and action.address not in unmapped
        ):
            for kind in _KINDS:
                unelement(kind, action.address)
            unmapped.add(action.address)
    for action in actions:
        match action:
            case CreateSession(session_id, quota, used):
                name = object_name("quota", session_id)
                objects.append(nfnetlink.new_quota(t, name, quota, used))
                objects.append(nfnetlink.new_counter(t, object_name("up", session_id)))
                objects.append(nfnetlink.new_counter(t, object_name("down", session_id)))
            case SetQuota(session_id, quota, None):
                name = object_name("quota", session_id)
                objects.append(nfnetlink.new_quota(t, name, quota, None))
            case SetQuota(session_id, quota, reset):
                # Replace the object: its `used` also counted dropped packets. The map
                # elements that point at it go and come back in the same atomic batch.
                still = [a for a, s in mapped.items() if s == session_id and a not in unmapped]
                for address in still:
                    unelement("quota", address)
                    element("quota", address, session_id)
                name = object_name("quota", session_id)
                objects.append(nfnetlink.delete_object(t, name, quota=True))
                objects.append(nfnetlink.new_quota(t, name, quota, reset))
            case MapAddress(address, session_id):
                for kind in _KINDS:
                    element(kind, address, session_id)
            case DeleteSession(session_id):
                for kind in _KINDS:
                    name = object_name(kind, session_id)
                    removals.append(nfnetlink.delete_object(t, name, quota=kind == "quota"))
            case _:
                pass
    batch = [m for name, keys in deletes.items() for m in nfnetlink.delete_elements(t, name, keys)]
    batch += objects
    batch += [m for name, items in adds.items() for m in nfnetlink.add_elements(t, name, items)]
    return batch + removals


def _packed(address: str) -> tuple[bytes, int]:
    """Network-order bytes and IP version of a canonical address text (inet_pton: fast)."""
    if ":" in address:
        return socket.inet_pton(socket.AF_INET6, address), 6
    return socket.inet_pton(socket.AF_INET, address), 4


def reading_from(
    objects: Iterable[nfnetlink.ObjectEntry], elements: Iterable[tuple[bytes, str]] = ()
) -> NftReading:
    """An NftReading from dumped objects and `quota4`/`quota6` map elements."""
    quotas: dict[str, tuple[int, int]] = {}
    counters: dict[tuple[str, Direction], tuple[int, int]] = {}
    garden = {"garden_up": 0, "garden_dn": 0}
    for entry in objects:
        if entry.name in garden and not entry.quota:
            garden[entry.name] = entry.bytes
            continue
        parsed = parse_object_name(entry.name)
        if parsed is None:
            continue
        kind, session_id = parsed
        if entry.quota and kind == "quota":
            quotas[session_id] = (entry.bytes, entry.used)
        elif not entry.quota and kind in ("up", "down"):
            direction: Direction = "up" if kind == "up" else "down"
            counters[(session_id, direction)] = (entry.handle, entry.bytes)
    addresses: dict[str, str] = {}
    for key, target in elements:
        parsed = parse_object_name(target)
        if parsed and len(key) in (4, 16):
            family = socket.AF_INET if len(key) == 4 else socket.AF_INET6
            addresses[socket.inet_ntop(family, key)] = parsed[1]
    sessions = {
        session_id: SessionObjects(
            quota_bytes=quota,
            used_bytes=used,
            upload_bytes=counters.get((session_id, "up"), (0, 0))[1],
            download_bytes=counters.get((session_id, "down"), (0, 0))[1],
        )
        for session_id, (quota, used) in quotas.items()
    }
    return NftReading(
        sessions=sessions,
        addresses=addresses,
        counters=counters,
        garden=(garden["garden_up"], garden["garden_dn"]),
    )


@dataclass
class NftTable:
    """The one real nftables driver: the skeleton through `nft -f -`, sessions through one
    nf_tables netlink batch per reconcile, reads through netlink dumps."""

    runner: Runner
    config: NftConfig
    netlink: nfnetlink.NfTables | None = None
    last_batch: list[str] = field(default_factory=list, repr=False)
    skeleton_loaded: bool = False

    def __post_init__(self) -> None:
        if self.netlink is None:
            self.netlink = nfnetlink.NfTables(netns=getattr(self.runner, "netns", None))

    @property
    def _nl(self) -> nfnetlink.NfTables:
        assert self.netlink is not None
        return self.netlink

    def load_skeleton(self) -> None:
        """Table, maps, chains and rules in one `nft -f -` (atomic; elements are kept)."""
        script = render_skeleton(self.config)
        try:
            self.runner(["nft", "-f", "-"], input_text="\n".join(script) + "\n")
        except CommandError as exc:
            raise DriverError(f"nft skeleton of {len(script)} lines failed: {exc.stderr}") from exc
        self.skeleton_loaded = True

    def use_policy(self, policy: FirewallPolicy) -> None:
        """Enforce `policy` (the operator's settings and the WAN's on-link networks as last
        read): the skeleton is loaded again unless it already holds exactly this policy."""
        if policy == self.config.policy and self.skeleton_loaded:
            return
        self.config = replace(self.config, policy=policy)
        self.load_skeleton()

    def read(self) -> NftReading:
        """Every session object and the address maps (the full read at start and resync).

        The skeleton is loaded again with the next apply (rules follow the settings)."""
        self.skeleton_loaded = False
        try:
            objects = self._nl.objects(self.config.table)
            elements = [
                element
                for version in (4, 6)
                for element in self._nl.elements(self.config.table, f"quota{version}")
            ]
        except nfnetlink.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return NftReading(table_present=False)
            raise
        return reading_from(objects, elements)

    def read_usage(self) -> NftReading:
        """Quotas and counters only: one netlink dump (the 1 s usage read)."""
        try:
            objects = self._nl.objects(self.config.table)
        except nfnetlink.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return NftReading(table_present=False)
            raise
        return reading_from(objects)

    def apply(self, actions: Sequence[Action], mapped: Mapping[str, str]) -> None:
        if not self.skeleton_loaded:
            self.load_skeleton()
        batch = render_batch(self.config, actions, mapped)
        self.last_batch = [str(message) for message in batch]
        self._nl.batch(batch)

    def delete_table(self) -> None:
        self.skeleton_loaded = False
        try:
            self.runner(["nft", "delete", "table", "inet", self.config.table])
        except CommandError as exc:
            if "No such file or directory" not in exc.stderr:
                raise
