"""IPAM, pure: host index ↔ address, carving gateway blocks from the pools."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kswifi.control.gateways import ipam

V4_POOL = ipaddress.IPv4Network("100.64.0.0/10")
V6_POOL = ipaddress.IPv6Network("fd4b:5357:4946::/48")


class TestHostAddresses:
    def test_gateway_takes_index_one_and_devices_start_at_two(self) -> None:
        blocks = ipam.GatewayBlocks.parse("100.64.0.0/16", "fd4b:5357:4946::/64")
        assert blocks.interface_addresses() == ["100.64.0.1/16", "fd4b:5357:4946::1/64"]
        assert blocks.device_addresses(2) == ("100.64.0.2", "fd4b:5357:4946::2")
        with pytest.raises(ipam.AddressError):
            blocks.device_addresses(ipam.GATEWAY_HOST_INDEX)

    def test_no_24_ceiling(self) -> None:
        blocks = ipam.GatewayBlocks.parse("100.64.0.0/16", "fd4b:5357:4946::/64")
        assert blocks.max_host_index == 65_534
        assert blocks.device_capacity == 65_533
        assert blocks.device_addresses(256) == ("100.64.1.0", "fd4b:5357:4946::100")
        assert blocks.device_addresses(65_534) == ("100.64.255.254", "fd4b:5357:4946::fffe")

    def test_network_and_broadcast_are_never_handed_out(self) -> None:
        block = ipaddress.IPv4Network("100.64.0.0/16")
        with pytest.raises(ipam.AddressError):
            ipam.host_address(block, 0)
        with pytest.raises(ipam.AddressError):
            ipam.host_address(block, 65_535)  # 100.64.255.255, the broadcast address
        with pytest.raises(ipam.AddressError):
            ipam.host_index_of(block, "100.64.255.255")
        with pytest.raises(ipam.AddressError):
            ipam.host_index_of(block, "100.64.0.0")

    def test_v6_subnet_router_anycast_is_never_handed_out(self) -> None:
        with pytest.raises(ipam.AddressError):
            ipam.host_address(ipaddress.IPv6Network("fd00::/64"), 0)

    def test_address_outside_block_is_refused(self) -> None:
        with pytest.raises(ipam.AddressError):
            ipam.host_index_of(ipaddress.IPv4Network("100.64.0.0/16"), "100.65.0.2")
        with pytest.raises(ipam.AddressError):
            ipam.host_index_of(ipaddress.IPv4Network("100.64.0.0/16"), "fd00::2")

    def test_a_tiny_block_still_works(self) -> None:
        blocks = ipam.GatewayBlocks.parse("100.64.0.0/30", "fd00::/64")
        assert blocks.max_host_index == 2
        assert blocks.device_capacity == 1
        assert blocks.device_addresses(2) == ("100.64.0.2", "fd00::2")
        with pytest.raises(ipam.AddressError):
            blocks.device_addresses(3)

    def test_host_cidr(self) -> None:
        assert ipam.host_cidr("100.64.0.2") == "100.64.0.2/32"
        assert ipam.host_cidr("100.64.0.2/16") == "100.64.0.2/32"
        assert ipam.host_cidr("fd00::2") == "fd00::2/128"

    def test_host_bits_in_a_block_are_an_error(self) -> None:
        with pytest.raises(ipam.AddressError):
            ipam.GatewayBlocks.parse("100.64.0.1/16", "fd00::/64")

    @given(prefix=st.integers(min_value=8, max_value=30), data=st.data())
    def test_v4_index_round_trip(self, prefix: int, data: st.DataObject) -> None:
        block = ipaddress.IPv4Network(f"100.64.0.0/{max(prefix, 10)}")
        index = data.draw(st.integers(min_value=1, max_value=ipam.max_host_index(block)))
        address = ipam.host_address(block, index)
        assert address in block
        assert address not in (block.network_address, block.broadcast_address)
        assert ipam.host_index_of(block, address) == index

    @given(index=st.integers(min_value=1, max_value=2**64 - 1))
    def test_v6_index_round_trip(self, index: int) -> None:
        block = ipaddress.IPv6Network("fd4b:5357:4946:7::/64")
        address = ipam.host_address(block, index)
        assert address in block
        assert ipam.host_index_of(block, address) == index

    @given(st.sets(st.integers(min_value=2, max_value=65_534), min_size=2, max_size=50))
    def test_distinct_indexes_give_distinct_addresses(self, indexes: set[int]) -> None:
        blocks = ipam.GatewayBlocks.parse("100.64.0.0/16", "fd4b:5357:4946::/64")
        pairs = [blocks.device_addresses(index) for index in indexes]
        assert len({v4 for v4, _ in pairs}) == len(indexes)
        assert len({v6 for _, v6 in pairs}) == len(indexes)
        assert "100.64.0.1" not in {v4 for v4, _ in pairs}


class TestCarving:
    def test_first_blocks_in_order(self) -> None:
        assert ipam.carve_block(V4_POOL, 16, []) == ipaddress.ip_network("100.64.0.0/16")
        assert ipam.carve_block(V4_POOL, 16, ["100.64.0.0/16"]) == ipaddress.ip_network(
            "100.65.0.0/16"
        )
        assert ipam.carve_block(V6_POOL, 64, ["fd4b:5357:4946::/64"]) == ipaddress.ip_network(
            "fd4b:5357:4946:1::/64"
        )

    def test_a_gap_is_reused_and_odd_sized_blocks_are_respected(self) -> None:
        taken = ["100.64.0.0/16", "100.66.0.0/16", "100.65.128.0/24"]
        assert ipam.carve_block(V4_POOL, 16, taken) == ipaddress.ip_network("100.67.0.0/16")
        assert ipam.carve_block(V4_POOL, 24, taken) == ipaddress.ip_network("100.65.0.0/24")

    def test_exhaustion(self) -> None:
        taken = [str(block) for block in V4_POOL.subnets(new_prefix=16)]
        with pytest.raises(ipam.PoolExhausted):
            ipam.carve_block(V4_POOL, 16, taken)

    def test_block_larger_than_pool_is_refused(self) -> None:
        with pytest.raises(ipam.AddressError):
            ipam.carve_block(V4_POOL, 8, [])

    def test_v6_blocks_do_not_collide_with_v4(self) -> None:
        assert ipam.carve_block(V4_POOL, 16, ["fd4b:5357:4946::/64"]) == ipaddress.ip_network(
            "100.64.0.0/16"
        )

    @given(
        prefix=st.integers(min_value=12, max_value=20),
        taken_count=st.integers(min_value=0, max_value=40),
        taken_prefixes=st.lists(st.integers(min_value=11, max_value=24), max_size=40),
        seeds=st.lists(st.integers(min_value=0, max_value=2**22 - 1), max_size=40),
    )
    def test_carved_block_is_free_aligned_and_lowest(
        self, prefix: int, taken_count: int, taken_prefixes: list[int], seeds: list[int]
    ) -> None:
        taken: list[ipaddress.IPv4Network] = []
        for taken_prefix, seed in zip(taken_prefixes[:taken_count], seeds, strict=False):
            address = ipaddress.IPv4Address(int(V4_POOL.network_address) + seed)
            taken.append(ipaddress.IPv4Network(f"{address}/{taken_prefix}", strict=False))
        try:
            block = ipam.carve_block(V4_POOL, prefix, taken)
        except ipam.PoolExhausted:
            assert all(
                any(candidate.overlaps(other) for other in taken)
                for candidate in V4_POOL.subnets(new_prefix=prefix)
            )
            return
        assert block.prefixlen == prefix
        assert block.subnet_of(V4_POOL)  # type: ignore[arg-type]
        assert not any(block.overlaps(other) for other in taken)
        for earlier in V4_POOL.subnets(new_prefix=prefix):
            if earlier == block:
                break
            assert any(earlier.overlaps(other) for other in taken)
