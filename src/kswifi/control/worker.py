"""Periodic jobs of the control plane: expiry, offline gateways, e-mail delivery, old setup
links, tokens and desired-state change records.

Each job is one short transaction and safe to run on several replicas at once: expiry claims
its rows with `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite has one writer anyway), and the
other jobs are idempotent conditional updates. E-mail is claimed for a while, sent outside
any transaction, then settled (see `kswifi.control.mail.service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from pywebpush import WebPushException, webpush_async

from kswifi.control.deps import AppContext
from kswifi.control.gateways import desired as gateway_desired
from kswifi.control.mail import service as mail
from kswifi.control.mail.transport import MailTransport, transport_for
from kswifi.control.models import SessionStatus, utcnow
from kswifi.control.notify import service as notify
from kswifi.control.profiles import service as profiles
from kswifi.control.push import service as push
from kswifi.control.push import vapid
from kswifi.control.regions import service as regions
from kswifi.control.sessions import service as sessions
from kswifi.control.users import recovery
from kswifi.control.users import service as users
from kswifi.control.webhooks import service as webhooks
from kswifi.control.webhooks import signing
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
    note_expiring_sessions: float = 60.0
    send_alerts: float = 1.0
    deliver_mail: float = 2.0
    deliver_webhooks: float = 2.0
    deliver_push: float = 2.0
    purge_mail: float = 3600.0


@dataclass
class Worker:
    ctx: AppContext
    schedule: JobSchedule = field(default_factory=JobSchedule)
    mail_transport: MailTransport | None = None
    mail_claim_seconds: float = mail.CLAIM_SECONDS
    webhook_claim_seconds: float = webhooks.CLAIM_SECONDS
    webhook_timeout: float = 10.0
    push_claim_seconds: float = 60.0
    _last_run: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mail_transport is None:
            self.mail_transport = transport_for(self.ctx.settings)

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
            tokens = await users.purge_expired_refresh_tokens(db, now=now)
            return tokens + await recovery.purge_expired_tokens(db, now=now)

    async def purge_desired_changes(self, now: datetime) -> int:
        async with self.ctx.db.transaction() as db:
            return await gateway_desired.purge_changes(db, now)

    async def note_expiring_sessions(self, now: datetime) -> int:
        async with self.ctx.db.transaction() as db:
            return await sessions.note_expiring(db, now)

    async def send_alerts(self, now: datetime) -> int:
        """Session alerts noted since the last run become messages (see `notify`)."""
        async with self.ctx.db.transaction() as db:
            return await notify.send_pending_alerts(db, self.ctx.settings, now=now)

    async def deliver_mail(self, now: datetime) -> int:
        """Send what is queued: claim a batch (committed), send each, settle each."""
        assert self.mail_transport is not None
        sent = 0
        while True:
            async with self.ctx.db.transaction() as db:
                claim = await mail.claim_due(
                    db, self.ctx.settings, now=now, claim_seconds=self.mail_claim_seconds
                )
            if not claim.items:
                return sent
            for item in claim.items:
                try:
                    await self.mail_transport.send(item.message)
                except Exception as exc:  # the server said no, or was not there: retry later
                    async with self.ctx.db.transaction() as db:
                        await mail.record_failure(db, claim, item, f"{type(exc).__name__}: {exc}")
                    continue
                async with self.ctx.db.transaction() as db:
                    sent += await mail.record_sent(db, claim, item)
            now = utcnow()

    async def deliver_webhooks(self, now: datetime) -> int:
        """Fan new operator events out to the configured URLs, then POST what is due, signed."""
        async with self.ctx.db.transaction() as db:
            await webhooks.fan_out(db, self.ctx.settings, now=now)
        secret = self.ctx.settings.webhook_secret.get_secret_value()
        delivered = 0
        async with httpx.AsyncClient(timeout=self.webhook_timeout, follow_redirects=False) as http:
            while True:
                async with self.ctx.db.transaction() as db:
                    claim = await webhooks.claim_due(
                        db, now=now, claim_seconds=self.webhook_claim_seconds
                    )
                if not claim.items:
                    return delivered
                for item in claim.items:
                    delivered += await self._post_webhook(http, secret, claim, item)
                now = utcnow()

    async def _post_webhook(
        self, http: httpx.AsyncClient, secret: str, claim: webhooks.Claim, item: webhooks.Outgoing
    ) -> bool:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "KSWiFi-Connect-Webhooks",
            "KSWiFi-Event-Id": item.event_id,
            "KSWiFi-Event-Type": item.event_type,
            signing.HEADER: signing.signature(secret, int(time.time()), item.body),
        }
        try:
            response = await http.post(item.url, content=item.body, headers=headers)
        except httpx.HTTPError as exc:
            async with self.ctx.db.transaction() as db:
                await webhooks.record_failure(db, claim, item, f"{type(exc).__name__}: {exc}")
            return False
        async with self.ctx.db.transaction() as db:
            if response.is_success:
                return await webhooks.record_delivered(db, claim, item, response.status_code)
            await webhooks.record_failure(
                db, claim, item, f"HTTP {response.status_code}", response.status_code
            )
        return False

    async def deliver_push(self, now: datetime) -> int:
        """Encrypt and send queued notifications to the push services, signed with VAPID."""
        claims = {"sub": vapid.subject(self.ctx.settings)}
        key = vapid.keys(self.ctx.settings)
        sent = 0
        while True:
            async with self.ctx.db.transaction() as db:
                claim = await push.claim_due(db, now=now, claim_seconds=self.push_claim_seconds)
            if not claim.items:
                return sent
            for item in claim.items:
                sent += await self._push_one(claim, item, key, claims)
            now = utcnow()

    async def _push_one(
        self, claim: push.Claim, item: push.Outgoing, key: Any, claims: dict[str, str]
    ) -> bool:
        try:
            await webpush_async(
                subscription_info=item.subscription,
                data=item.payload,
                vapid_private_key=key,
                vapid_claims=dict(claims),
                ttl=push.TTL_SECONDS,
                timeout=self.webhook_timeout,
            )
        except WebPushException as exc:
            status = exc.response.status if exc.response is not None else None
            async with self.ctx.db.transaction() as db:
                if status in (404, 410):
                    await push.record_gone(db, claim, item)
                else:
                    await push.record_failure(db, claim, item, f"HTTP {status}: {exc.message}")
            return False
        except Exception as exc:  # the push service was not there: retry later
            async with self.ctx.db.transaction() as db:
                await push.record_failure(db, claim, item, f"{type(exc).__name__}: {exc}")
            return False
        async with self.ctx.db.transaction() as db:
            return await push.record_sent(db, claim, item)

    async def purge_mail(self, now: datetime) -> int:
        async with self.ctx.db.transaction() as db:
            return await mail.purge_old(db, now) + await webhooks.purge_old(db, now)

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
            "note_expiring_sessions",
            "send_alerts",
            "deliver_mail",
            "deliver_webhooks",
            "deliver_push",
            "purge_mail",
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
