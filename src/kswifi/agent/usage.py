"""Usage accounting: nft counter readings -> per-session deltas -> a durable, ordered spool.

Counters are read every second. A reading lower than the last one seen, or a counter whose
kernel handle changed, means the counter was recreated (agent or interface restart): the
whole reading is new bytes. Each batch of deltas becomes a sequence-numbered UsageReport
written to disk (atomic write + fsync) *together with* the counter values it accounts for,
so a crash can neither lose bytes nor count them twice; reports leave the spool only once the
control plane acknowledged them, oldest first.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kswifi.agent.model import Direction
from kswifi.protocol import SessionUsageDelta, UsageAck, UsageReport

CounterKey = tuple[str, Direction]
CounterValue = tuple[int, int]
"""(kernel handle, bytes)"""


def counter_delta(last: CounterValue | None, now: CounterValue) -> int:
    """Bytes counted since `last`; a recreated counter (new handle or lower value) is all new."""
    handle, value = now
    if last is None:
        return value
    last_handle, last_value = last
    if handle != last_handle or value < last_value:
        return value
    return value - last_value


def write_atomic(path: Path, data: bytes) -> None:
    """Write-to-temp, fsync, rename, fsync the directory: the file is old or new, never torn."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _encode_key(key: CounterKey) -> str:
    return f"{key[1]}:{key[0]}"


def _decode_key(text: str) -> CounterKey:
    direction, _, session_id = text.partition(":")
    return session_id, ("up" if direction == "up" else "down")


@dataclass
class UsageTracker:
    """Turns counter readings into spooled UsageReports; survives restarts via `state_dir`."""

    state_dir: Path
    checkpoint_interval_s: float = 5.0
    last_seen: dict[CounterKey, CounterValue] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)
    exhausted: set[str] = field(default_factory=set)
    sequence: int = 0
    """Highest sequence number produced so far."""
    acked_through: int = 0
    _checkpointed_at: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._load()

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "usage-spool"

    @property
    def state_path(self) -> Path:
        return self.state_dir / "usage-state.json"

    # -- persistence -------------------------------------------------------------------------

    def _load(self) -> None:
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            self.sequence = int(state["sequence"])
            self.acked_through = int(state.get("acked_through", 0))
            self.last_seen = {
                _decode_key(k): (int(v[0]), int(v[1])) for k, v in state["last_seen"].items()
            }
            self.served = {k: int(v) for k, v in state["served"].items()}
            self.exhausted = set(state.get("exhausted", []))
        checkpoint = self.sequence
        for path in self._spool_files():
            entry = json.loads(path.read_text())
            report = UsageReport.model_validate(entry["report"])
            if report.sequence <= checkpoint:
                continue
            # Written after the checkpoint: replay its effect on the tracker state.
            for key, value in entry["counters"].items():
                self.last_seen[_decode_key(key)] = (int(value[0]), int(value[1]))
            self._account(report.deltas)
            self.sequence = max(self.sequence, report.sequence)

    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.json"))

    def _spool_path(self, sequence: int) -> Path:
        return self.spool_dir / f"{sequence:020d}.json"

    def checkpoint(self) -> None:
        """Persist the tracker state, then drop acknowledged reports from the spool."""
        state = {
            "sequence": self.sequence,
            "acked_through": self.acked_through,
            "last_seen": {_encode_key(k): list(v) for k, v in self.last_seen.items()},
            "served": self.served,
            "exhausted": sorted(self.exhausted),
        }
        write_atomic(self.state_path, json.dumps(state).encode())
        for path in self._spool_files():
            if int(path.stem) <= self.acked_through:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self._checkpointed_at = time.monotonic()

    # -- accounting --------------------------------------------------------------------------

    def _account(self, deltas: Iterable[SessionUsageDelta]) -> None:
        for delta in deltas:
            self.served[delta.session_id] = (
                self.served.get(delta.session_id, 0) + delta.rx_bytes + delta.tx_bytes
            )
            if delta.quota_exhausted:
                self.exhausted.add(delta.session_id)

    def observe(
        self,
        counters: Mapping[CounterKey, CounterValue],
        exhausted: Iterable[str] = (),
        now: datetime | None = None,
    ) -> UsageReport | None:
        """Account one reading of all counters; spool and return a report if anything changed.

        Counters missing from `counters` are forgotten (their session objects were deleted
        after a final read); they are not reported as zero."""
        exhausted_now = set(exhausted)
        upload: dict[str, int] = {}
        download: dict[str, int] = {}
        changed: dict[CounterKey, CounterValue] = {}
        for key, value in counters.items():
            delta = counter_delta(self.last_seen.get(key), value)
            if self.last_seen.get(key) != value:
                changed[key] = value
            if delta:
                target = upload if key[1] == "up" else download
                target[key[0]] = target.get(key[0], 0) + delta
        newly_exhausted = exhausted_now - self.exhausted
        sessions = sorted(upload.keys() | download.keys() | newly_exhausted)
        deltas = [
            SessionUsageDelta(
                session_id=session_id,
                rx_bytes=upload.get(session_id, 0),
                tx_bytes=download.get(session_id, 0),
                quota_exhausted=session_id in exhausted_now,
            )
            for session_id in sessions
        ]
        # Only counters with a value change matter for recovery (see module docstring).
        self.last_seen = dict(counters)
        self.exhausted &= exhausted_now
        if not deltas:
            return None
        report = UsageReport(
            sequence=self.sequence + 1, sent_at=now or datetime.now(UTC), deltas=deltas
        )
        entry = {
            "report": report.model_dump(mode="json"),
            "counters": {_encode_key(k): list(v) for k, v in changed.items()},
        }
        write_atomic(self._spool_path(report.sequence), json.dumps(entry).encode())
        self.sequence = report.sequence
        self._account(deltas)
        return report

    def forget(self, session_ids: Iterable[str]) -> None:
        """The agent (re)created these sessions' counters at zero: whatever they read next is
        new bytes, even if a recycled kernel handle equals an old one. Persisted at once."""
        dropped = False
        directions: tuple[Direction, Direction] = ("up", "down")
        for session_id in session_ids:
            for direction in directions:
                dropped |= self.last_seen.pop((session_id, direction), None) is not None
        if dropped:
            self.checkpoint()

    # -- delivery ----------------------------------------------------------------------------

    def pending(self) -> list[UsageReport]:
        """Spooled reports not yet acknowledged, oldest first."""
        reports = []
        for path in self._spool_files():
            if int(path.stem) <= self.acked_through:
                continue
            entry = json.loads(path.read_text())
            reports.append(UsageReport.model_validate(entry["report"]))
        return reports

    def acknowledge(self, report: UsageReport, ack: UsageAck) -> bool:
        """Record the control plane's answer to `report`; True when it is done with it.

        If the control plane already holds sequence numbers beyond any this agent produced,
        the agent's state was lost: the pending reports are renumbered after the control
        plane's last sequence and sent again (they are new bytes, not replays)."""
        if ack.duplicate and ack.last_sequence > self.sequence:
            self._renumber(ack.last_sequence)
            return False
        if not (ack.accepted or ack.duplicate):
            return False
        self.acked_through = max(self.acked_through, report.sequence)
        if time.monotonic() - self._checkpointed_at >= self.checkpoint_interval_s:
            self.checkpoint()
        return True

    def _renumber(self, after: int) -> None:
        entries = [
            json.loads(p.read_text())
            for p in self._spool_files()
            if int(p.stem) > self.acked_through
        ]
        for path in self._spool_files():
            path.unlink()
        sequence = after
        for entry in entries:
            sequence += 1
            entry["report"]["sequence"] = sequence
            write_atomic(self._spool_path(sequence), json.dumps(entry).encode())
        self.acked_through = after
        self.sequence = sequence
        self.checkpoint()
