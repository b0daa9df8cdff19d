"""Address management, pure: gateway blocks carved from the pools, host index ↔ address.

A gateway owns one IPv4 block (a /16 by default) and one IPv6 block (a /64). Every device on
the gateway gets one *host index*; its IPv4 and IPv6 addresses are that index within each block,
so one counter allocates both. Index 1 is the gateway itself, devices start at 2. The IPv4
network and broadcast addresses are never handed out, nor the IPv6 subnet-router anycast (0).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

GATEWAY_HOST_INDEX = 1
FIRST_DEVICE_HOST_INDEX = 2


class AddressError(ValueError):
    """An index or address outside what a block can hand out."""


class PoolExhausted(AddressError):
    """No free block of the wanted size is left in a pool."""


def parse_network(value: str) -> IPNetwork:
    """A network given as text; host bits set are an error (`100.64.0.1/16` is not a block)."""
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise AddressError(f"{value!r} is not a network address block: {exc}") from exc


def max_host_index(block: IPNetwork) -> int:
    """The highest usable host index: the IPv4 broadcast address is excluded, IPv6 has none."""
    if block.version == 4:
        # A /31 or /32 has no room for a gateway and a device.
        return max(0, block.num_addresses - 2)
    return block.num_addresses - 1


def host_address(block: IPNetwork, host_index: int) -> IPAddress:
    """The address of `host_index` in `block`."""
    if not 1 <= host_index <= max_host_index(block):
        raise AddressError(f"host index {host_index} is outside {block}")
    return block.network_address + host_index


def host_index_of(block: IPNetwork, address: IPAddress | str) -> int:
    """The host index of `address` in `block` (inverse of `host_address`)."""
    parsed = ipaddress.ip_address(address) if isinstance(address, str) else address
    if parsed.version != block.version or parsed not in block:
        raise AddressError(f"{parsed} is not in {block}")
    index = int(parsed) - int(block.network_address)
    if not 1 <= index <= max_host_index(block):
        raise AddressError(f"{parsed} is not a host address of {block}")
    return index


def interface_cidr(block: IPNetwork, host_index: int = GATEWAY_HOST_INDEX) -> str:
    """The gateway's interface address with the block's prefix, e.g. `100.64.0.1/16`."""
    return f"{host_address(block, host_index)}/{block.prefixlen}"


@functools.lru_cache(maxsize=1 << 18)  # desired states render the same addresses every poll
def host_cidr(address: str) -> str:
    """One address as a single-host network: `100.64.0.2` → `100.64.0.2/32`, v6 → `/128`.

    Accepts an address that was stored with a prefix (`100.64.0.2/16`) too.
    """
    ip = ipaddress.ip_interface(address).ip
    return f"{ip}/{ip.max_prefixlen}"


@dataclass(frozen=True)
class GatewayBlocks:
    """The two blocks of one gateway; the host index counter is shared by both."""

    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network

    @classmethod
    def parse(cls, ipv4: str, ipv6: str) -> GatewayBlocks:
        v4, v6 = parse_network(ipv4), parse_network(ipv6)
        if not isinstance(v4, ipaddress.IPv4Network) or not isinstance(v6, ipaddress.IPv6Network):
            raise AddressError("a gateway needs one IPv4 and one IPv6 block")
        return cls(v4, v6)

    @property
    def max_host_index(self) -> int:
        return min(max_host_index(self.ipv4), max_host_index(self.ipv6))

    @property
    def device_capacity(self) -> int:
        """How many devices the blocks can address at once (index 2 … max)."""
        return max(0, self.max_host_index - FIRST_DEVICE_HOST_INDEX + 1)

    def device_addresses(self, host_index: int) -> tuple[str, str]:
        """The (IPv4, IPv6) addresses of a device; the gateway's own index is refused."""
        if host_index < FIRST_DEVICE_HOST_INDEX or host_index > self.max_host_index:
            raise AddressError(
                f"host index {host_index} is not a device address of {self.ipv4} / {self.ipv6}"
            )
        return str(host_address(self.ipv4, host_index)), str(host_address(self.ipv6, host_index))

    def interface_addresses(self) -> list[str]:
        """The gateway's interface CIDRs: index 1 of each block."""
        return [interface_cidr(self.ipv4), interface_cidr(self.ipv6)]


@functools.lru_cache(maxsize=1024)
def cached_blocks(ipv4: str, ipv6: str) -> GatewayBlocks:
    """`GatewayBlocks.parse`, remembered: a gateway's blocks never change."""
    return GatewayBlocks.parse(ipv4, ipv6)


def carve_block(pool: IPNetwork, prefixlen: int, taken: Iterable[IPNetwork | str]) -> IPNetwork:
    """The lowest block of size `/prefixlen` in `pool` that overlaps none of `taken`.

    Blocks of another IP version are ignored; taken blocks may have any size. Runs in
    O(taken · log taken), whatever the size of the pool.
    """
    if prefixlen < pool.prefixlen or prefixlen > pool.max_prefixlen:
        raise AddressError(f"a /{prefixlen} block does not fit in {pool}")
    merged: list[tuple[int, int]] = []
    for start, end in sorted(
        (int(block.network_address), int(block.broadcast_address))
        for block in (parse_network(b) if isinstance(b, str) else b for b in taken)
        if block.version == pool.version
    ):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    starts = [start for start, _ in merged]
    size = 1 << (pool.max_prefixlen - prefixlen)
    pool_start, pool_end = int(pool.network_address), int(pool.broadcast_address)
    candidate = pool_start
    while candidate + size - 1 <= pool_end:
        # Merged intervals are disjoint and sorted: only the last one starting at or before
        # the candidate's end can overlap it.
        position = bisect.bisect_right(starts, candidate + size - 1) - 1
        if position < 0 or merged[position][1] < candidate:
            return ipaddress.ip_network((candidate, prefixlen))
        # Jump past the blocking interval, to the next boundary aligned on the block size.
        candidate = ((merged[position][1] - pool_start) // size + 1) * size + pool_start
    raise PoolExhausted(f"no free /{prefixlen} block left in {pool}")
