"""Where a composed message goes: a mail server over SMTP, or the outbox directory.

`KSWIFI_SMTP_URL` picks the server: `smtp://` (STARTTLS when the server offers it, port 25),
`smtp+starttls://` (STARTTLS required, port 587) or `smtps://` (TLS from the first byte, port
465); user and password in the URL authenticate. Without it, every message is written to
`data_dir/outbox/` as an `.eml` file (the embedded demo shows what would have been sent).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from kswifi.control.config import Settings

DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


class MailTransport(Protocol):
    """Hands one message on; raises when it was not accepted (the worker retries)."""

    async def send(self, message: EmailMessage) -> None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class SmtpTransport:
    url: str
    timeout: float = 30.0
    ca_file: str = ""  # trusted besides the system's CAs (a private mail server's)

    async def send(self, message: EmailMessage) -> None:
        parts = urlsplit(self.url)
        scheme = parts.scheme
        await aiosmtplib.send(
            message,
            hostname=parts.hostname,
            port=parts.port or DEFAULT_PORTS[scheme],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=scheme == "smtps",
            start_tls=True if scheme == "smtp+starttls" else (False if scheme == "smtps" else None),
            timeout=self.timeout,
            cert_bundle=self.ca_file or None,
        )

    def describe(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or DEFAULT_PORTS[parts.scheme]}"


@dataclass(frozen=True)
class OutboxTransport:
    directory: Path

    async def send(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self._write, message)

    def _write(self, message: EmailMessage) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = str(message["X-KSWiFi-Mail-Id"] or message["Message-ID"]).strip("<>")
        path = self.directory / f"{name}.eml"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(message.as_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)

    def describe(self) -> str:
        return f"outbox {self.directory}"


def transport_for(settings: Settings) -> MailTransport:
    url = settings.smtp_url.get_secret_value()
    if url:
        return SmtpTransport(url, ca_file=settings.smtp_ca_file)
    return OutboxTransport(settings.data_dir / "outbox")
