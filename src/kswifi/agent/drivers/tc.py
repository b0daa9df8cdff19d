"""tc driver: an HTB class per session, download on the download loop's entry, upload via IFB.

Both shapers sit before the counters that bill (see `loop`): the download loop's entry device
matches the destination address; the IFB device, fed by an ingress `mirred` redirect from the
WireGuard device, the source address. Layout on each shaped device:

    qdisc htb 1: root (unclassified traffic goes to HTB's direct queue, unshaped)
      u32 prio 10 (IPv4) / prio 20 (IPv6): hash the address' last byte into table 10: / 20:
      filter 10:BUCKET:NODE match <address> flowid 1:B+1     <- the session's bucket
      class 1:B+1 htb (never the bottleneck)                  <- one per bucket B
        qdisc htb B+2: (child)
          u32 tables 1BB: / 2BB: (BB = B in hex), hashed the same way
          filter 1BB:BUCKET:NODE match <address> flowid B+2:MINOR
          class B+2:MINOR htb rate R ceil R                   <- one per session

Traffic of an address no filter names (a peer in the walled garden) falls through to a
catch-all filter (prio 30) into one shared class, `1:ffff` (the garden's rate).

A session's MINOR (1..65534, the lowest free one when it is first shaped, the same on both
devices) fixes its bucket, B = (MINOR - 1) // 256, so a restarted agent reads the same
placement back from the kernel. Creating an HTB class walks every class and filter of its
qdisc; 256 sessions per child qdisc keep that walk short (flat, 10,000 sessions took 14.6 s
of `tc -batch`). The kernel still searches one host-wide list of tc blocks (one per HTB
class, on devices without tc offload) on every class creation, so creating classes stays
quadratic in the HTB classes of the whole machine, with a far smaller constant. A bucket
whose last session goes is deleted.

The layout's arithmetic and the parsers that read it back are in `tc_layout`.

All changes of a reconcile go through ONE `tc -batch -` (both devices; a bulk change, one per
device, pipelined with the rendering); a tier change is `class replace` in place.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from kswifi.agent.actions import Action, DeleteRate, SetRate, ShapeAddress, UnshapeAddress
from kswifi.agent.drivers.command import Runner
from kswifi.agent.drivers.loop import loop_names
from kswifi.agent.drivers.tc_layout import (
    BUCKET_SIZE,
    GARDEN_MINOR,
    MAX_MINOR,
    MAX_NODE,
    OFFSETS,
    ROOT,
    DeviceReading,
    FilterEntry,
    Side,
    TcReading,
    bucket_class,
    bucket_major,
    bucket_of,
    parse_classes,
    parse_device,
    table_id,
)
from kswifi.agent.errors import CommandError, DriverError

PIPELINE_ACTIONS = 2_000
"""From this many actions on, each device gets its own `tc -batch` as soon as it is rendered."""
GARDEN_PRIO = 30
DEFAULT_GARDEN_KBIT = 256
_PRIO = {4: 10, 6: 20}
_PROTO = {4: "ip", 6: "ipv6"}
BUCKET_MBPS = 100_000
"""A bucket class never limits: its sessions' own classes do. Its burst is set explicitly
(2 ms at its rate): tc's default for 100 Gbit/s is about one packet, which throttles every
burst of packets for a few hundred nanoseconds each and costs a timer per packet."""


class TcDriver(Protocol):
    def ensure_structure(self) -> None: ...

    def use_garden(self, kbit: int) -> None: ...

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


def packed_address(address: str) -> tuple[int, bytes]:
    """(IP version, packed bytes) of a host address (inet_pton: 10,000s per reconcile)."""
    try:
        if ":" in address:
            return 6, socket.inet_pton(socket.AF_INET6, address)
        return 4, socket.inet_pton(socket.AF_INET, address)
    except OSError as exc:
        raise ValueError(f"not an IP address: {address!r}") from exc


@functools.lru_cache(maxsize=1 << 17)
def address_match(address: str, side: Side) -> str:
    """`match u32 WORD 0xffffffff at OFF` words for the address on this side."""
    version, raw = packed_address(address)
    base = OFFSETS[(version, side)]
    return " ".join(
        f"match u32 0x{raw[i : i + 4].hex()} 0xffffffff at {base + i}"
        for i in range(0, len(raw), 4)
    )


@dataclass
class TcShaper:
    """The one real tc driver (shells out to `tc`). `interface` is the WireGuard device (its
    ingress feeds the IFB device); downloads are shaped on the download loop's entry."""

    runner: Runner
    interface: str
    ifb_interface: str
    scripts: list[list[str]] = field(default_factory=list, repr=False)
    garden_kbit: int = DEFAULT_GARDEN_KBIT

    @property
    def download_interface(self) -> str:
        return loop_names(self.interface)[0]

    def _devices(self) -> tuple[tuple[str, Side], tuple[str, Side]]:
        return (self.download_interface, "download"), (self.ifb_interface, "upload")

    def _link_exists(self, name: str) -> bool:
        try:
            self.runner(["ip", "link", "show", "dev", name])
        except CommandError:
            return False
        return True

    def ensure_structure(self) -> None:
        """Create the IFB device, root HTB, hash tables and the ingress redirect if missing.

        Existing structure is kept (agent restart: classes and filters survive). A root that is
        not this layout (an older flat one, or a bucket left half-built by an agent killed
        mid-batch) is rebuilt empty: shaping only, peers and quotas are untouched, and the next
        reconcile shapes every session again."""
        if not self._link_exists(self.ifb_interface):
            self.runner(["ip", "link", "add", "dev", self.ifb_interface, "type", "ifb"])
        # The IFB default queue (32 packets) would drop bursts; HTB leaves inherit this length.
        self.runner(["ip", "link", "set", "dev", self.ifb_interface, "txqueuelen", "1000", "up"])
        # An agent before the download loop shaped downloads on the WireGuard device itself.
        tunnel_qdiscs = self._qdiscs(self.interface)
        if re.search(r"^qdisc htb 1: root", tunnel_qdiscs, re.M):
            self.runner(["tc", "qdisc", "del", "dev", self.interface, "root"])
        for device, side in self._devices():
            reading, root_present = self._read_device(device, side)
            if not reading.ready:
                if root_present:
                    with contextlib.suppress(CommandError):
                        self.runner(["tc", "qdisc", "del", "dev", device, "root"])
                self._batch(device, _skeleton(device, side))
            garden = self.runner(
                ["tc", "filter", "show", "dev", device, "parent", "1:", "prio", str(GARDEN_PRIO)]
            )
            script = [_garden_class(device, self.garden_kbit)]
            if f"flowid 1:{GARDEN_MINOR:x}" not in garden:
                script.append(_garden_filter(device))
            self._batch(device, script)
        if "qdisc ingress ffff:" not in tunnel_qdiscs:
            self._batch(
                self.interface,
                [
                    f"qdisc add dev {self.interface} handle ffff: ingress",
                    f"filter add dev {self.interface} parent ffff: protocol all prio 1 u32"
                    f" match u32 0 0 action mirred egress redirect dev {self.ifb_interface}",
                ],
            )

    def use_garden(self, kbit: int) -> None:
        """The walled garden's shared rate, both directions (a class changed in place)."""
        if kbit == self.garden_kbit:
            return
        self.garden_kbit = kbit
        for device, _ in self._devices():
            self._batch(device, [_garden_class(device, kbit)])

    def _qdiscs(self, device: str) -> str:
        return self.runner(["tc", "qdisc", "show", "dev", device])

    def _read_device(self, device: str, side: Side) -> tuple[DeviceReading, bool]:
        """The device's reading and whether a root HTB exists (two `tc -batch` runs: qdiscs and
        classes, then the filters of the root and of every bucket's child qdisc)."""
        listing = self.runner(
            ["tc", "-batch", "-"], input_text=f"qdisc show dev {device}\nclass show dev {device}\n"
        )
        qdiscs = "".join(line for line in listing.splitlines(True) if line.startswith("qdisc "))
        classes = "".join(line for line in listing.splitlines(True) if line.startswith("class "))
        if not re.search(r"^qdisc htb 1: root", qdiscs, re.M):
            return DeviceReading(), False
        _, root_classes = parse_classes(classes)
        script = [f"filter show dev {device} parent 1:"]
        script += [f"filter show dev {device} parent {minor + 1:x}:" for minor in root_classes]
        text = self.runner(["tc", "-batch", "-"], input_text="\n".join(script) + "\n")
        return parse_device(qdiscs, classes, text, side), True

    def read(self) -> TcReading:
        down, up = self._devices()
        return TcReading(self._read_device(*down)[0], self._read_device(*up)[0])

    def apply(
        self, actions: Sequence[Action], reading: TcReading, session_minors: Mapping[str, int]
    ) -> tuple[TcReading, dict[str, int]]:
        """Render and run the tc part of `actions`: ONE `tc -batch -` for both devices, or
        for a bulk change (a restart onto thousands of sessions) one per device, the first
        running while the second renders.

        Returns the reading and the session -> minor map the kernel holds afterwards (the
        reading passed in is not changed)."""
        minors = dict(session_minors)
        after = reading.copy()
        rendered = render_tc_by_device(self._devices(), actions, after, minors)
        if len(actions) < PIPELINE_ACTIONS:
            scripts = [script for _, script in rendered if script]
            self.scripts = scripts
            if scripts:
                names = "+".join(device for device, _ in self._devices())
                self._batch(names, [line for script in scripts for line in script])
            return after, minors
        self.scripts = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tc-batch") as pool:
            running = []
            for device, script in rendered:
                if script:
                    self.scripts.append(script)
                    running.append(pool.submit(self._batch, device, script))
            for batch in running:
                batch.result()
        return after, minors

    def _batch(self, device: str, script: Sequence[str]) -> None:
        try:
            self.runner(["tc", "-force", "-batch", "-"], input_text="\n".join(script) + "\n")
        except CommandError as exc:
            raise DriverError(f"tc batch on {device} ({len(script)} lines): {exc.stderr}") from exc

    def teardown(self) -> None:
        """Remove every qdisc the driver made and the IFB device."""
        for args in (
            ["tc", "qdisc", "del", "dev", self.download_interface, "root"],
            ["tc", "qdisc", "del", "dev", self.interface, "ingress"],
            ["ip", "link", "del", "dev", self.ifb_interface],
        ):
            with contextlib.suppress(CommandError):
                self.runner(args)


def _tables(device: str, parent: int, side: Side) -> list[str]:
    """The IPv4 and IPv6 hash tables of one qdisc and the filters that hash into them."""
    lines = []
    for version in (4, 6):
        ht, prio, proto = table_id(parent, version), _PRIO[version], _PROTO[version]
        base = OFFSETS[(version, side)]
        last_word = base + (0 if version == 4 else 12)
        lines += [
            f"filter add dev {device} parent {parent:x}: prio {prio} handle {ht:x}:"
            f" protocol {proto} u32 divisor 256",
            f"filter add dev {device} parent {parent:x}: prio {prio} protocol {proto} u32"
            f" match u32 0 0 at {base} hashkey mask 0x000000ff at {last_word} link {ht:x}:",
        ]
    return lines


def _skeleton(device: str, side: Side) -> list[str]:
    return [
        f"qdisc replace dev {device} root handle 1: htb default 0 r2q 100",
        *_tables(device, ROOT, side),
    ]


def _garden_class(device: str, kbit: int) -> str:
    burst = max(1600, kbit * 1000 // 8 // 50)  # 20 ms at the rate, at least one packet
    return (
        f"class replace dev {device} parent 1: classid 1:{GARDEN_MINOR:x} htb"
        f" rate {kbit}kbit ceil {kbit}kbit burst {burst} cburst {burst} quantum 1600"
    )


def _garden_filter(device: str) -> str:
    return (
        f"filter add dev {device} parent 1: prio {GARDEN_PRIO} protocol all u32"
        f" match u32 0 0 flowid 1:{GARDEN_MINOR:x}"
    )


def _bucket_skeleton(device: str, side: Side, bucket: int) -> list[str]:
    minor, major = bucket_class(bucket), bucket_major(bucket)
    return [
        f"class replace dev {device} parent 1: classid 1:{minor:x} htb"
        f" rate {rate_text(BUCKET_MBPS)} ceil {rate_text(BUCKET_MBPS)}"
        f" burst {burst_bytes(BUCKET_MBPS)} cburst {burst_bytes(BUCKET_MBPS)} quantum 60000",
        f"qdisc replace dev {device} parent 1:{minor:x} handle {major:x}: htb default 0 r2q 100",
        *_tables(device, major, side),
    ]


def render_tc(
    devices: Iterable[tuple[str, Side]],
    actions: Sequence[Action],
    reading: TcReading,
    minors: dict[str, int],
) -> dict[str, list[str]]:
    """tc batch lines per device. Mutates `minors` (new sessions get the lowest free minor)
    and `reading` (it becomes what the kernel holds once the lines ran)."""
    return dict(render_tc_by_device(devices, actions, reading, minors))


def render_tc_by_device(
    devices: Iterable[tuple[str, Side]],
    actions: Sequence[Action],
    reading: TcReading,
    minors: dict[str, int],
) -> Iterator[tuple[str, list[str]]]:
    """`render_tc` one device at a time (a device's batch can run while the next renders);
    `minors` and `reading` are complete once the last device was yielded."""
    used_minors: set[int] = set()  # filled on the first new session
    cursor = [1]  # nothing below the last minor handed out is free (the set only grows here)
    devices = list(devices)
    last = devices[-1][0] if devices else None
    for device, side in devices:
        device_reading = reading.download if side == "download" else reading.upload
        used_nodes = _Nodes(device_reading.node_index())
        lines: list[str] = []
        removals: list[str] = []
        emptied: set[int] = set()  # buckets that lost a class in this batch

        for action in actions:
            match action:
                case SetRate(session_id, speed):
                    minor = minors.get(session_id)
                    if minor is None:
                        if not used_minors:
                            used_minors = set(reading.download.classes)
                            used_minors |= reading.upload.classes.keys() | minors.values()
                        minor = _free_minor(used_minors, cursor[0])
                        cursor[0] = minor + 1
                        minors[session_id] = minor
                        used_minors.add(minor)
                    bucket = bucket_of(minor)
                    if bucket not in device_reading.buckets:
                        lines += _bucket_skeleton(device, side, bucket)
                        device_reading.buckets.add(bucket)
                    burst = burst_bytes(speed)
                    device_reading.classes[minor] = speed
                    lines.append(
                        f"class replace dev {device} parent {bucket_major(bucket):x}:"
                        f" classid {bucket_major(bucket):x}:{minor:x} htb"
                        f" rate {rate_text(speed)} ceil {rate_text(speed)}"
                        f" burst {burst} cburst {burst} quantum 1514"
                    )
                case UnshapeAddress(address):
                    lines += _unshape(device, device_reading, used_nodes, address)
                case ShapeAddress(address, session_id):
                    lines += _unshape(device, device_reading, used_nodes, address)
                    minor = minors.get(session_id)
                    if minor is None:
                        raise DriverError(f"no tc class for session {session_id}")
                    bucket = bucket_of(minor)
                    version, raw = packed_address(address)
                    hashed = raw[-1]
                    for major, target in (
                        (ROOT, bucket_class(bucket)),
                        (bucket_major(bucket), minor),
                    ):
                        node = used_nodes.take((major, version, hashed))
                        entry = FilterEntry(version, hashed, node, target)
                        if major == ROOT:
                            device_reading.routes[address] = entry
                        else:
                            device_reading.filters[address] = entry
                        lines.append(_filter_add(device, side, major, address, entry))
                case DeleteRate(session_id):
                    minor = minors.get(session_id)
                    if minor is not None and minor in device_reading.classes:
                        del device_reading.classes[minor]
                        major = bucket_major(bucket_of(minor))
                        removals.append(f"class del dev {device} classid {major:x}:{minor:x}")
                        emptied.add(bucket_of(minor))
                case _:
                    pass
        classes = device_reading.classes
        for bucket in sorted(emptied & device_reading.buckets):
            first = bucket * BUCKET_SIZE + 1
            if any(m in classes for m in range(first, first + BUCKET_SIZE)):
                continue
            # Root filters still leading here (none, unless left over) would keep the class.
            for address, route in list(device_reading.routes.items()):
                if route.minor == bucket_class(bucket):
                    del device_reading.routes[address]
                    removals.append(_filter_delete(device, ROOT, route))
                    used_nodes.release((ROOT, route.version, route.bucket), route.node)
            device_reading.buckets.discard(bucket)
            removals.append(f"class del dev {device} classid 1:{bucket_class(bucket):x}")
            used_nodes.drop_qdisc(bucket_major(bucket))
        used_nodes.finish()
        if device == last:
            for action in actions:
                if isinstance(action, DeleteRate):
                    minors.pop(action.session_id, None)
        yield device, lines + removals


NodeIndex = dict[tuple[int, int, int], frozenset[int]]


def _unshape(device: str, reading: DeviceReading, used_nodes: _Nodes, address: str) -> list[str]:
    """Delete the address' filters (child qdisc and root) from `reading`; the tc lines."""
    lines = []
    old = reading.filters.pop(address, None)
    if old is not None:
        major = bucket_major(bucket_of(old.minor))
        lines.append(_filter_delete(device, major, old))
        used_nodes.release((major, old.version, old.bucket), old.node)
    route = reading.routes.pop(address, None)
    if route is not None:
        lines.append(_filter_delete(device, ROOT, route))
        used_nodes.release((ROOT, route.version, route.bucket), route.node)
    return lines


@dataclass
class _Nodes:
    """u32 node ids in use during one render: the reading's sets are shared (frozen), a set
    is copied the first time the render changes it and written back by `finish`."""

    index: NodeIndex
    owned: dict[tuple[int, int, int], set[int]] = field(default_factory=dict)

    def _own(self, key: tuple[int, int, int]) -> set[int]:
        nodes = self.owned.get(key)
        if nodes is None:
            nodes = self.owned[key] = set(self.index.get(key, ()))
        return nodes

    def take(self, key: tuple[int, int, int]) -> int:
        """A free node id (any: ids only need to be unique in their hash bucket)."""
        nodes = self._own(key)
        node = len(nodes) + 1
        while node in nodes:
            node += 1
        if node > MAX_NODE:
            node = next((n for n in range(1, MAX_NODE + 1) if n not in nodes), 0)
            if not node:
                raise DriverError(f"u32 bucket {key[2]:x} of qdisc {key[0]:x}: is full")
        nodes.add(node)
        return node

    def release(self, key: tuple[int, int, int], node: int) -> None:
        self._own(key).discard(node)

    def drop_qdisc(self, major: int) -> None:
        for key in [k for k in self.index.keys() | self.owned.keys() if k[0] == major]:
            self.index.pop(key, None)
            self.owned.pop(key, None)

    def finish(self) -> None:
        for key, nodes in self.owned.items():
            self.index[key] = frozenset(nodes)
        self.owned.clear()


def _filter_add(device: str, side: Side, parent: int, address: str, entry: FilterEntry) -> str:
    ht, prio, proto = table_id(parent, entry.version), _PRIO[entry.version], _PROTO[entry.version]
    return (
        f"filter add dev {device} parent {parent:x}: prio {prio}"
        f" handle {ht:x}:{entry.bucket:x}:{entry.node:x} protocol {proto} u32"
        f" ht {ht:x}:{entry.bucket:x}: {address_match(address, side)}"
        f" flowid {parent:x}:{entry.minor:x}"
    )


def _filter_delete(device: str, parent: int, entry: FilterEntry) -> str:
    ht, prio, proto = table_id(parent, entry.version), _PRIO[entry.version], _PROTO[entry.version]
    return (
        f"filter del dev {device} parent {parent:x}: prio {prio}"
        f" handle {ht:x}:{entry.bucket:x}:{entry.node:x} protocol {proto} u32"
    )


def _free_minor(used: set[int], start: int = 1) -> int:
    for minor in range(start, MAX_MINOR + 1):
        if minor not in used:
            return minor
    raise DriverError("no free HTB class id (65534 sessions on one gateway)")
