"""Mail tests send through a real SMTP server (`smtp`) unless they choose the outbox."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from kswifi.control.config import Settings
from tests.mailsink import MailSink


@pytest.fixture
def settings(settings: Settings, smtp: MailSink) -> Settings:
    return settings.model_copy(
        update={"smtp_url": SecretStr(smtp.url), "mail_from": "KSWiFi Connect <hi@kswifi.test>"}
    )
