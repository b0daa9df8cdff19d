"""UsageTracker: deltas, counter resets, crash recovery and in-order delivery of the spool."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kswifi.agent.usage import UsageTracker, counter_delta
from kswifi.protocol import UsageAck, UsageReport


class FakeControlPlane:
    """Applies each sequence once, in order (what the real endpoint promises)."""

    def __init__(self) -> None:
        self.last_sequence = 0
        self.totals: dict[str, int] = {}
        self.exhausted: set[str] = set()

    def post(self, report: UsageReport) -> UsageAck:
        if report.sequence <= self.last_sequence:
            return UsageAck(accepted=False, duplicate=True, last_sequence=self.last_sequence)
        if report.sequence != self.last_sequence + 1:
            return UsageAck(accepted=False, duplicate=False, last_sequence=self.last_sequence)
        self.last_sequence = report.sequence
        for delta in report.deltas:
            total = self.totals.get(delta.session_id, 0)
            self.totals[delta.session_id] = total + delta.rx_bytes + delta.tx_bytes
            if delta.quota_exhausted:
                self.exhausted.add(delta.session_id)
        return UsageAck(accepted=True, duplicate=False, last_sequence=report.sequence)


def deliver(tracker: UsageTracker, server: FakeControlPlane) -> None:
    for report in tracker.pending():
        if not tracker.acknowledge(report, server.post(report)):
            break


class TestCounterDelta:
    def test_growth(self) -> None:
        assert counter_delta((5, 100), (5, 150)) == 50

    def test_first_sight_is_all_new(self) -> None:
        assert counter_delta(None, (5, 150)) == 150

    def test_lower_value_is_a_reset(self) -> None:
        assert counter_delta((5, 100), (5, 40)) == 40

    def test_new_handle_is_a_reset_even_if_higher(self) -> None:
        assert counter_delta((5, 100), (9, 400)) == 400


class TestTracker:
    def test_report_per_session_with_both_directions(self, tmp_path: Path) -> None:
        tracker = UsageTracker(tmp_path)
        tracker.observe({("s1", "up"): (1, 10), ("s1", "down"): (2, 30), ("s2", "up"): (3, 0)})
        report = tracker.observe(
            {("s1", "up"): (1, 15), ("s1", "down"): (2, 30), ("s2", "up"): (3, 7)}
        )
        assert report is not None and report.sequence == 2
        assert [(d.session_id, d.rx_bytes, d.tx_bytes) for d in report.deltas] == [
            ("s1", 5, 0),
            ("s2", 7, 0),
        ]
        assert tracker.served == {"s1": 45, "s2": 7}

    def test_nothing_new_no_report(self, tmp_path: Path) -> None:
        tracker = UsageTracker(tmp_path)
        tracker.observe({("s1", "up"): (1, 10)})
        assert tracker.observe({("s1", "up"): (1, 10)}) is None

    def test_exhaustion_reported_once(self, tmp_path: Path) -> None:
        tracker = UsageTracker(tmp_path)
        first = tracker.observe({("s1", "up"): (1, 10)}, exhausted=["s1"])
        assert first is not None and first.deltas[0].quota_exhausted
        assert tracker.observe({("s1", "up"): (1, 10)}, exhausted=["s1"]) is None

    def test_spool_survives_restart_and_is_delivered_in_order(self, tmp_path: Path) -> None:
        tracker = UsageTracker(tmp_path)
        for value in (10, 20, 35):
            tracker.observe({("s1", "down"): (1, value)})
        restarted = UsageTracker(tmp_path)
        assert [r.sequence for r in restarted.pending()] == [1, 2, 3]
        assert restarted.served == {"s1": 35}
        server = FakeControlPlane()
        deliver(restarted, server)
        assert server.totals == {"s1": 35}
        assert restarted.pending() == []
        restarted.checkpoint()
        assert list((tmp_path / "usage-spool").iterdir()) == []

    def test_lost_state_dir_renumbers_after_control_plane(self, tmp_path: Path) -> None:
        server = FakeControlPlane()
        old = UsageTracker(tmp_path / "old")
        for value in (10, 20):
            old.observe({("s1", "down"): (1, value)})
        deliver(old, server)
        fresh = UsageTracker(tmp_path / "new")  # state dir wiped: sequences restart at 1
        fresh.observe({("s1", "down"): (7, 5)})
        deliver(fresh, server)  # answered "duplicate, last 2" -> renumbered as 3
        deliver(fresh, server)
        assert server.totals == {"s1": 25}
        assert server.last_sequence == 3

    def test_forget_makes_next_reading_all_new(self, tmp_path: Path) -> None:
        tracker = UsageTracker(tmp_path)
        tracker.observe({("s1", "up"): (4, 100)})
        tracker.forget(["s1"])  # agent recreated the counter; kernel recycled handle 4
        report = tracker.observe({("s1", "up"): (4, 120)})
        assert report is not None and report.deltas[0].rx_bytes == 120


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(["s1", "s2"]), st.integers(1, 10_000)),
        st.tuples(st.just("reset"), st.sampled_from(["s1", "s2"]), st.just(0)),
        st.tuples(st.just("observe"), st.just(""), st.just(0)),
        st.tuples(st.just("crash"), st.just(""), st.just(0)),
        st.tuples(st.just("deliver"), st.just(""), st.just(0)),
        st.tuples(st.just("replay"), st.just(""), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(operations)
def test_arbitrary_resets_crashes_and_replays_lose_and_double_count_nothing(
    ops: list[tuple[str, str, int]],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp)
        tracker = UsageTracker(state_dir, checkpoint_interval_s=0)
        server = FakeControlPlane()
        next_handle = 10
        kernel: dict[tuple[str, str], tuple[int, int]] = {}
        truth: dict[str, int] = {}
        delivered: list[UsageReport] = []
        for op, session, amount in ops:
            if op == "add":
                key = (session, "down")
                handle, value = kernel.get(key, (next_handle, 0))
                next_handle += 1
                kernel[key] = (handle, value + amount)
                truth[session] = truth.get(session, 0) + amount
            elif op == "reset" and (session, "down") in kernel:
                # The agent deletes a counter only after a final read; then it comes back new.
                tracker.observe(dict(kernel))  # type: ignore[arg-type]
                kernel[(session, "down")] = (next_handle, 0)
                next_handle += 1
            elif op == "observe":
                tracker.observe(dict(kernel), now=datetime(2026, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]
            elif op == "crash":
                tracker = UsageTracker(state_dir, checkpoint_interval_s=0)
            elif op == "deliver":
                delivered.extend(tracker.pending())
                deliver(tracker, server)
            elif op == "replay":
                for report in delivered[-3:]:
                    server.post(report)  # replays are no-ops on the server
        tracker.observe(dict(kernel))  # type: ignore[arg-type]
        for _ in range(3):
            deliver(tracker, server)
        assert tracker.pending() == []
        assert {k: v for k, v in server.totals.items() if v} == {
            k: v for k, v in truth.items() if v
        }, ops
