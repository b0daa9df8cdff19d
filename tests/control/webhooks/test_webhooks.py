"""Operator webhooks to a real HTTP receiver: signed, the same event id on every retry,
retried with backoff, one delivery per URL, each once with two workers, logged for the
console; and the events come from where things happen (gateway offline and back, a session
ending)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.deps import AppContext
from kswifi.control.events import InProcessEventBus
from kswifi.control.gateways import service as gateways
from kswifi.control.models import (
    DataSession,
    DeliveryStatus,
    Gateway,
    WebhookDelivery,
    WebhookEvent,
    utcnow,
)
from kswifi.control.retry import MAX_ATTEMPTS
from kswifi.control.webhooks import service as webhooks
from kswifi.control.webhooks import signing
from kswifi.control.worker import Worker
from kswifi.protocol import models as protocol
from tests.control.conftest import MakeSession
from tests.webhook_receiver import Receiver, webhook_receiver

SECRET = "whk_test_0123456789"


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    with webhook_receiver("/a") as first, webhook_receiver("/b") as second:
        yield first, second


@pytest.fixture
def settings(settings: Settings, receivers: tuple[Receiver, Receiver]) -> Settings:
    return settings.model_copy(
        update={"webhook_urls": receivers[0].url, "webhook_secret": SecretStr(SECRET)}
    )


async def _record(ctx: AppContext, event_type: str = "gateway.offline", **data: object) -> None:
    async with ctx.db.transaction() as db:
        webhooks.record(db, event_type, {"gateway": "gw-1", **data})


async def _deliveries(ctx: AppContext) -> list[WebhookDelivery]:
    async with ctx.db.transaction() as db:
        return list(await db.scalars(select(WebhookDelivery).order_by(WebhookDelivery.url)))


class TestDelivery:
    async def test_an_event_arrives_signed_with_its_id(
        self, ctx: AppContext, receivers: tuple[Receiver, Receiver]
    ) -> None:
        await _record(ctx, region="eu-west")
        assert await Worker(ctx).deliver_webhooks(utcnow()) == 1
        (request,) = receivers[0].wait_for(1)
        body = json.loads(request.body)
        assert body["type"] == "gateway.offline"
        assert body["data"] == {"gateway": "gw-1", "region": "eu-west"}
        assert request.headers["kswifi-event-id"] == body["id"]
        assert request.headers["kswifi-event-type"] == "gateway.offline"
        assert request.headers["content-type"] == "application/json"
        header = request.headers["kswifi-signature"]
        assert signing.verify(SECRET, header, request.body, time.time())
        assert not signing.verify(SECRET, header, request.body + b" ", time.time())
        assert not signing.verify("another secret", header, request.body, time.time())
        assert not signing.verify(SECRET, header, request.body, time.time() + 600)  # replayed
        (delivery,) = await _deliveries(ctx)
        assert delivery.status == DeliveryStatus.DELIVERED and delivery.last_status_code == 200

    async def test_failures_are_retried_with_backoff_under_the_same_id(
        self, ctx: AppContext, receivers: tuple[Receiver, Receiver]
    ) -> None:
        receivers[0].answers = [500, 503]
        await _record(ctx)
        worker = Worker(ctx)
        now = utcnow()
        assert await worker.deliver_webhooks(now) == 0
        (delivery,) = await _deliveries(ctx)
        assert delivery.status == DeliveryStatus.QUEUED and delivery.last_status_code == 500
        assert delivery.next_attempt_at >= now + timedelta(seconds=29)
        assert await worker.deliver_webhooks(now) == 0  # not due yet
        assert len(receivers[0].requests) == 1
        assert await worker.deliver_webhooks(now + timedelta(minutes=1)) == 0  # 503
        assert await worker.deliver_webhooks(now + timedelta(minutes=3)) == 1
        requests = receivers[0].wait_for(3)
        assert len({r.headers["kswifi-event-id"] for r in requests}) == 1
        assert len({r.body for r in requests}) == 1
        (delivery,) = await _deliveries(ctx)
        assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 3

    async def test_an_unreachable_receiver_is_given_up_after_the_last_attempt(
        self, ctx: AppContext, settings: Settings
    ) -> None:
        dead = "http://127.0.0.1:9/hooks"  # the discard port: nothing listens
        worker = Worker(
            AppContext(
                settings.model_copy(update={"webhook_urls": dead}),
                ctx.db,
                ctx.secrets,
                ctx.events,
            ),
            webhook_timeout=2,
        )
        await _record(ctx)
        now = utcnow()
        for attempt in range(MAX_ATTEMPTS):
            await worker.deliver_webhooks(now + timedelta(hours=2 * attempt))
        (delivery,) = await _deliveries(ctx)
        assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == MAX_ATTEMPTS
        assert delivery.last_error and "ConnectError" in delivery.last_error

    async def test_each_url_gets_each_event_once_with_two_workers(
        self, ctx: AppContext, settings: Settings, receivers: tuple[Receiver, Receiver]
    ) -> None:
        both = settings.model_copy(
            update={"webhook_urls": f"{receivers[0].url}, {receivers[1].url}"}
        )
        for number in range(10):
            await _record(ctx, number=number)
        other = Database(both.resolved_database_url)
        try:
            first = Worker(AppContext(both, ctx.db, ctx.secrets, ctx.events))
            second = Worker(AppContext(both, other, ctx.secrets, InProcessEventBus()))
            now = utcnow()
            done = await asyncio.gather(first.deliver_webhooks(now), second.deliver_webhooks(now))
        finally:
            await other.dispose()
        assert sum(done) == 20
        for receiver in receivers:
            requests = receiver.wait_for(10)
            await asyncio.sleep(0.2)
            assert len(receiver.requests) == 10
            numbers = sorted(json.loads(r.body)["data"]["number"] for r in requests)
            assert numbers == list(range(10))

    async def test_without_urls_events_are_kept_and_nothing_is_sent(
        self, ctx: AppContext, settings: Settings, receivers: tuple[Receiver, Receiver]
    ) -> None:
        quiet = settings.model_copy(update={"webhook_urls": ""})
        await _record(ctx)
        worker = Worker(AppContext(quiet, ctx.db, ctx.secrets, ctx.events))
        assert await worker.deliver_webhooks(utcnow()) == 0
        async with ctx.db.transaction() as db:
            (event,) = list(await db.scalars(select(WebhookEvent)))
        assert event.fanned_out_at is not None
        assert await _deliveries(ctx) == []
        assert receivers[0].requests == []

    def test_urls_need_a_secret_and_must_be_http(self) -> None:
        from pydantic import ValidationError

        with pytest.raises(ValidationError, match="KSWIFI_WEBHOOK_SECRET"):
            Settings(webhook_urls="https://ops.example.com/hook")
        with pytest.raises(ValidationError, match="not an http"):
            Settings(webhook_urls="ftp://ops.example.com", webhook_secret="x")  # type: ignore[arg-type]


class TestEvents:
    async def test_a_gateway_going_offline_and_back(self, ctx: AppContext) -> None:
        async with ctx.db.transaction() as db:
            gateway, _token = await gateways.register(
                db,
                ctx.secrets,
                ctx.settings,
                name="gw-hooks",
                region_code="eu-west",
                endpoint="203.0.113.5:51820",
            )
            gateway_id = gateway.id
            await db.execute(
                update(Gateway)
                .where(Gateway.id == gateway_id)
                .values(is_online=True, last_heartbeat_at=utcnow() - timedelta(minutes=5))
            )
        assert await Worker(ctx).mark_offline_gateways(utcnow()) == 1
        assert await Worker(ctx).mark_offline_gateways(utcnow()) == 0
        async with ctx.db.transaction() as db:
            row = await db.get(Gateway, gateway_id)
            assert row is not None
            await gateways.record_heartbeat(
                db,
                row,
                protocol.GatewayHeartbeat(
                    agent_version="t", interface_mode="userspace", peer_count=0
                ),
                utcnow(),
            )
        async with ctx.db.transaction() as db:
            events = list(await db.scalars(select(WebhookEvent).order_by(WebhookEvent.created_at)))
        assert [e.type for e in events] == ["gateway.offline", "gateway.online"]
        assert json.loads(events[0].payload) == {
            "gateway": "gw-hooks",
            "gateway_id": gateway_id,
            "region": "eu-west",
        }

    async def test_a_session_ending_is_an_event(
        self, ctx: AppContext, make_session: MakeSession
    ) -> None:
        session = await make_session(plan_code="basic")
        async with ctx.db.transaction() as db:
            await db.execute(
                update(DataSession)
                .where(DataSession.id == session.id)
                .values(expires_at=utcnow() - timedelta(seconds=1), activated_at=utcnow())
            )
        assert await Worker(ctx).expire_sessions(utcnow()) == 1
        async with ctx.db.transaction() as db:
            (event,) = list(await db.scalars(select(WebhookEvent)))
        assert event.type == "session.ended"
        facts = json.loads(event.payload)
        assert facts["session_id"] == session.id and facts["status"] == "expired"
        assert facts["reason"] == "time_up" and facts["plan_code"] == "basic"
