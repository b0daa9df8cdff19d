# ruff: noqa: E501  (captured `tc filter show` output is kept verbatim)
"""The drivers' pure parts: names, nft scripts, tc parsing and rendering (no root)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kswifi.agent.drivers.nftables import (
    NftConfig,
    object_name,
    parse_listing,
    parse_object_name,
    render_batch,
)
from kswifi.agent.drivers.tc import (
    DeviceReading,
    FilterEntry,
    TcReading,
    address_match,
    parse_classes,
    parse_filters,
    render_tc,
)
from kswifi.agent.reconcile import (
    CreateSession,
    DeleteRate,
    MapAddress,
    SetQuota,
    SetRate,
    ShapeAddress,
    UnmapAddress,
)

CONFIG = NftConfig("kswifi0", "eth0")


@given(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=64)
)
def test_object_names_round_trip(session_id: str) -> None:
    for kind in ("quota", "up", "down"):
        name = object_name(kind, session_id)
        assert parse_object_name(name) == (kind, session_id)
        assert len(name) <= 256 and " " not in name and '"' not in name


class TestNftScript:
    def test_one_batch_with_skeleton_objects_and_elements(self) -> None:
        script = render_batch(
            CONFIG,
            [CreateSession("s-1", 5000, 100), MapAddress("100.64.0.2", "s-1")],
            {},
        )
        assert script[0] == "add table inet kswifi"
        assert "add quota inet kswifi q-s-1 { over 5000 bytes used 100 bytes }" in script
        assert 'add element inet kswifi up4 { 100.64.0.2 : "up-s-1" }' in script
        assert any("masquerade" in line and '"eth0"' in line for line in script)

    def test_quota_reset_replaces_object_and_its_elements_atomically(self) -> None:
        script = render_batch(CONFIG, [SetQuota("s1", 9000, 4000)], {"100.64.0.2": "s1"})
        body = script[
            script.index(
                'add rule inet kswifi postrouting iifname "kswifi0" oifname "eth0" masquerade'
            )
            + 1 :
        ]
        assert body == [
            "delete element inet kswifi quota4 { 100.64.0.2 }",
            "delete quota inet kswifi q-s1",
            "add quota inet kswifi q-s1 { over 9000 bytes used 4000 bytes }",
            'add element inet kswifi quota4 { 100.64.0.2 : "q-s1" }',
        ]

    def test_unmap_deletes_existing_elements_only(self) -> None:
        script = render_batch(
            CONFIG,
            [UnmapAddress("100.64.0.2", "removed"), UnmapAddress("100.64.0.9", "removed")],
            {"100.64.0.2": "s1"},
        )
        assert sum("delete element" in line for line in script) == 3

    def test_parse_listing(self) -> None:
        reading = parse_listing(
            [
                {
                    "nftables": [
                        {"quota": {"name": "q-s1", "bytes": 100, "used": 40, "inv": True}},
                        {"counter": {"name": "up-s1", "handle": 3, "bytes": 10}},
                        {"counter": {"name": "dn-s1", "handle": 4, "bytes": 30}},
                        {"map": {"name": "quota6", "elem": [["fd00::2", "q-s1"]]}},
                    ]
                }
            ]
        )
        assert reading.sessions["s1"].upload_bytes == 10
        assert reading.counters[("s1", "down")] == (4, 30)
        assert reading.addresses == {"fd00::2": "s1"}


FILTERS = """filter parent 1: protocol ip pref 10 u32 chain 0 fh 10::1 order 1 key ht 10 bkt 0 *flowid 1:ff not_in_hw
  match 64400100/ffffffff at 16
filter parent 1: protocol ip pref 10 u32 chain 0 fh 10:2:3 order 3 key ht 10 bkt 2 *flowid 1:1 not_in_hw
  match 64400002/ffffffff at 16
filter parent 1: protocol ip pref 10 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 link 10: not_in_hw
  match 00000000/00000000 at 16
filter parent 1: protocol ipv6 pref 20 u32 chain 0 fh 20:2:1 order 1 key ht 20 bkt 2 *flowid 1:1 not_in_hw
  match fd000000/ffffffff at 24
  match 00000000/ffffffff at 28
  match 00000000/ffffffff at 32
  match 00000002/ffffffff at 36
filter parent 1: protocol ip pref 10 u32 chain 0 fh 10: ht divisor 256
filter parent 1: protocol ipv6 pref 20 u32 chain 0 fh 20: ht divisor 256
"""


class TestTc:
    def test_parse_filters_including_bucket_zero_and_ipv6(self) -> None:
        filters, tables = parse_filters(FILTERS, "download")
        assert tables == {0x10, 0x20}
        assert filters == {
            "100.64.1.0": FilterEntry(4, 0, 1, 0xFF),
            "100.64.0.2": FilterEntry(4, 2, 3, 1),
            "fd00::2": FilterEntry(6, 2, 1, 1),
        }

    def test_parse_classes(self) -> None:
        text = (
            "class htb 1:5 root prio 0 rate 10Mbit ceil 10Mbit burst 16Kb\n"
            "class htb 1:a root prio 0 rate 1Gbit ceil 1Gbit burst 250Kb\n"
        )
        assert parse_classes(text) == {5: 10, 10: 1000}

    def test_address_match_words(self) -> None:
        assert address_match("100.64.0.2", "upload") == ["match u32 0x64400002 0xffffffff at 12"]
        assert len(address_match("fd00::2", "download")) == 4

    def test_render_allocates_minor_and_free_node(self) -> None:
        existing = DeviceReading({1: 10}, {"100.64.0.2": FilterEntry(4, 2, 1, 1)}, True)
        reading = TcReading(existing, existing)
        minors = {"s1": 1}
        scripts = render_tc(
            [("wg0", "download"), ("ifb0", "upload")],
            [SetRate("s2", 25), ShapeAddress("100.64.1.2", "s2"), DeleteRate("s1")],
            reading,
            minors,
        )
        down = scripts["wg0"]
        assert down[0].startswith("class replace dev wg0 parent 1: classid 1:2 htb rate 25mbit")
        assert "handle 10:2:2" in down[1] and "flowid 1:2" in down[1]
        assert down[-1] == "class del dev wg0 classid 1:1"
        assert minors == {"s2": 2}
