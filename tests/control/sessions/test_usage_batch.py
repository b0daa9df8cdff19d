"""Usage applied set-based: many sessions in one batch, the same rules as one at a time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from kswifi.control.deps import AppContext
from kswifi.control.events import session_channel
from kswifi.control.models import UsageRollup, utcnow
from kswifi.control.sessions import service
from kswifi.control.sessions.service import UsageDelta
from tests.control.conftest import MakeSession


async def _drain(subscription: Any) -> list[dict[str, Any]]:
    events = []
    while (event := await subscription.get(0.3)) is not None:
        events.append(event)
    return events


class TestRecordUsageBatch:
    async def test_many_sessions_one_batch_rules_and_events(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        quiet = await make_session(plan_code="basic")
        warned = await make_session(plan_code="basic")
        used_up = await make_session(plan_code="basic")
        limit = used_up.data_limit_bytes
        now = utcnow()
        async with (
            ctx.events.subscribe(session_channel(quiet.id)) as quiet_events,
            ctx.events.subscribe(session_channel(warned.id)) as warned_events,
            ctx.events.subscribe(session_channel(used_up.id)) as used_up_events,
        ):
            async with ctx.db.transaction() as db:
                outcomes = await service.record_usage_batch(
                    db,
                    ctx.events,
                    deltas=[
                        UsageDelta(quiet.id, 600, 400),
                        UsageDelta(warned.id, int(0.5 * limit), 0),
                        UsageDelta(used_up.id, limit, 5),
                        UsageDelta(warned.id, 0, int(0.46 * limit)),  # summed: 96 %
                        UsageDelta("no-such-session", 10, 10),
                    ],
                    now=now,
                )
                assert await quiet_events.get(0.05) is None  # nothing before commit
            by_id = {outcome.session_id: outcome for outcome in outcomes}
            assert set(by_id) == {quiet.id, warned.id, used_up.id}
            # Their first bytes started their clocks.
            assert by_id[quiet.id].status == "connected" and by_id[quiet.id].used_bytes == 1000
            assert by_id[warned.id].status == "connected"
            assert by_id[used_up.id].status == "exhausted" and by_id[used_up.id].was_live
            assert [e["type"] for e in await _drain(quiet_events)] == ["usage"]
            warned_seen = await _drain(warned_events)
            assert [(e["type"], e.get("percent")) for e in warned_seen] == [
                ("usage", None),
                ("warning", 80),
                ("warning", 95),
            ]
            used_up_seen = await _drain(used_up_events)
            assert [e["type"] for e in used_up_seen] == ["usage", "warning", "warning", "exhausted"]
            assert used_up_seen[-1]["reason"] == "data_used_up"

        async with ctx.db.transaction() as db:
            stored = {
                s.id: s for s in [await service.get(db, x.id) for x in (quiet, warned, used_up)]
            }
            assert stored[quiet.id].rx_bytes == 600 and stored[quiet.id].tx_bytes == 400
            assert stored[quiet.id].last_seen_at == now
            assert stored[quiet.id].activated_at == now
            assert stored[quiet.id].expires_at == now + timedelta(
                seconds=stored[quiet.id].validity_seconds
            )
            assert stored[warned.id].warned_percent == 95
            assert stored[warned.id].used_bytes == int(0.5 * limit) + int(0.46 * limit)
            assert stored[used_up.id].status == "exhausted"
            assert stored[used_up.id].used_bytes == limit + 5
            rollups = await service.usage_history(db, stored[warned.id])
            assert [(r.rx_bytes, r.tx_bytes) for r in rollups] == [
                (int(0.5 * limit), int(0.46 * limit))
            ]
            assert isinstance(rollups[0], UsageRollup)

        # A second batch in the same minute adds to the bucket; no warning twice.
        async with ctx.events.subscribe(session_channel(warned.id)) as warned_events:
            async with ctx.db.transaction() as db:
                await service.record_usage_batch(
                    db, ctx.events, deltas=[UsageDelta(warned.id, 1, 2)], now=now
                )
            assert [e["type"] for e in await _drain(warned_events)] == ["usage"]
        async with ctx.db.transaction() as db:
            rollups = await service.usage_history(db, await service.get(db, warned.id))
            assert [(r.rx_bytes, r.tx_bytes) for r in rollups] == [
                (int(0.5 * limit) + 1, int(0.46 * limit) + 2)
            ]

    async def test_kernel_exhaustion_flag_and_zero_bytes(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        session = await make_session(plan_code="basic")
        async with ctx.db.transaction() as db:
            # The flag with the budget free (not leased to any gateway yet): the session
            # goes on, the gateway is topped up.
            outcomes = await service.record_usage_batch(
                db,
                ctx.events,
                deltas=[UsageDelta(session.id, 0, 0, quota_exhausted=True)],
                now=utcnow(),
            )
        assert [(o.status, o.was_live) for o in outcomes] == [("active", True)]
        async with ctx.db.transaction() as db:
            # All but 1,000 bytes are leased to other gateways: no full packet is left here.
            limit = session.data_limit_bytes
            outcomes = await service.record_usage_batch(
                db,
                ctx.events,
                deltas=[
                    UsageDelta(
                        session.id, 0, 0, quota_exhausted=True, reserved_elsewhere=limit - 1000
                    )
                ],
                now=utcnow(),
            )
        assert [(o.status, o.was_live) for o in outcomes] == [("exhausted", True)]
        async with ctx.db.transaction() as db:
            stored = await service.get(db, session.id)
            assert stored.last_seen_at is None  # no bytes: not "seen"
            assert await service.usage_history(db, stored) == []
            # An ended session takes late bytes but stays ended, and was not live before.
            late = await service.record_usage_batch(
                db, ctx.events, deltas=[UsageDelta(session.id, 5, 0)], now=utcnow()
            )
            assert [(o.status, o.was_live, o.used_bytes) for o in late] == [("exhausted", False, 5)]

    async def test_negative_delta_is_refused_before_any_write(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        session = await make_session(plan_code="basic")
        async with ctx.db.transaction() as db:
            with pytest.raises(ValueError):
                await service.record_usage_batch(
                    db,
                    ctx.events,
                    deltas=[UsageDelta(session.id, 5, 0), UsageDelta(session.id, -1, 0)],
                    now=utcnow(),
                )
            assert await service.record_usage_batch(db, ctx.events, deltas=[], now=utcnow()) == []
        async with ctx.db.transaction() as db:
            assert (await service.get(db, session.id)).used_bytes == 0

    async def test_ids_that_are_none_of_ours_are_left_out(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        session = await make_session(plan_code="basic")
        other = await make_session(plan_code="basic")
        async with ctx.db.transaction() as db:
            outcomes = await service.record_usage_batch(
                db,
                ctx.events,
                deltas=[
                    UsageDelta(f"x,{other.id}", 500, 500),  # never split into `other`
                    UsageDelta(f"{other.id},", 500, 500),
                    UsageDelta("\x00", 500, 500),
                    UsageDelta("", 500, 500),
                    UsageDelta(session.id, 7, 3),
                ],
                now=utcnow(),
            )
        assert [(o.session_id, o.used_bytes) for o in outcomes] == [(session.id, 10)]
        async with ctx.db.transaction() as db:
            assert (await service.get(db, session.id)).used_bytes == 10
            assert (await service.get(db, other.id)).used_bytes == 0
