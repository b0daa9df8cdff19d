"""The tc layout the driver builds and reads back (see `tc`): which class, qdisc and u32 hash
table belongs to which bucket and session, and the parsers that read the kernel's listing back
into a `TcReading`."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Literal

Side = Literal["download", "upload"]
MAX_MINOR = 0xFFFE
MAX_NODE = 0xFFF
BUCKET_SIZE = 256
"""Sessions per child HTB qdisc."""
ROOT = 1
GARDEN_MINOR = 0xFFFF
"""The root class every unfiltered address shares: the walled garden."""
HT = {4: 0x10, 6: 0x20}
# Byte offsets of the addresses in the IPv4 / IPv6 header.
OFFSETS: dict[tuple[int, Side], int] = {
    (4, "download"): 16,
    (4, "upload"): 12,
    (6, "download"): 24,
    (6, "upload"): 8,
}
_UNITS = {"": 1, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000, "T": 1_000_000_000_000}
_CLASS = re.compile(
    r"^class htb ([0-9a-f]+):([0-9a-f]+) .*?\brate (\d+(?:\.\d+)?)([KMGT]?)bit", re.M
)
_CHILD_QDISC = re.compile(r"^qdisc htb ([0-9a-f]+): parent 1:([0-9a-f]+)", re.M)
# One per-address filter and its match words (tc prints hash bucket 0 as nothing: `fh 10::1`).
_WORD = r"  match ([0-9a-f]{8})/ffffffff at (\d+)\n"
_ENTRY = re.compile(
    r"fh ([0-9a-f]+):([0-9a-f]*):([0-9a-f]+) [^\n]*?flowid ([0-9a-f]+):([0-9a-f]+)[^\n]*\n"
    + _WORD
    + f"(?:{_WORD}{_WORD}{_WORD})?"
)
_TABLE = re.compile(r"fh ([0-9a-f]+): ht divisor 256")


def table_id(major: int, version: int) -> int:
    """u32 hash table id: 10: / 20: in the root, 1BB: / 2BB: in bucket BB's child qdisc (ids
    distinct across qdiscs, so one dump of all filters tells each filter's qdisc)."""
    if major == ROOT:
        return HT[version]
    return (0x100 if version == 4 else 0x200) + major - 2


def table_owner(ht: int) -> tuple[int, int] | None:
    """(qdisc major, IP version) of a hash table id, None if not one of ours."""
    if ht in (HT[4], HT[6]):
        return ROOT, 4 if ht == HT[4] else 6
    if 0x100 <= ht < 0x300:
        return (ht & 0xFF) + 2, 4 if ht < 0x200 else 6
    return None


def bucket_of(minor: int) -> int:
    return (minor - 1) // BUCKET_SIZE


def bucket_class(bucket: int) -> int:
    """Minor of the bucket's class in the root qdisc."""
    return bucket + 1


def bucket_major(bucket: int) -> int:
    """Handle (major) of the bucket's child qdisc."""
    return bucket + 2


@dataclass(frozen=True)
class FilterEntry:
    """One per-address u32 filter as read back from the kernel (`minor`: the class it points
    at within its qdisc: a session's minor in a child qdisc, a bucket class in the root)."""

    version: int
    bucket: int
    node: int
    minor: int


@dataclass
class DeviceReading:
    """Session classes (minor -> rate Mbit/s) and per-address filters of one device.

    `filters` are the child qdiscs' filters (address -> session minor), `routes` the root's
    (address -> bucket class), `buckets` the buckets whose class, child qdisc and hash tables
    exist."""

    classes: dict[int, int] = field(default_factory=dict)
    filters: dict[str, FilterEntry] = field(default_factory=dict)
    ready: bool = False
    routes: dict[str, FilterEntry] = field(default_factory=dict)
    buckets: set[int] = field(default_factory=set)
    nodes: dict[tuple[int, int, int], frozenset[int]] | None = field(default=None, compare=False)
    """(qdisc major, version, hash bucket) -> u32 node ids in use; built once, then kept
    (immutable sets: a copy of the reading shares them)."""

    def node_index(self) -> dict[tuple[int, int, int], frozenset[int]]:
        if self.nodes is None:
            index: dict[tuple[int, int, int], set[int]] = {}
            for entry in self.filters.values():
                major = bucket_major(bucket_of(entry.minor))
                index.setdefault((major, entry.version, entry.bucket), set()).add(entry.node)
            for entry in self.routes.values():
                index.setdefault((ROOT, entry.version, entry.bucket), set()).add(entry.node)
            self.nodes = {key: frozenset(nodes) for key, nodes in index.items()}
        return self.nodes

    def shaped(self) -> dict[str, int]:
        """Addresses whose root filter leads to the bucket holding their session's class."""
        routes = self.routes
        return {
            address: entry.minor
            for address, entry in self.filters.items()
            if (route := routes.get(address)) is not None
            and route.minor == bucket_class(bucket_of(entry.minor))
        }

    def copy(self) -> DeviceReading:
        nodes = None if self.nodes is None else dict(self.nodes)
        return DeviceReading(
            dict(self.classes),
            dict(self.filters),
            self.ready,
            dict(self.routes),
            set(self.buckets),
            nodes,
        )


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
        up = self.upload.shaped()
        return {
            address: minor
            for address, minor in self.download.shaped().items()
            if up.get(address) == minor
        }


def parse_classes(text: str) -> tuple[dict[int, int], set[int]]:
    """Session classes (minor -> rate Mbit/s) that sit in their bucket's child qdisc, and the
    root's class minors."""
    classes: dict[int, int] = {}
    root: set[int] = set()
    for major_text, minor_text, value, unit in _CLASS.findall(text):
        major, minor = int(major_text, 16), int(minor_text, 16)
        if major == ROOT:
            if minor != GARDEN_MINOR:
                root.add(minor)
        elif 0 < minor <= MAX_MINOR and major == bucket_major(bucket_of(minor)):
            classes[minor] = round(float(value) * _UNITS[unit] / 1_000_000)
    return classes, root


def parse_filters(text: str, side: Side) -> tuple[dict[int, dict[str, FilterEntry]], set[int]]:
    """Per-address filters by qdisc major (from the hash table each sits in; a filter whose
    flowid leaves its qdisc is skipped) and the hash table ids that exist."""
    filters: dict[int, dict[str, FilterEntry]] = {}
    tables = {int(t, 16) for t in _TABLE.findall(text)}
    offsets = {4: OFFSETS[(4, side)], 6: OFFSETS[(6, side)]}
    ntop = socket.inet_ntop
    for found in _ENTRY.finditer(text):
        ht_text, bucket_text, node_text, flow_major, minor_text, *words = found.groups()
        owner = table_owner(int(ht_text, 16))
        if owner is None or owner[0] != int(flow_major, 16):
            continue
        major, version = owner
        # The words as rendered: the whole address from its offset on, in order.
        offsets_seen = [int(off) for off in words[1::2] if off is not None]
        if offsets_seen != [offsets[version] + 4 * i for i in range(1 if version == 4 else 4)]:
            continue
        raw = bytes.fromhex("".join(word for word in words[::2] if word is not None))
        if version == 4:
            address = ntop(socket.AF_INET, raw)
        else:
            address = ntop(socket.AF_INET6, raw)
            if "." in address:  # inet_ntop writes some addresses with an embedded IPv4 part
                address = str(ipaddress.IPv6Address(raw))
        filters.setdefault(major, {})[address] = FilterEntry(
            version, int(bucket_text or "0", 16), int(node_text, 16), int(minor_text, 16)
        )
    return filters, tables


def parse_device(qdiscs: str, classes_text: str, filters_text: str, side: Side) -> DeviceReading:
    """A device's reading from `tc qdisc show`, `tc class show` and the filter dumps of the
    root and every child qdisc. The root's tables missing, or root classes that are not
    complete buckets (a flat layout from an older agent, or a bucket left half-built by an
    agent killed mid-batch), read as not ready."""
    classes, root_classes = parse_classes(classes_text)
    children = {int(minor, 16): int(major, 16) for major, minor in _CHILD_QDISC.findall(qdiscs)}
    by_qdisc, tables = parse_filters(filters_text, side)
    ready = {HT[4], HT[6]} <= tables
    buckets: set[int] = set()
    filters: dict[str, FilterEntry] = {}
    for minor in root_classes:
        bucket = minor - 1
        major = bucket_major(bucket)
        if (
            not 0 <= bucket <= bucket_of(MAX_MINOR)
            or children.get(minor) != major
            or not {table_id(major, 4), table_id(major, 6)} <= tables
        ):
            ready = False
            continue
        buckets.add(bucket)
        filters.update(
            (address, entry)
            for address, entry in by_qdisc.get(major, {}).items()
            if bucket_of(entry.minor) == bucket
        )
    routes = by_qdisc.get(ROOT, {})
    classes = {minor: rate for minor, rate in classes.items() if bucket_of(minor) in buckets}
    routes = {a: e for a, e in routes.items() if e.minor - 1 in buckets}
    return DeviceReading(classes, filters, ready, routes, buckets)
