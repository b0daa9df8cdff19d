"""Periodic jobs of the control plane: expiry, offline gateways, old setup links, tokens and
desired-state change records.

Each job is one short transaction and safe to run on several replicas at once: expiry claims
its rows with `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite has one writer anyway), and the
other jobs are idempotent conditional updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from kswifi.control.deps import AppContext
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.models import SessionStatus, utcnow
from kswifi.control.profiles import service as profiles
from kswifi.control.regions import service as regions
from kswifi.control.sessions import service as sessions
from kswifi.control.users import service as users
from kswifi.logs import get_logger

log = get_logger("kswifi.worker")


@dataclass
class JobSchedule:
    """How often each job runs, in seconds."""

    expire_sessions: float = 1.0
    hand_over_devices: float = 1.0
    mark_offline_gateways: float = 5.0
    purge_setup_links: float = 60.0
    purge_refresh_tokens: float = 3600.0
    purge_desired_changes: float = 300.0


@dataclass
class Worker:
    ctx: AppContext
    schedule: JobSchedule = field(default_factory=JobSchedule)
    _last_run: dict[str, float] = field(default_factory=dict)

    async def expire_sessions(self, now: datetime) -> int:
        """Live sessions past their validity (or activation deadline) become `expired`."""
        async with self.ctx.db.transaction() as db:
            due = await sessions.due_for_expiry(db, now)
            for session in due:
                moved = await sessions.end(
                    db, self.ctx.events, session, SessionStatus.EXPIRED, "time_up", now
                )
                await gateway_desired.bump_revision(db, moved, self.ctx.events, [session.user_id])
        return len(due)

    async def hand_over_devices(self, now: datetime) -> int:
        """Devices left drawing from a session that ended move on (see `handover`)."""
        async with self.ctx.db.transaction() as db:
            moved = await sessions.hand_over_pending(db, now)
            await gateway_desired.bump_revision(
                db, moved.gateway_ids, self.ctx.events, moved.user_ids
            )
        return len(moved.gateway_ids)

    async def mark_offline_gateways(self, now: datetime) -> int:
        """Silent gateways go offline; their devices' usage streams are told."""
        async with self.ctx.db.transaction() as db:
            return await regions.mark_offline_gateways(db, self.ctx.events, now, self.ctx.settings)

    async def purge_setup_links(self, now: datetime) -> int:
        """Expired setup links still hold an encrypted config: delete them."""
        async with self.ctx.db.transaction() as db:
            return await profiles.purge_expired_setup_links(db, now)

    async def purge_refresh_tokens(self, now: datetime) -> int:
        async with self.ctx.db.transaction() as db:
            return await users.purge_expired_refresh_tokens(db, now=now)

    async def purge_desired_changes(self, now: datetime) -> int:
        async with self.ctx.db.transaction() as db:
            return await gateway_desired.purge_changes(db, now)

    async def run_due(self, *, force: bool = False) -> dict[str, int]:
        """Run every job whose period has passed (all of them with `force`)."""
        done: dict[str, int] = {}
        clock = time.monotonic()
        for name in (
            "expire_sessions",
            "hand_over_devices",
            "mark_offline_gateways",
            "purge_setup_links",
            "purge_refresh_tokens",
            "purge_desired_changes",
        ):
            period: float = getattr(self.schedule, name)
            if not force and clock - self._last_run.get(name, float("-inf")) < period:
                continue
            self._last_run[name] = clock
            try:
                done[name] = await getattr(self, name)(utcnow())
            except Exception as exc:  # one failing job never stops the others
                log.error("worker_job_failed", job=name, error=type(exc).__name__, detail=str(exc))
                continue
            if done[name]:
                log.info("worker_job_done", job=name, count=done[name])
        return done

    async def run_forever(self, tick: float = 0.5) -> None:
        while True:
            await self.run_due()
            await asyncio.sleep(tick)


@contextlib.asynccontextmanager
async def background_worker(ctx: AppContext) -> AsyncIterator[Worker]:
    """Run the worker as a task for the life of the block (used by `kswifi serve`)."""
    worker = Worker(ctx)
    task = asyncio.create_task(worker.run_forever(), name="kswifi-worker")
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
