"""The live usage stream: snapshot first, then usage, warnings, the end, and reconnects."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from kswifi.control.deps import AppContext
from kswifi.control.events import InProcessEventBus, session_channel
from kswifi.control.models import utcnow
from kswifi.control.sessions import service as sessions
from kswifi.control.sessions.repository import UsageRow
from kswifi.control.sse import format_event, parse_last_event_id
from kswifi.control.usage.service import stream, usage_data
from tests.conftest import ApiUser, register_and_login
from tests.control.conftest import MakeSession


def parse_events(body: str) -> list[tuple[int, str, dict[str, object]]]:
    events = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":"
        )
        if "event" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


async def _user_id(client: httpx.AsyncClient, user: ApiUser) -> str:
    return str((await client.get("/api/auth/me", headers=user.headers)).json()["id"])


async def _report(ctx: AppContext, session_id: str, num_bytes: int) -> None:
    async with ctx.db.transaction() as db:
        await sessions.record_usage_batch(
            db, ctx.events, deltas=[sessions.UsageDelta(session_id, 0, num_bytes)], now=utcnow()
        )


class TestStream:
    async def test_snapshot_then_live_usage_then_reconnect(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser, make_session: MakeSession
    ) -> None:
        session = await make_session(await _user_id(client, user), "basic")

        async def report_later() -> None:
            await asyncio.sleep(0.2)
            await _report(ctx, session.id, 1024 * 1024)

        reporter = asyncio.create_task(report_later())
        response = await client.get(
            f"/api/sessions/{session.id}/usage/stream", headers=user.headers
        )
        await reporter
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_events(response.text)
        kinds = [kind for _, kind, _ in events]
        assert kinds == ["usage", "usage", "reconnect"]
        assert events[0][2]["used_bytes"] == 0
        assert events[1][2]["used_bytes"] == 1024 * 1024
        assert events[1][2]["usage_text"] == "1 MB of 1 GB used"
        assert [event_id for event_id, _, _ in events] == [1, 2, 3]
        assert response.text.startswith("retry: ")

    async def test_resume_continues_event_ids_and_exhaustion_ends_stream(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser, make_session: MakeSession
    ) -> None:
        session = await make_session(await _user_id(client, user), "basic")

        async def use_it_all() -> None:
            await asyncio.sleep(0.2)
            await _report(ctx, session.id, session.data_limit_bytes)

        reporter = asyncio.create_task(use_it_all())
        response = await client.get(
            f"/api/sessions/{session.id}/usage/stream",
            headers={**user.headers, "Last-Event-ID": "41"},
        )
        await reporter
        events = parse_events(response.text)
        kinds = [kind for _, kind, _ in events]
        assert kinds[0] == "usage" and events[0][0] == 42
        assert "warning" in kinds
        assert kinds[-1] == "exhausted"
        assert events[-1][2]["usage_text"] == "1 GB of 1 GB used"

    async def test_ended_session_says_so_at_once(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser, make_session: MakeSession
    ) -> None:
        session = await make_session(await _user_id(client, user), "basic")
        async with ctx.db.transaction() as db:
            row = await sessions.get(db, session.id)
            await sessions.end(db, ctx.events, row, "revoked", "operator", utcnow())
        response = await client.get(
            f"/api/sessions/{session.id}/usage/stream", headers=user.headers
        )
        assert [kind for _, kind, _ in parse_events(response.text)] == ["usage", "revoked"]

    async def test_someone_elses_stream_is_404(
        self, client: httpx.AsyncClient, user: ApiUser, make_session: MakeSession
    ) -> None:
        session = await make_session(await _user_id(client, user))
        other = await register_and_login(client)
        response = await client.get(
            f"/api/sessions/{session.id}/usage/stream", headers=other.headers
        )
        assert response.status_code == 404

    async def test_history_has_minute_buckets(
        self, client: httpx.AsyncClient, ctx: AppContext, user: ApiUser, make_session: MakeSession
    ) -> None:
        session = await make_session(await _user_id(client, user), "basic")
        await _report(ctx, session.id, 1000)
        await _report(ctx, session.id, 500)
        response = await client.get(
            f"/api/sessions/{session.id}/usage/history", headers=user.headers
        )
        assert response.status_code == 200
        points = response.json()["points"]
        assert sum(point["total_bytes"] for point in points) == 1500
        assert points[-1]["cumulative_bytes"] == 1500

    async def test_events_already_waiting_go_out_in_one_write_until_the_end(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        session = await make_session(plan_code="basic")
        channel = session_channel(session.id)
        events = stream(ctx.db, ctx.events, session.id, last_event_id=0, max_seconds=30)
        try:
            first = await anext(events)
            assert [kind for _, kind, _ in parse_events(first)] == ["usage"]
            # The stream is suspended before waiting: all of these are queued by then.
            await ctx.events.publish_many(
                [
                    (channel, {"type": "usage", "used_bytes": 1}),
                    (channel, {"type": "warning", "percent": 80}),
                    (channel, {"type": "exhausted", "session_id": session.id}),
                    (channel, {"type": "usage", "used_bytes": 2}),
                ]
            )
            together = await asyncio.wait_for(anext(events), 2)
            assert [(i, kind) for i, kind, _ in parse_events(together)] == [
                (2, "usage"),
                (3, "warning"),
                (4, "exhausted"),
            ]
            with pytest.raises(StopAsyncIteration):
                await anext(events)
        finally:
            await events.aclose()


def test_event_format_and_last_event_id() -> None:
    assert format_event(3, "usage", {"a": 1}) == 'id: 3\nevent: usage\ndata: {"a":1}\n\n'
    assert parse_last_event_id("17") == 17
    assert parse_last_event_id("garbage") == 0
    assert parse_last_event_id(None) == 0


GIB = 1024**3
NOW = datetime(2025, 5, 31, 12, 0, 0, 123456, tzinfo=UTC)


def _usage_event_fields(row: UsageRow, now: datetime) -> dict[str, Any]:
    """The fields and order of a live `usage` event as the stream has always sent them."""
    expires_at = row.expires_at
    return {
        "type": "usage",
        "session_id": row.id,
        "status": row.status,
        "at": now.isoformat(),
        "expires_at": None if expires_at is None else expires_at.isoformat(),
        "seconds_left": (
            None if expires_at is None else max(0, int((expires_at - now).total_seconds()))
        ),
        "used_bytes": row.used_bytes,
        "remaining_bytes": max(0, row.data_limit_bytes - row.used_bytes),
        "data_limit_bytes": row.data_limit_bytes,
        "usage_percent": sessions.usage_percent(row),
        "usage_text": sessions.usage_text(row.used_bytes, row.data_limit_bytes),
    }


ROWS = [
    UsageRow("s-1", "active", 0, GIB, 0, None),
    UsageRow("s-2", "connected", 2_254_857_830, 5 * GIB, 0, NOW + timedelta(days=3, seconds=7)),
    UsageRow("s-3", "connected", 350 * 1024**2 + 17, 20 * GIB, 80, NOW + timedelta(hours=1)),
    UsageRow("s-4", "exhausted", GIB + 5, GIB, 95, NOW - timedelta(minutes=1)),
    UsageRow("s-5", "active", 1, 0, 0, NOW),
    UsageRow('odd "id"\\é', "active", 3 * GIB // 7, GIB, 0, None),
]


class TestUsageFromFacts:
    """The bus carries `UsageFacts`; the stream renders them exactly as the events it sent."""

    @pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
    def test_rendered_facts_are_the_usage_event(self, row: UsageRow) -> None:
        facts = sessions.usage_facts(row, NOW)
        expected = _usage_event_fields(row, NOW)
        assert usage_data(facts) == json.dumps(expected, separators=(",", ":"))
        assert facts.as_dict() == {
            key: value
            for key, value in expected.items()
            if key not in ("remaining_bytes", "usage_percent", "usage_text")
        }

    def test_the_wire_text_of_one_event(self) -> None:
        facts = sessions.usage_facts(ROWS[1], NOW, at="2025-05-31T12:00:00.123456+00:00")
        assert format_event(7, "usage", json.loads(usage_data(facts))) == (
            "id: 7\nevent: usage\ndata: "
            '{"type":"usage","session_id":"s-2","status":"connected",'
            '"at":"2025-05-31T12:00:00.123456+00:00",'
            '"expires_at":"2025-06-03T12:00:07.123456+00:00","seconds_left":259207,'
            '"used_bytes":2254857830,"remaining_bytes":3113851290,"data_limit_bytes":5368709120,'
            '"usage_percent":42.0,"usage_text":"2.1 GB of 5 GB used"}\n\n'
        )

    async def test_stream_sends_facts_as_the_usage_event_and_dicts_as_they_are(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        session = await make_session(plan_code="basic")
        bus = InProcessEventBus()
        channel = session_channel(session.id)
        row = UsageRow(session.id, "connected", 1234, session.data_limit_bytes, 0, None)
        events = stream(ctx.db, bus, session.id, last_event_id=0, max_seconds=30)
        try:
            await anext(events)  # the snapshot
            facts = sessions.usage_facts(row, NOW)
            offline = {"type": "gateway_offline", "session_id": session.id, "message": "é"}
            await bus.publish_many([(channel, facts), (channel, offline)])
            together = await asyncio.wait_for(anext(events), 2)
            assert together == format_event(
                2, "usage", _usage_event_fields(row, NOW)
            ) + format_event(3, "gateway_offline", offline)
        finally:
            await events.aclose()
