"""Queued e-mail reaches a real SMTP server once: retries, give-up, several workers, a worker
killed mid-send, and the outbox directory when no server is configured."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import select

from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.deps import AppContext
from kswifi.control.events import InProcessEventBus
from kswifi.control.mail import service as mail
from kswifi.control.mail.letters import compose
from kswifi.control.mail.transport import OutboxTransport, SmtpTransport
from kswifi.control.models import MailStatus, OutgoingMail, utcnow
from kswifi.control.purchases.receipts import Receipt
from kswifi.control.retry import MAX_ATTEMPTS, retry_delay
from kswifi.control.worker import Worker
from tests.mailsink import MailSink, free_port

ROOT = Path(__file__).resolve().parents[3]


async def _queue(ctx: AppContext, to: str = "ana@example.com", key: str | None = None) -> bool:
    letter = compose(
        ctx.settings, "password_reset", email=to, url="http://testserver/x", minutes=30
    )
    async with ctx.db.transaction() as db:
        return await mail.queue(db, letter, to, dedupe_key=key)


async def _rows(ctx: AppContext) -> list[OutgoingMail]:
    async with ctx.db.transaction() as db:
        return list(await db.scalars(select(OutgoingMail).order_by(OutgoingMail.created_at)))


class TestDelivery:
    async def test_a_queued_letter_arrives_with_text_and_html(
        self, ctx: AppContext, smtp: MailSink
    ) -> None:
        assert await _queue(ctx)
        assert await Worker(ctx).deliver_mail(utcnow()) == 1
        (received,) = smtp.wait_for(1)
        assert received.recipients == ["ana@example.com"]
        assert received.sender == "hi@kswifi.test"
        assert received.message["Subject"] == "Reset your KSWiFi Connect password"
        assert received.message["From"] == "KSWiFi Connect <hi@kswifi.test>"
        assert "http://testserver/x" in received.text
        assert 'href="http://testserver/x"' in received.html
        (row,) = await _rows(ctx)
        assert received.message["Message-ID"] == f"<{row.id}@kswifi.test>"
        assert row.status == MailStatus.SENT and row.attempts == 1 and row.sent_at is not None

    async def test_the_same_dedupe_key_queues_once(self, ctx: AppContext, smtp: MailSink) -> None:
        assert await _queue(ctx, key="alert:s1:80")
        assert not await _queue(ctx, key="alert:s1:80")
        await Worker(ctx).deliver_mail(utcnow())
        assert len(smtp.wait_for(1)) == 1
        assert len(await _rows(ctx)) == 1

    async def test_a_refusing_server_is_retried_with_backoff_then_given_up(
        self, ctx: AppContext, smtp: MailSink
    ) -> None:
        smtp.handler.refuse = True
        await _queue(ctx)
        now = utcnow()
        worker = Worker(ctx)
        assert await worker.deliver_mail(now) == 0
        (row,) = await _rows(ctx)
        assert row.status == MailStatus.QUEUED and row.attempts == 1
        assert row.last_error is not None and "451" in row.last_error
        assert row.next_attempt_at >= now + timedelta(seconds=29)
        assert await worker.deliver_mail(now) == 0  # not due yet: nothing tried
        assert (await _rows(ctx))[0].attempts == 1
        for attempt in range(2, MAX_ATTEMPTS + 1):
            now += timedelta(hours=2)
            await worker.deliver_mail(now)
            assert (await _rows(ctx))[0].attempts == attempt
        (row,) = await _rows(ctx)
        assert row.status == MailStatus.FAILED
        assert smtp.received == []

    async def test_a_server_that_comes_back_gets_the_message(self, ctx: AppContext) -> None:
        port = free_port()
        worker = Worker(ctx, mail_transport=SmtpTransport(f"smtp://127.0.0.1:{port}", timeout=5))
        await _queue(ctx)
        now = utcnow()
        assert await worker.deliver_mail(now) == 0
        from tests.mailsink import mail_sink

        with mail_sink(port) as back:
            assert await worker.deliver_mail(now + timedelta(minutes=1)) == 1
            assert len(back.wait_for(1)) == 1
        (row,) = await _rows(ctx)
        assert row.status == MailStatus.SENT and row.attempts == 2

    async def test_two_workers_deliver_each_message_once(
        self, ctx: AppContext, smtp: MailSink
    ) -> None:
        for index in range(30):
            await _queue(ctx, to=f"p{index}@example.com")
        other = Database(ctx.settings.resolved_database_url)
        try:
            second = AppContext(ctx.settings, other, ctx.secrets, InProcessEventBus())
            now = utcnow()
            counts = await asyncio.gather(
                Worker(ctx).deliver_mail(now), Worker(second).deliver_mail(now)
            )
        finally:
            await other.dispose()
        assert sum(counts) == 30
        received = smtp.wait_for(30)
        assert sorted(r.recipients[0] for r in received) == sorted(
            f"p{index}@example.com" for index in range(30)
        )
        assert all(row.status == MailStatus.SENT for row in await _rows(ctx))

    async def test_a_worker_killed_mid_send_leaves_it_to_the_next_one_once(
        self, ctx: AppContext, smtp: MailSink, settings: Settings
    ) -> None:
        await _queue(ctx)
        smtp.handler.stall_next = True
        env = {
            **os.environ,
            "KSWIFI_DATABASE_URL": settings.resolved_database_url,
            "KSWIFI_DATA_DIR": str(settings.data_dir),
            "KSWIFI_SECRET_KEY": settings.secret_key.get_secret_value(),
            "KSWIFI_SMTP_URL": smtp.url,
            "MAIL_CLAIM_SECONDS": "1",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.control.mail.worker_process", cwd=ROOT, env=env
        )
        try:
            assert await asyncio.to_thread(smtp.handler.stalled.wait, 60), "never reached RCPT"
            os.kill(process.pid, signal.SIGKILL)
        finally:
            await asyncio.wait_for(process.wait(), 30)
        smtp.handler.release.set()
        (row,) = await _rows(ctx)
        assert row.status == MailStatus.SENDING and row.attempts == 1
        worker = Worker(ctx)
        assert await worker.deliver_mail(utcnow()) == 0  # the dead worker's claim still holds
        await asyncio.sleep(1.1)
        assert await worker.deliver_mail(utcnow()) == 1
        assert len(smtp.wait_for(1)) == 1
        await asyncio.sleep(0.3)
        assert len(smtp.received) == 1
        (row,) = await _rows(ctx)
        assert row.status == MailStatus.SENT and row.attempts == 2


class TestOutbox:
    async def test_without_a_server_each_message_is_a_file_in_the_outbox(
        self, ctx: AppContext
    ) -> None:
        settings = ctx.settings.model_copy(update={"smtp_url": SecretStr("")})
        outbox = settings.data_dir / "outbox"
        worker = Worker(AppContext(settings, ctx.db, ctx.secrets, ctx.events))
        assert worker.mail_transport == OutboxTransport(outbox)
        await _queue(ctx)
        assert await worker.deliver_mail(utcnow()) == 1
        (path,) = outbox.glob("*.eml")
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert message["Subject"] == "Reset your KSWiFi Connect password"
        assert message["To"] == "ana@example.com"
        (row,) = await _rows(ctx)
        assert path.stem == row.id and row.status == MailStatus.SENT


class TestLetters:
    def test_support_contacts_appear_in_both_bodies(self, settings: Settings) -> None:
        settings = settings.model_copy(
            update={"support_url": "https://help.example.com", "support_email": "help@example.com"}
        )
        letter = compose(settings, "verify_email", email="a@example.com", url="http://t/v")
        assert "https://help.example.com" in letter.text and "help@example.com" in letter.text
        assert 'href="https://help.example.com"' in letter.html
        assert 'href="mailto:help@example.com"' in letter.html

    def test_html_escapes_what_people_typed(self, settings: Settings) -> None:
        letter = compose(settings, "verify_email", email="<b>x</b>@example.com", url="http://t/v")
        assert "<b>x</b>" not in letter.html and "&lt;b&gt;" in letter.html
        assert "<b>x</b>@example.com" in letter.text

    def test_retry_delays_double_up_to_an_hour(self) -> None:
        delays = [retry_delay(n).total_seconds() for n in range(1, 10)]
        assert delays[:4] == [30, 60, 120, 240]
        assert max(delays) == 3600

    def test_the_smtp_url_is_checked(self, settings: Settings) -> None:
        import pytest
        from pydantic import ValidationError

        with pytest.raises(ValidationError, match="smtps://"):
            Settings(smtp_url="http://mail.example.com")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="not an e-mail address"):
            Settings(mail_from="KSWiFi")


SAMPLES = {
    "password_reset": {"url": "http://t/r", "minutes": 30},
    "verify_email": {"url": "http://t/v"},
    "account_exists": {"login_url": "http://t/l", "reset_url": "http://t/r"},
    "password_changed": {"reset_url": "http://t/r"},
    "change_email": {"url": "http://t/c", "old_email": "old@example.com"},
    "email_changed": {"new_email": "new@example.com"},
    **{
        f"alert_{kind}": {
            "plan_name": "Premium Session",
            "usage": "4 GB of 5 GB used",
            "percent": "80",
            "expires": "8 Dec 2026, 10:00 UTC",
            "session_url": "http://t/s",
            "plans_url": "http://t/p",
            "account_url": "http://t/a",
        }
        for kind in ("usage_80", "usage_95", "data_used_up", "expiring", "expired", "next_started")
    },
    "receipt": {
        "receipt": Receipt(
            purchase_id="p" * 32,
            plan_name="Premium Session",
            data="5 GB",
            speed_mbps=25,
            validity_days=30,
            max_devices=2,
            price="$14.99",
            amount_cents=1499,
            currency="USD",
            paid_at=datetime(2026, 12, 7, 10, 0, tzinfo=UTC),
            method="Voucher",
            reference="KSW-PPPPPPPPPPPP",
            provider_reference=None,
        ),
        "receipt_url": "http://t/receipts/p",
    },
}


def test_every_letter_speaks_the_products_words(settings: Settings) -> None:
    from tests.web.test_vocabulary import FORBIDDEN

    templates = {p.stem for p in (ROOT / "src/kswifi/control/mail/templates").glob("[!_]*.txt")}
    assert templates == set(SAMPLES)
    for kind, values in SAMPLES.items():
        letter = compose(settings, kind, email="a@example.com", **values)
        for part in (letter.subject, letter.text, letter.html):
            assert not FORBIDDEN.search(part), (kind, part)
        assert "KSWiFi Connect" in letter.text and letter.subject


async def test_metrics_show_the_queue_and_its_oldest_wait(ctx: AppContext, smtp: MailSink) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from kswifi.control import metrics
    from tests.scale.test_metrics import sample

    metrics._SNAPSHOTS.clear()
    smtp.handler.refuse = True
    await _queue(ctx)
    await Worker(ctx).deliver_mail(utcnow())
    async with ctx.db.transaction() as db:
        families = await metrics.database_families(db, ctx.settings, utcnow() + timedelta(hours=1))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics._Families(families))
    text = generate_latest(registry).decode()
    assert sample(text, "kswifi_mail_messages", status="queued") == 1
    assert sample(text, "kswifi_mail_messages", status="sent") == 0
    waited = sample(text, "kswifi_mail_oldest_queued_seconds")
    assert waited is not None and 3500 < waited <= 3600


class TestSecureServers:
    """STARTTLS and TLS mail servers with a login, as providers run them."""

    @staticmethod
    def _worker(ctx: AppContext, url: str, ca_file: str) -> Worker:
        settings = ctx.settings.model_copy(
            update={"smtp_url": SecretStr(url), "smtp_ca_file": ca_file}
        )
        return Worker(AppContext(settings, ctx.db, ctx.secrets, ctx.events))

    async def test_starttls_with_a_login(self, ctx: AppContext, tmp_path: Path) -> None:
        from tests.mailsink import mail_sink, self_signed

        certificate = self_signed(tmp_path)
        with mail_sink(tls="starttls", certificate=certificate, login=("ops", "p@ss w0rd")) as sink:
            await _queue(ctx)
            url = f"smtp+starttls://ops:p%40ss%20w0rd@127.0.0.1:{sink.port}"
            assert await self._worker(ctx, url, str(certificate[0])).deliver_mail(utcnow()) == 1
            (received,) = sink.wait_for(1)
            assert received.recipients == ["ana@example.com"]

    async def test_implicit_tls_with_a_login(self, ctx: AppContext, tmp_path: Path) -> None:
        from tests.mailsink import mail_sink, self_signed

        certificate = self_signed(tmp_path)
        with mail_sink(tls="smtps", certificate=certificate, login=("ops", "secret")) as sink:
            await _queue(ctx)
            url = f"smtps://ops:secret@127.0.0.1:{sink.port}"
            assert await self._worker(ctx, url, str(certificate[0])).deliver_mail(utcnow()) == 1
            assert len(sink.wait_for(1)) == 1

    async def test_a_wrong_login_or_an_untrusted_certificate_is_retried_not_sent(
        self, ctx: AppContext, tmp_path: Path
    ) -> None:
        from tests.mailsink import mail_sink, self_signed

        certificate = self_signed(tmp_path)
        ca = str(certificate[0])
        with mail_sink(tls="starttls", certificate=certificate, login=("ops", "secret")) as sink:
            await _queue(ctx)
            url = f"smtp+starttls://ops:guess@127.0.0.1:{sink.port}"
            wrong = Worker(ctx, mail_transport=SmtpTransport(url, timeout=3, ca_file=ca))
            assert await wrong.deliver_mail(utcnow()) == 0
            (row,) = await _rows(ctx)
            assert row.status == MailStatus.QUEUED and row.attempts == 1 and row.last_error
            url = f"smtp+starttls://ops:secret@127.0.0.1:{sink.port}"
            untrusted = Worker(ctx, mail_transport=SmtpTransport(url, timeout=3))
            assert await untrusted.deliver_mail(utcnow() + timedelta(minutes=5)) == 0
            (row,) = await _rows(ctx)
            assert row.attempts == 2 and row.last_error
            assert "CERTIFICATE_VERIFY_FAILED" in row.last_error
            assert sink.received == []
