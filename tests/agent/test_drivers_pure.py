# ruff: noqa: E501  (captured `tc filter show` output is kept verbatim)
"""The drivers' pure parts: names, nft scripts, tc parsing and rendering (no root)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from kswifi.agent.actions import (
    CreateSession,
    DeleteRate,
    MapAddress,
    SetQuota,
    SetRate,
    ShapeAddress,
    UnmapAddress,
    UnshapeAddress,
)
from kswifi.agent.drivers import nfnetlink
from kswifi.agent.drivers.nfnetlink import ObjectEntry
from kswifi.agent.drivers.nftables import (
    NftConfig,
    object_name,
    parse_object_name,
    reading_from,
    render_batch,
    render_skeleton,
)
from kswifi.agent.drivers.tc import (
    PIPELINE_ACTIONS,
    TcShaper,
    address_match,
    render_tc,
)
from kswifi.agent.drivers.tc_layout import (
    DeviceReading,
    FilterEntry,
    Side,
    TcReading,
    parse_classes,
    parse_device,
    parse_filters,
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


def script(actions: list[object], mapped: dict[str, str]) -> list[str]:
    return [str(message) for message in render_batch(CONFIG, actions, mapped)]  # type: ignore[arg-type]


class TestNftBatch:
    def test_skeleton_has_table_maps_rules_and_nat(self) -> None:
        skeleton = render_skeleton(CONFIG)
        assert skeleton[0] == "add table inet kswifi"
        assert "add map inet kswifi quota6 { type ipv6_addr : quota; }" in skeleton
        assert any("masquerade" in line and '"eth0"' in line for line in skeleton)

    def test_one_batch_with_objects_then_elements(self) -> None:
        lines = script([CreateSession("s-1", 5000, 100), MapAddress("100.64.0.2", "s-1")], {})
        assert lines == [
            "add quota inet kswifi q-s-1 { over 5000 bytes used 100 bytes }",
            "add counter inet kswifi up-s-1",
            "add counter inet kswifi dn-s-1",
            'add element inet kswifi quota4 { 100.64.0.2 : "q-s-1" }',
            'add element inet kswifi up4 { 100.64.0.2 : "up-s-1" }',
            'add element inet kswifi dn4 { 100.64.0.2 : "dn-s-1" }',
        ]

    def test_elements_of_one_map_share_a_message(self) -> None:
        actions = [CreateSession("s1", 5000, 0)] + [
            MapAddress(f"100.64.{i // 250}.{i % 250 + 1}", "s1") for i in range(2500)
        ]
        batch = render_batch(CONFIG, actions, {})
        assert len(batch) == 3 + 3 * 3  # 2500 elements per map in messages of 1000
        assert all(len(message.body) < 65536 for message in batch)

    def test_quota_reset_replaces_object_and_its_elements_atomically(self) -> None:
        assert script([SetQuota("s1", 9000, 4000)], {"100.64.0.2": "s1"}) == [
            "delete element inet kswifi quota4 { 100.64.0.2 }",
            "delete quota inet kswifi q-s1",
            "add quota inet kswifi q-s1 { over 9000 bytes used 4000 bytes }",
            'add element inet kswifi quota4 { 100.64.0.2 : "q-s1" }',
        ]

    def test_quota_never_starts_above_its_limit(self) -> None:
        assert script([CreateSession("s1", 1000, 5000)], {})[0] == (
            "add quota inet kswifi q-s1 { over 1000 bytes used 1000 bytes }"
        )

    def test_unmap_deletes_existing_elements_only(self) -> None:
        lines = script(
            [UnmapAddress("100.64.0.2", "removed"), UnmapAddress("100.64.0.9", "removed")],
            {"100.64.0.2": "s1"},
        )
        assert lines == [
            f"delete element inet kswifi {name}4 {{ 100.64.0.2 }}" for name in ("quota", "up", "dn")
        ]

    def test_reading_from_dumped_objects_and_elements(self) -> None:
        reading = reading_from(
            [
                ObjectEntry("q-s1", quota=True, handle=2, bytes=100, used=40),
                ObjectEntry("up-s1", quota=False, handle=3, bytes=10),
                ObjectEntry("dn-s1", quota=False, handle=4, bytes=30),
                ObjectEntry("unrelated", quota=False, handle=5, bytes=99),
            ],
            [(bytes.fromhex("fd000000000000000000000000000002"), "q-s1")],
        )
        assert reading.sessions["s1"].upload_bytes == 10
        assert reading.sessions["s1"].used_bytes == 40
        assert reading.counters[("s1", "down")] == (4, 30)
        assert reading.addresses == {"fd00::2": "s1"}

    def test_netlink_object_answer_parses(self) -> None:
        message = nfnetlink.new_quota("kswifi", "q-s1", 5000, 1234)
        handle = nfnetlink._attr(nfnetlink.NFTA_OBJ_HANDLE, (7).to_bytes(8, "big"))
        body = message.body + handle
        assert nfnetlink.parse_objects(body, 0, len(body)) == ObjectEntry(
            "q-s1", quota=True, handle=7, bytes=5000, used=1234
        )

    def test_netlink_element_answer_parses(self) -> None:
        [message] = nfnetlink.add_elements(
            "kswifi", "up4", [(bytes([100, 64, 0, 2]), "up-s1", "100.64.0.2")]
        )
        assert nfnetlink.parse_elements(message.body, 0, len(message.body)) == [
            (bytes([100, 64, 0, 2]), "up-s1")
        ]


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


def child_filters(root: str) -> str:
    """The root's dump as bucket 0's child qdisc would print it (tables 100:, 200:)."""
    return (
        root.replace("flowid 1:", "flowid 2:")
        .replace("fh 10:", "fh 100:")
        .replace("fh 20:", "fh 200:")
        .replace("link 10:", "link 100:")
    )


class TestTc:
    def test_parse_filters_including_bucket_zero_and_ipv6(self) -> None:
        filters, tables = parse_filters(FILTERS, "download")
        assert tables == {0x10, 0x20}
        assert filters[1] == {
            "100.64.1.0": FilterEntry(4, 0, 1, 0xFF),
            "100.64.0.2": FilterEntry(4, 2, 3, 1),
            "fd00::2": FilterEntry(6, 2, 1, 1),
        }

    def test_parse_classes_keeps_sessions_in_their_buckets_child_qdisc(self) -> None:
        text = (
            "class htb 1:1 root leaf 2: prio 0 rate 100Gbit ceil 100Gbit burst 0b cburst 0b\n"
            "class htb 1:2 root leaf 3: prio 0 rate 100Gbit ceil 100Gbit burst 0b cburst 0b\n"
            "class htb 2:5 root prio 0 rate 10Mbit ceil 10Mbit burst 16Kb\n"
            "class htb 3:101 root prio 0 rate 1Gbit ceil 1Gbit burst 250Kb\n"
            "class htb 2:102 root prio 0 rate 1Gbit ceil 1Gbit burst 250Kb\n"  # wrong qdisc
        )
        assert parse_classes(text) == ({5: 10, 0x101: 1000}, {1, 2})

    def test_address_match_words(self) -> None:
        assert address_match("100.64.0.2", "upload") == "match u32 0x64400002 0xffffffff at 12"
        assert address_match("fd00::2", "download") == (
            "match u32 0xfd000000 0xffffffff at 24 match u32 0x00000000 0xffffffff at 28"
            " match u32 0x00000000 0xffffffff at 32 match u32 0x00000002 0xffffffff at 36"
        )

    def test_device_reading_from_the_bucketed_layout(self) -> None:
        qdiscs = (
            "qdisc htb 1: root refcnt 2 r2q 100 default 0 direct_packets_stat 0\n"
            "qdisc htb 2: parent 1:1 r2q 100 default 0 direct_packets_stat 0\n"
        )
        classes = (
            "class htb 1:1 root leaf 2: prio 0 rate 100Gbit ceil 100Gbit burst 0b cburst 0b\n"
            "class htb 2:ff root prio 0 rate 10Mbit ceil 10Mbit burst 16Kb\n"
            "class htb 2:1 root prio 0 rate 25Mbit ceil 25Mbit burst 16Kb\n"
        )
        root = FILTERS.replace("flowid 1:ff", "flowid 1:1")
        text = root + child_filters(FILTERS)
        reading = parse_device(qdiscs, classes, text, "download")
        assert reading.ready and reading.buckets == {0}
        assert reading.classes == {0xFF: 10, 1: 25}
        assert reading.routes["100.64.0.2"] == FilterEntry(4, 2, 3, 1)
        assert reading.filters["100.64.1.0"] == FilterEntry(4, 0, 1, 0xFF)
        assert reading.shaped() == {"100.64.1.0": 0xFF, "100.64.0.2": 1, "fd00::2": 1}
        assert TcReading(reading, reading).shaped() == reading.shaped()

        # A root filter leading to another bucket does not count as shaped.
        reading.routes["100.64.0.2"] = FilterEntry(4, 2, 3, 2)
        assert "100.64.0.2" not in reading.shaped()

    def test_flat_layout_or_half_built_bucket_reads_as_not_ready(self) -> None:
        qdiscs = "qdisc htb 1: root refcnt 2 r2q 100 default 0\n"
        flat = "class htb 1:5 root leaf 8005: prio 0 rate 10Mbit ceil 10Mbit burst 16Kb\n"
        assert not parse_device(qdiscs, flat, FILTERS, "download").ready
        bucket = "class htb 1:1 root leaf 2: prio 0 rate 100Gbit ceil 100Gbit burst 0b\n"
        child = qdiscs + "qdisc htb 2: parent 1:1 r2q 100 default 0\n"
        assert not parse_device(child, bucket, FILTERS, "download").ready  # no tables
        assert parse_device(child, bucket, FILTERS + child_filters(FILTERS), "download").ready

    def test_a_filter_is_read_in_the_qdisc_its_hash_table_belongs_to(self) -> None:
        # Bucket 0's filters (tables 100:, 200:) leading out of their qdisc are not ours.
        stray = child_filters(FILTERS).replace("flowid 2:1 ", "flowid 3:1 ")
        filters, tables = parse_filters(stray, "download")
        assert tables == {0x100, 0x200}
        assert filters == {2: {"100.64.1.0": FilterEntry(4, 0, 1, 0xFF)}}

    def test_render_places_sessions_in_buckets_of_256(self) -> None:
        existing = DeviceReading(
            {1: 10},
            {"100.64.0.2": FilterEntry(4, 2, 1, 1)},
            True,
            {"100.64.0.2": FilterEntry(4, 2, 1, 1)},
            {0},
        )
        reading = TcReading(existing, existing.copy())
        minors = {"s1": 1}
        scripts = render_tc(
            [("wg0", "download"), ("ifb0", "upload")],
            [SetRate("s2", 25), ShapeAddress("100.64.1.2", "s2"), DeleteRate("s1")],
            reading,
            minors,
        )
        down = scripts["wg0"]
        assert down[0].startswith(
            "class replace dev wg0 parent 2: classid 2:2 htb rate 25mbit ceil 25mbit"
        )
        assert down[1] == (
            "filter add dev wg0 parent 1: prio 10 handle 10:2:2 protocol ip u32 ht 10:2:"
            " match u32 0x64400102 0xffffffff at 16 flowid 1:1"
        )
        assert down[2] == (
            "filter add dev wg0 parent 2: prio 10 handle 100:2:2 protocol ip u32 ht 100:2:"
            " match u32 0x64400102 0xffffffff at 16 flowid 2:2"
        )
        assert down[-1] == "class del dev wg0 classid 2:1"
        assert "at 12 flowid 2:2" in scripts["ifb0"][2]
        assert minors == {"s2": 2}
        assert reading.shaped() == {"100.64.0.2": 1, "100.64.1.2": 2}

    def test_render_builds_a_new_bucket_and_removes_an_emptied_one(self) -> None:
        minors = {f"s{n}": n for n in range(1, 257)}
        classes = {n: 10 for n in range(1, 257)}
        device = DeviceReading(classes, {}, True, {}, {0})
        reading = TcReading(device, device.copy())
        scripts = render_tc(
            [("wg0", "download"), ("ifb0", "upload")],
            [SetRate("new", 50), ShapeAddress("fd00::1:2", "new")],
            reading,
            minors,
        )
        assert minors["new"] == 257
        up = scripts["ifb0"]
        assert up[:2] == [
            "class replace dev ifb0 parent 1: classid 1:2 htb rate 100000mbit ceil 100000mbit"
            " burst 25000000 cburst 25000000 quantum 60000",
            "qdisc replace dev ifb0 parent 1:2 handle 3: htb default 0 r2q 100",
        ]
        assert (
            "filter add dev ifb0 parent 3: prio 20 handle 201: protocol ipv6 u32 divisor 256" in up
        )
        assert up[-3].startswith("class replace dev ifb0 parent 3: classid 3:101 htb rate 50mbit")
        assert up[-2].endswith("at 20 flowid 1:2")
        assert up[-1].endswith("at 20 flowid 3:101") and " ht 201:2: " in up[-1]
        assert reading.download.buckets == {0, 1}

        scripts = render_tc(
            [("wg0", "download"), ("ifb0", "upload")],
            [UnshapeAddress("fd00::1:2"), DeleteRate("new")],
            reading,
            minors,
        )
        assert scripts["wg0"][-2:] == [
            "class del dev wg0 classid 3:101",
            "class del dev wg0 classid 1:2",
        ]
        assert scripts["wg0"][0].startswith("filter del dev wg0 parent 3: prio 20 handle 201:2:1")
        assert scripts["wg0"][1].startswith("filter del dev wg0 parent 1: prio 20 handle 20:2:1")
        assert reading.upload.buckets == {0} and "new" not in minors

    def test_render_hands_out_the_lowest_free_minors(self) -> None:
        device = DeviceReading({1: 10, 3: 10}, {}, True, {}, {0})
        reading = TcReading(device, device.copy())
        minors = {"a": 1, "c": 3}
        actions = [SetRate(f"n{i}", 10) for i in range(3)]
        render_tc([("wg0", "download"), ("ifb0", "upload")], actions, reading, minors)
        assert [minors[f"n{i}"] for i in range(3)] == [2, 4, 5]

    def test_filter_node_ids_stay_unique_through_removals_and_adds(self) -> None:
        device = DeviceReading({1: 10}, {}, True, {}, {0})
        reading = TcReading(device, device.copy())
        minors = {"s1": 1}
        devices: list[tuple[str, Side]] = [("wg0", "download"), ("ifb0", "upload")]
        # Five addresses in the same u32 hash bucket (last byte 2), then two go, three come.
        first = [f"100.64.{n}.2" for n in range(5)]
        render_tc(devices, [ShapeAddress(a, "s1") for a in first], reading, minors)
        before = reading.copy()
        render_tc(devices, [UnshapeAddress(first[1]), UnshapeAddress(first[3])], reading, minors)
        later = [f"100.65.{n}.2" for n in range(3)]
        render_tc(devices, [ShapeAddress(a, "s1") for a in later], reading, minors)
        for side in (reading.download, reading.upload):
            nodes = [entry.node for entry in side.filters.values()]
            routes = [entry.node for entry in side.routes.values()]
            assert len(nodes) == len(set(nodes)) == 6
            assert len(routes) == len(set(routes)) == 6
        # The earlier reading is untouched (node sets are shared, never changed in place).
        assert before.download.node_index()[(2, 4, 2)] == frozenset(range(1, 6))


class _RecordingRunner:
    """Stands in for `CommandRunner`: records each command and its input, runs nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []

    def __call__(
        self, argv: Sequence[str], *, input_text: str | None = None, timeout: float | None = None
    ) -> str:
        self.calls.append((list(argv), input_text or ""))
        return ""


class TestTcBatches:
    @staticmethod
    def _shaper() -> tuple[TcShaper, _RecordingRunner]:
        runner = _RecordingRunner()
        return TcShaper(runner, "wg0", "ifb0"), runner

    @staticmethod
    def _sessions(count: int) -> list[SetRate | ShapeAddress]:
        actions: list[SetRate | ShapeAddress] = []
        for number in range(count):
            actions.append(SetRate(f"s{number:05d}", 10))
            actions.append(
                ShapeAddress(f"100.64.{number // 250}.{number % 250 + 2}", f"s{number:05d}")
            )
        return actions

    def test_an_everyday_change_is_one_batch_for_both_devices(self) -> None:
        shaper, runner = self._shaper()
        reading = TcReading(DeviceReading(ready=True), DeviceReading(ready=True))
        shaper.apply(self._sessions(3), reading, {})
        assert len(runner.calls) == 1
        argv, script = runner.calls[0]
        assert argv == ["tc", "-force", "-batch", "-"]
        assert " dev dl-wg0 " in script and " dev ifb0 " in script

    def test_a_bulk_change_is_one_batch_per_device_with_the_same_lines(self) -> None:
        actions = self._sessions(PIPELINE_ACTIONS)
        shaper, runner = self._shaper()
        reading = TcReading(DeviceReading(ready=True), DeviceReading(ready=True))
        after, minors = shaper.apply(actions, reading, {})
        assert len(runner.calls) == 2
        by_device = {
            "dl-wg0" if " dev dl-wg0 " in script else "ifb0": script for _, script in runner.calls
        }
        assert all(" dev ifb0 " not in line for line in by_device["dl-wg0"].splitlines())
        expected_minors: dict[str, int] = {}
        expected = render_tc(
            [("dl-wg0", "download"), ("ifb0", "upload")],
            actions,
            TcReading(DeviceReading(ready=True), DeviceReading(ready=True)),
            expected_minors,
        )
        for device, lines in expected.items():
            assert by_device[device] == "\n".join(lines) + "\n"
        assert minors == expected_minors and len(minors) == PIPELINE_ACTIONS
        assert len(after.download.classes) == len(after.upload.classes) == PIPELINE_ACTIONS
