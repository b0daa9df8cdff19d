"""nftables driver: per-session quota + counters, address maps, forward filter and NAT.

One table, `inet kswifi`. Per session: quota `q-SID` and counters `up-SID` / `dn-SID`; maps
keyed by device address (`quota4/6`, `up4/6`, `dn4/6`) name the objects, so each packet costs
one hash lookup whatever the number of sessions. Every reconcile is ONE `nft -f -` batch (the
kernel applies it atomically) and every usage read is ONE `nft -j -f -` call.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kswifi.agent.drivers.command import Runner
from kswifi.agent.errors import CommandError, DriverError
from kswifi.agent.model import Direction, SessionObjects
from kswifi.agent.reconcile import (
    Action,
    CreateSession,
    DeleteSession,
    MapAddress,
    SetQuota,
    UnmapAddress,
)

TABLE = "kswifi"
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PREFIXES = {"quota": "q", "up": "up", "down": "dn"}
_MAPS = {"quota": "quota", "up": "up", "down": "dn"}


def object_name(kind: str, session_id: str) -> str:
    """Reversible object name: `q-SID` for plain ids, `qx-HEX` for anything else."""
    prefix = _PREFIXES[kind]
    if _SAFE.fullmatch(session_id):
        return f"{prefix}-{session_id}"
    name = f"{prefix}x-{session_id.encode().hex()}"
    if len(name) > 255:  # NFT_OBJ_MAXNAMELEN, with its NUL
        raise DriverError(f"session id too long for an nftables object name: {session_id!r}")
    return name


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

    def exhausted(self) -> set[str]:
        return {session for session, objects in self.sessions.items() if objects.exhausted}


@dataclass(frozen=True)
class NftConfig:
    interface: str
    wan_interface: str
    table: str = TABLE


class NftablesDriver(Protocol):
    def read(self) -> NftReading: ...

    def read_usage(self) -> NftReading: ...

    def apply(self, actions: Sequence[Action], mapped: Mapping[str, str]) -> None: ...

    def delete_table(self) -> None: ...


def render_skeleton(config: NftConfig) -> list[str]:
    """Table, maps, chains and rules. Chains are flushed and refilled (atomically, in the same
    batch) so rules never pile up and interface renames take effect."""
    t = f"inet {config.table}"
    wg = json.dumps(config.interface)
    wan = json.dumps(config.wan_interface)
    lines = [f"add table {t}"]
    for kind in ("quota", "up", "down"):
        target = "quota" if kind == "quota" else "counter"
        for version, key in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            lines.append(f"add map {t} {_MAPS[kind]}{version} {{ type {key} : {target}; }}")
    lines += [
        f"add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}",
        f"add chain {t} from_peer",
        f"add chain {t} to_peer",
        f"add chain {t} postrouting"
        " { type nat hook postrouting priority srcnat; policy accept; }",
    ]
    lines += [f"flush chain {t} {c}" for c in ("forward", "from_peer", "to_peer", "postrouting")]
    lines += [
        # Devices talk to the Internet only: not to each other, not to other interfaces.
        f"add rule {t} forward iifname {wg} oifname != {wan} drop",
        f"add rule {t} forward oifname {wg} iifname != {wan} drop",
        f"add rule {t} forward iifname {wg} jump from_peer",
        f"add rule {t} forward oifname {wg} jump to_peer",
    ]
    for chain, key, cnt in (("from_peer", "saddr", "up"), ("to_peer", "daddr", "dn")):
        for family, v in (("ip", 4), ("ip6", 6)):
            # The quota counts every packet it sees and matches once over: drop. The counter
            # then counts only what is really forwarded: billing reads the counters.
            lines.append(f"add rule {t} {chain} quota name {family} {key} map @quota{v} drop")
            lines.append(f"add rule {t} {chain} counter name {family} {key} map @{cnt}{v} accept")
        lines.append(f"add rule {t} {chain} drop")
    lines.append(f"add rule {t} postrouting iifname {wg} oifname {wan} masquerade")
    return lines


def render_batch(
    config: NftConfig, actions: Iterable[Action], mapped: Mapping[str, str]
) -> list[str]:
    """The nft script for the nftables part of `actions`.

    `mapped` is the address -> session mapping as read from the kernel (element deletes must
    name existing elements, or the whole batch fails).
    """
    t = f"inet {config.table}"
    current = dict(mapped)
    deletes: list[str] = []
    objects: list[str] = []
    adds: list[str] = []
    removals: list[str] = []

    def delete_elements(address: str) -> None:
        for kind in ("quota", "up", "down"):
            deletes.append(f"delete element {t} {map_name(kind, address)} {{ {address} }}")

    def add_elements(address: str, session_id: str) -> None:
        for kind in ("quota", "up", "down"):
            name = json.dumps(object_name(kind, session_id))
            adds.append(f"add element {t} {map_name(kind, address)} {{ {address} : {name} }}")

    actions = list(actions)
    for action in actions:
        if isinstance(action, UnmapAddress | MapAddress) and action.address in current:
            delete_elements(action.address)
            del current[action.address]
    for action in actions:
        match action:
            case CreateSession(session_id, quota, used):
                objects.append(_quota_line(t, session_id, quota, used))
                objects.append(f"add counter {t} {object_name('up', session_id)}")
                objects.append(f"add counter {t} {object_name('down', session_id)}")
            case SetQuota(session_id, quota, None):
                objects.append(_quota_line(t, session_id, quota, None))
            case SetQuota(session_id, quota, reset):
                # Replace the object: its `used` also counted dropped packets. The map
                # elements that point at it go and come back in the same atomic batch.
                still = [a for a, s in current.items() if s == session_id]
                for address in still:
                    name = map_name("quota", address)
                    deletes.append(f"delete element {t} {name} {{ {address} }}")
                    q = json.dumps(object_name("quota", session_id))
                    adds.append(f"add element {t} {name} {{ {address} : {q} }}")
                objects.append(f"delete quota {t} {object_name('quota', session_id)}")
                objects.append(_quota_line(t, session_id, quota, reset))
            case MapAddress(address, session_id):
                add_elements(address, session_id)
            case DeleteSession(session_id):
                for kind in ("quota", "up", "down"):
                    noun = "quota" if kind == "quota" else "counter"
                    removals.append(f"delete {noun} {t} {object_name(kind, session_id)}")
            case _:
                pass
    return render_skeleton(config) + deletes + objects + adds + removals


def _quota_line(table: str, session_id: str, quota: int, used: int | None) -> str:
    used_part = f" used {used} bytes" if used is not None else ""
    return (
        f"add quota {table} {object_name('quota', session_id)} {{ over {quota} bytes{used_part} }}"
    )


def parse_listing(documents: Iterable[Mapping[str, object]]) -> NftReading:
    """Build an NftReading from `nft -j` documents (a table listing or counter/quota lists)."""
    quotas: dict[str, tuple[int, int]] = {}
    counters: dict[tuple[str, Direction], tuple[int, int]] = {}
    addresses: dict[str, str] = {}
    for document in documents:
        entries = document.get("nftables", [])
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if "quota" in entry:
                q = entry["quota"]
                parsed = parse_object_name(q["name"])
                if parsed and parsed[0] == "quota":
                    quotas[parsed[1]] = (int(q["bytes"]), int(q.get("used", 0)))
            elif "counter" in entry:
                c = entry["counter"]
                parsed = parse_object_name(c["name"])
                if parsed and parsed[0] in ("up", "down"):
                    direction: Direction = "up" if parsed[0] == "up" else "down"
                    counters[(parsed[1], direction)] = (int(c["handle"]), int(c["bytes"]))
            elif "map" in entry and str(entry["map"].get("name", "")).startswith("quota"):
                for element in entry["map"].get("elem", []):
                    address, target = element[0], element[1]
                    parsed = parse_object_name(str(target))
                    if parsed:
                        addresses[str(ipaddress.ip_address(address))] = parsed[1]
    sessions: dict[str, SessionObjects] = {}
    for session_id, (quota, used) in quotas.items():
        sessions[session_id] = SessionObjects(
            quota_bytes=quota,
            used_bytes=used,
            upload_bytes=counters.get((session_id, "up"), (0, 0))[1],
            download_bytes=counters.get((session_id, "down"), (0, 0))[1],
        )
    return NftReading(sessions=sessions, addresses=addresses, counters=counters)


@dataclass
class NftTable:
    """The one real nftables driver (shells out to `nft`)."""

    runner: Runner
    config: NftConfig
    last_script: list[str] = field(default_factory=list, repr=False)

    def read(self) -> NftReading:
        """Everything in the table, including the address maps (used before a reconcile)."""
        try:
            out = self.runner(["nft", "-j", "list", "table", "inet", self.config.table])
        except CommandError as exc:
            if "No such file or directory" in exc.stderr:
                return NftReading(table_present=False)
            raise
        return parse_listing([json.loads(out)])

    def read_usage(self) -> NftReading:
        """Counters and quotas only, in one nft call (the 1 s usage read)."""
        t = {"family": "inet", "table": self.config.table}
        request = {"nftables": [{"list": {"counters": t}}, {"list": {"quotas": t}}]}
        try:
            out = self.runner(["nft", "-j", "-f", "-"], input_text=json.dumps(request))
        except CommandError as exc:
            if "No such file or directory" in exc.stderr:
                return NftReading(table_present=False)
            raise
        documents = [json.loads(line) for line in out.splitlines() if line.strip()]
        return parse_listing(documents)

    def apply(self, actions: Sequence[Action], mapped: Mapping[str, str]) -> None:
        script = render_batch(self.config, actions, mapped)
        self.last_script = script
        try:
            self.runner(["nft", "-f", "-"], input_text="\n".join(script) + "\n")
        except CommandError as exc:
            raise DriverError(f"nft batch of {len(script)} lines failed: {exc.stderr}") from exc

    def delete_table(self) -> None:
        try:
            self.runner(["nft", "delete", "table", "inet", self.config.table])
        except CommandError as exc:
            if "No such file or directory" not in exc.stderr:
                raise
