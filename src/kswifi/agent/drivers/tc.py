"""tc driver: an HTB class per session, download on the WireGuard device, upload via IFB.

Layout on each shaped device (the WireGuard device matches the destination address, the IFB
device, fed by an ingress `mirred` redirect from the WireGuard device, the source address):

    qdisc htb 1: (unclassified traffic goes to HTB's direct queue, unshaped)
      u32 prio 10 (IPv4): root filter hashes the address' last byte into table 10: (256 buckets)
      u32 prio 20 (IPv6): same into table 20:
      class 1:MINOR htb rate R ceil R       <- one per session, same MINOR on both devices
      filter 10:BUCKET:NODE match <address> flowid 1:MINOR   <- one per device address

All changes of a reconcile go through ONE `tc -batch -` (both devices); a tier change is
`class replace` in place.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from kswifi.agent.drivers.command import Runner
from kswifi.agent.errors import CommandError, DriverError
from kswifi.agent.reconcile import (
    Action,
    DeleteRate,
    SetRate,
    ShapeAddress,
    UnshapeAddress,
)

Side = Literal["download", "upload"]
MAX_MINOR = 0xFFFE
MAX_NODE = 0xFFF
_HT = {4: 0x10, 6: 0x20}
_PRIO = {4: 10, 6: 20}
_PROTO = {4: "ip", 6: "ipv6"}
# Byte offsets of the addresses in the IPv4 / IPv6 header.
_OFFSETS: dict[tuple[int, Side], int] = {
    (4, "download"): 16,
    (4, "upload"): 12,
    (6, "download"): 24,
    (6, "upload"): 8,
}
_UNITS = {"": 1, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000, "T": 1_000_000_000_000}
_CLASS = re.compile(r"^class htb 1:([0-9a-f]+) .*?\brate (\d+(?:\.\d+)?)([KMGT]?)bit", re.M)
# tc prints bucket 0 as nothing: `fh 10::1`.
_FILTER = re.compile(r"\bfh ([0-9a-f]+):([0-9a-f]*):([0-9a-f]+) .*?\bflowid 1:([0-9a-f]+)")
_MATCH = re.compile(r"^\s+match ([0-9a-f]{8})/ffffffff at (\d+)")


@dataclass(frozen=True)
class FilterEntry:
    """One per-address u32 filter as read back from the kernel."""

    version: int
    bucket: int
    node: int
    minor: int


@dataclass
class DeviceReading:
    """Classes (minor -> rate Mbit/s) and filters (address -> entry) of one device."""

    classes: dict[int, int] = field(default_factory=dict)
    filters: dict[str, FilterEntry] = field(default_factory=dict)
    ready: bool = False
    nodes: dict[tuple[int, int], set[int]] | None = field(default=None, compare=False)
    """(version, bucket) -> u32 node ids in use; built once, then kept up to date."""

    def node_index(self) -> dict[tuple[int, int], set[int]]:
        if self.nodes is None:
            self.nodes = {}
            for entry in self.filters.values():
                self.nodes.setdefault((entry.version, entry.bucket), set()).add(entry.node)
        return self.nodes

    def copy(self) -> DeviceReading:
        nodes = None if self.nodes is None else {k: set(v) for k, v in self.nodes.items()}
        return DeviceReading(dict(self.classes), dict(self.filters), self.ready, nodes)


@dataclass
class TcReading:
    download: DeviceReading
    upload: DeviceReading

    def copy(self) -> TcReading:
        return TcReading(self.download.copy(), self.upload.copy())

    def minors(self) -> dict[int, int]:
        """Classes present on both devices with the same rate (other ones read as rate 0)."""
        result: dict[int, int] = {}
        for minor in self.download.classes.keys() | self.upload.classes.keys():
            down = self.download.classes.get(minor)
            up = self.upload.classes.get(minor)
            result[minor] = down if down is not None and down == up else 0
        return result

    def shaped(self) -> dict[str, int]:
        """Addresses filtered to the same class on both devices: address -> minor."""
        return {
            address: entry.minor
            for address, entry in self.download.filters.items()
            if (up := self.upload.filters.get(address)) is not None and up.minor == entry.minor
        }


class TcDriver(Protocol):
    def ensure_structure(self) -> None: ...

    def read(self) -> TcReading: ...

    def apply(
        self, actions: Sequence[Action], reading: TcReading, session_minors: Mapping[str, int]
    ) -> tuple[TcReading, dict[str, int]]: ...

    def teardown(self) -> None: ...


def rate_text(speed_mbps: int) -> str:
    return f"{speed_mbps}mbit"


def burst_bytes(speed_mbps: int) -> int:
    """Enough bucket for ~2 ms at the rate (at least a few packets): HTB then holds its rate
    within a few percent instead of undershooting with the 1600-byte default."""
    return max(16_000, speed_mbps * 1_000_000 // 8 // 500)


def address_match(address: str, side: Side) -> list[str]:
    """`match u32 WORD 0xffffffff at OFF` words for the address on this side."""
    ip = ipaddress.ip_address(address)
    base = _OFFSETS[(ip.version, side)]
    raw = ip.packed
    return [
        f"match u32 0x{raw[i : i + 4].hex()} 0xffffffff at {base + i}"
        for i in range(0, len(raw), 4)
    ]


def parse_classes(text: str) -> dict[int, int]:
    classes: dict[int, int] = {}
    for minor, value, unit in _CLASS.findall(text):
        bits = float(value) * _UNITS[unit]
        classes[int(minor, 16)] = round(bits / 1_000_000)
    return classes


def parse_filters(text: str, side: Side) -> tuple[dict[str, FilterEntry], set[int]]:
    """Per-address filters and the hash tables (10:, 20:) that exist."""
    filters: dict[str, FilterEntry] = {}
    tables: set[int] = set()
    lines = text.splitlines()
    for index, line in enumerate(lines):
        table = re.search(r"\bfh ([0-9a-f]+): ht divisor 256", line)
        if table:
            tables.add(int(table.group(1), 16))
            continue
        found = _FILTER.search(line)
        if not found:
            continue
        ht, bucket, node, minor = (int(g or "0", 16) for g in found.groups())
        version = 4 if ht == _HT[4] else 6 if ht == _HT[6] else 0
        if not version or not node:
            continue
        words: dict[int, str] = {}
        for follow in lines[index + 1 : index + 5]:
            matched = _MATCH.match(follow)
            if not matched:
                break
            words[int(matched.group(2))] = matched.group(1)
        base = _OFFSETS[(version, side)]
        size = 4 if version == 4 else 16
        try:
            raw = b"".join(bytes.fromhex(words[base + i]) for i in range(0, size, 4))
        except KeyError:
            continue
        address = str(ipaddress.ip_address(raw))
        filters[address] = FilterEntry(version, bucket, node, minor)
    return filters, tables


@dataclass
class TcShaper:
    """The one real tc driver (shells out to `tc`)."""

    runner: Runner
    interface: str
    ifb_interface: str
    scripts: list[list[str]] = field(default_factory=list, repr=False)

    def _devices(self) -> tuple[tuple[str, Side], tuple[str, Side]]:
        return (self.interface, "download"), (self.ifb_interface, "upload")

    def _link_exists(self, name: str) -> bool:
        try:
            self.runner(["ip", "link", "show", "dev", name])
        except CommandError:
            return False
        return True

    def ensure_structure(self) -> None:
        """Create the IFB device, root HTB, hash tables and the ingress redirect if missing.

        Existing structure is kept (agent restart: classes and filters survive)."""
        if not self._link_exists(self.ifb_interface):
            self.runner(["ip", "link", "add", "dev", self.ifb_interface, "type", "ifb"])
        # The IFB default queue (32 packets) would drop bursts; HTB leaves inherit this length.
        self.runner(["ip", "link", "set", "dev", self.ifb_interface, "txqueuelen", "1000", "up"])
        for device, side in self._devices():
            reading = self._read_device(device, side)
            if not reading.ready:
                self._batch(device, _skeleton(device, side))
        qdiscs = self.runner(["tc", "qdisc", "show", "dev", self.interface])
        if "qdisc ingress ffff:" not in qdiscs:
            self._batch(
                self.interface,
                [
                    f"qdisc add dev {self.interface} handle ffff: ingress",
                    f"filter add dev {self.interface} parent ffff: protocol all prio 1 u32"
                    f" match u32 0 0 action mirred egress redirect dev {self.ifb_interface}",
                ],
            )

    def _read_device(self, device: str, side: Side) -> DeviceReading:
        qdiscs = self.runner(["tc", "qdisc", "show", "dev", device])
        if not re.search(r"^qdisc htb 1: root", qdiscs, re.M):
            return DeviceReading()
        classes = parse_classes(self.runner(["tc", "class", "show", "dev", device]))
        text = self.runner(["tc", "filter", "show", "dev", device, "parent", "1:"])
        filters, tables = parse_filters(text, side)
        ready = {_HT[4], _HT[6]} <= tables
        return DeviceReading(classes, filters, ready)

    def read(self) -> TcReading:
        down, up = self._devices()
        return TcReading(self._read_device(*down), self._read_device(*up))

    def apply(
        self, actions: Sequence[Action], reading: TcReading, session_minors: Mapping[str, int]
    ) -> tuple[TcReading, dict[str, int]]:
        """Render and run the tc part of `actions` as ONE `tc -batch -` for both devices.

        Returns the reading and the session -> minor map the kernel holds afterwards (the
        reading passed in is not changed)."""
        minors = dict(session_minors)
        after = reading.copy()
        scripts = render_tc(self._devices(), actions, after, minors)
        lines = [line for script in scripts.values() for line in script]
        self.scripts = [script for script in scripts.values() if script]
        if lines:
            self._batch("+".join(device for device, _ in self._devices()), lines)
        return after, minors

    def _batch(self, device: str, script: Sequence[str]) -> None:
        try:
            self.runner(["tc", "-force", "-batch", "-"], input_text="\n".join(script) + "\n")
        except CommandError as exc:
            raise DriverError(f"tc batch on {device} ({len(script)} lines): {exc.stderr}") from exc

    def teardown(self) -> None:
        """Remove every qdisc the driver made and the IFB device."""
        for args in (
            ["tc", "qdisc", "del", "dev", self.interface, "root"],
            ["tc", "qdisc", "del", "dev", self.interface, "ingress"],
            ["ip", "link", "del", "dev", self.ifb_interface],
        ):
            with contextlib.suppress(CommandError):
                self.runner(args)


def _skeleton(device: str, side: Side) -> list[str]:
    lines = [f"qdisc replace dev {device} root handle 1: htb default 0 r2q 100"]
    for version in (4, 6):
        ht, prio, proto = _HT[version], _PRIO[version], _PROTO[version]
        base = _OFFSETS[(version, side)]
        last_word = base + (0 if version == 4 else 12)
        lines += [
            f"filter add dev {device} parent 1: prio {prio} handle {ht:x}: protocol {proto}"
            " u32 divisor 256",
            f"filter add dev {device} parent 1: prio {prio} protocol {proto} u32"
            f" match u32 0 0 at {base} hashkey mask 0x000000ff at {last_word} link {ht:x}:",
        ]
    return lines


def render_tc(
    devices: Iterable[tuple[str, Side]],
    actions: Sequence[Action],
    reading: TcReading,
    minors: dict[str, int],
) -> dict[str, list[str]]:
    """tc batch lines per device. Mutates `minors` (new sessions get the lowest free minor)
    and `reading` (it becomes what the kernel holds once the lines ran)."""
    used_minors = set(reading.download.classes) | set(reading.upload.classes) | set(minors.values())
    scripts: dict[str, list[str]] = {}
    sides = list(devices)
    removals: dict[str, list[str]] = {device: [] for device, _ in sides}
    for device, side in sides:
        device_reading = reading.download if side == "download" else reading.upload
        used_nodes = device_reading.node_index()
        lines: list[str] = []
        for action in actions:
            match action:
                case SetRate(session_id, speed):
                    minor = minors.get(session_id)
                    if minor is None:
                        minor = _free_minor(used_minors)
                        minors[session_id] = minor
                        used_minors.add(minor)
                    burst = burst_bytes(speed)
                    device_reading.classes[minor] = speed
                    lines.append(
                        f"class replace dev {device} parent 1: classid 1:{minor:x} htb"
                        f" rate {rate_text(speed)} ceil {rate_text(speed)}"
                        f" burst {burst} cburst {burst} quantum 1514"
                    )
                case UnshapeAddress(address):
                    old = device_reading.filters.pop(address, None)
                    if old is not None:
                        lines.append(_filter_delete(device, old))
                        used_nodes.get((old.version, old.bucket), set()).discard(old.node)
                case ShapeAddress(address, session_id):
                    old = device_reading.filters.pop(address, None)
                    if old is not None:
                        lines.append(_filter_delete(device, old))
                        used_nodes.get((old.version, old.bucket), set()).discard(old.node)
                    minor = minors.get(session_id)
                    if minor is None:
                        raise DriverError(f"no tc class for session {session_id}")
                    ip = ipaddress.ip_address(address)
                    bucket = ip.packed[-1]
                    nodes = used_nodes.setdefault((ip.version, bucket), set())
                    node = next(n for n in range(1, MAX_NODE + 2) if n not in nodes)
                    if node > MAX_NODE:
                        raise DriverError(f"u32 bucket {bucket:x} is full")
                    nodes.add(node)
                    device_reading.filters[address] = FilterEntry(ip.version, bucket, node, minor)
                    ht, prio, proto = _HT[ip.version], _PRIO[ip.version], _PROTO[ip.version]
                    lines.append(
                        f"filter add dev {device} parent 1: prio {prio}"
                        f" handle {ht:x}:{bucket:x}:{node:x} protocol {proto} u32"
                        f" ht {ht:x}:{bucket:x}: {' '.join(address_match(address, side))}"
                        f" flowid 1:{minors[session_id]:x}"
                    )
                case DeleteRate(session_id):
                    minor = minors.get(session_id)
                    if minor is not None and minor in device_reading.classes:
                        del device_reading.classes[minor]
                        removals[device].append(f"class del dev {device} classid 1:{minor:x}")
                case _:
                    pass
        scripts[device] = lines + removals[device]
    for action in actions:
        if isinstance(action, DeleteRate):
            minors.pop(action.session_id, None)
    return scripts


def _filter_delete(device: str, entry: FilterEntry) -> str:
    ht, prio, proto = _HT[entry.version], _PRIO[entry.version], _PROTO[entry.version]
    return (
        f"filter del dev {device} parent 1: prio {prio}"
        f" handle {ht:x}:{entry.bucket:x}:{entry.node:x} protocol {proto} u32"
    )


def _free_minor(used: set[int]) -> int:
    for minor in range(1, MAX_MINOR + 1):
        if minor not in used:
            return minor
    raise DriverError("no free HTB class id (65534 sessions on one gateway)")
