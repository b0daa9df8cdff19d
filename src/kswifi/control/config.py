"""Settings of the control plane, read from `KSWIFI_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
import secrets
import warnings
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("./var")
SMTP_SCHEMES = ("smtp", "smtp+starttls", "smtps")

# Names these settings had when they shared the agent's KSWIFI_GATEWAY_ prefix: still read,
# with a warning, so an operator's old environment keeps working through the upgrade.
DEPRECATED_NAMES = {
    "KSWIFI_GATEWAY_POOL_V4": "address_pool_v4",
    "KSWIFI_GATEWAY_POOL_V4_PREFIX": "address_pool_v4_prefix",
    "KSWIFI_GATEWAY_POOL_V6": "address_pool_v6",
    "KSWIFI_GATEWAY_CAPACITY": "default_gateway_capacity",
    "KSWIFI_GATEWAY_OFFLINE_SECONDS": "offline_after_seconds",
}


class Settings(BaseSettings):
    """Every setting has a safe default for the embedded mode (SQLite, in-process events)."""

    model_config = SettingsConfigDict(env_prefix="KSWIFI_", extra="ignore")

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where the SQLite file and secrets live")
    database_url: str = Field(
        "", description="SQLAlchemy async URL; empty means sqlite+aiosqlite in data_dir"
    )
    secret_key: SecretStr = Field(
        SecretStr(""), description="Signs tokens and encrypts keys; generated on first run"
    )
    public_url: str = Field("http://127.0.0.1:8000", description="Base URL shown in links")
    events_url: str = Field(
        "",
        description="Cross-replica events: redis://… or postgresql://…; empty: in-process with"
        " SQLite, LISTEN/NOTIFY on the database itself with PostgreSQL",
    )
    access_token_minutes: int = Field(15, ge=1, le=1440, description="Lifetime of access tokens")
    refresh_token_days: int = Field(30, ge=1, le=365, description="Lifetime of refresh tokens")
    dev_payments: bool = Field(False, description="Allow the free `dev` payment provider")
    stripe_api_key: SecretStr = Field(SecretStr(""), description="Stripe secret key")
    stripe_webhook_secret: SecretStr = Field(SecretStr(""), description="Stripe signing secret")
    stripe_api_base: str = Field("", description="Override Stripe's API base (tests)")
    activation_days: int = Field(30, ge=1, description="Days to generate a first profile")
    refund_unused_days: int = Field(
        14,
        ge=0,
        description="Refund policy shown at checkout: a session never used may be refunded "
        "within this many days of purchase (0: no refunds are offered)",
    )
    address_cooldown_seconds: int = Field(3600, ge=0, description="Before a freed IP is reused")
    address_pool_v4: str = Field("100.64.0.0/10", description="Carved into one block per gateway")
    address_pool_v4_prefix: int = Field(
        16, ge=8, le=30, description="Size of each gateway's IPv4 block"
    )
    address_pool_v6: str = Field("fd4b:5357:4946::/48", description="ULA, one /64 per gateway")
    default_gateway_capacity: int = Field(10_000, ge=1, description="Default devices per gateway")
    offline_after_seconds: int = Field(
        30, ge=5, description="A gateway silent this long is marked offline"
    )
    walled_garden_allow: str = Field(
        "",
        description="Comma-separated networks a phone without data can still reach (besides "
        "DNS and the addresses of KSWIFI_PUBLIC_URL's host)",
    )
    walled_garden_kbit: int = Field(
        256, ge=8, le=1_000_000, description="Rate of the walled garden, shared per gateway"
    )
    wireguard_mtu: int = Field(1280, ge=1280, le=1500, description="MTU in generated profiles")
    longpoll_seconds: float = Field(25.0, gt=0, le=60, description="Desired-state long-poll wait")
    sse_max_seconds: float = Field(
        300.0, gt=0, description="Lifetime of one event stream (live usage, device notices)"
    )
    login_attempts_per_minute: int = Field(
        10, ge=1, description="Failed logins per account/address"
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body")
    log_level: str = Field("info", description="debug, info, warning or error")
    log_json: bool = Field(False, description="Log JSON lines instead of console lines")
    run_worker: bool = Field(True, description="Run the periodic jobs inside `kswifi serve`")
    client_address_header: str = Field(
        "",
        description="Trusted proxy header with the client address (last entry of e.g. "
        "X-Forwarded-For) for region placement; empty: the connection's address",
    )
    client_country_header: str = Field(
        "",
        description="Trusted proxy header with the client's ISO country (e.g. CF-IPCountry); "
        "empty: off",
    )
    region_probe_url: str = Field(
        "",
        description="Latency probe URL per region, `{region}` replaced (e.g. on the gateway "
        "host); empty: this server's /api/regions/{region}/probe",
    )
    smtp_url: SecretStr = Field(
        SecretStr(""),
        description="Mail server: smtp://user:pass@host:587 (STARTTLS when offered), "
        "smtp+starttls://… (STARTTLS required) or smtps://…:465 (TLS); empty: every message "
        "is kept in data_dir/outbox and shown in the console instead",
    )
    smtp_ca_file: str = Field(
        "", description="Extra CA certificates (PEM file) to trust for the mail server's TLS"
    )
    mail_from: str = Field(
        "KSWiFi Connect <no-reply@localhost>", description="From: of every e-mail sent"
    )
    email_verification: bool | None = Field(
        None,
        description="New accounts log in only after opening the e-mailed link; empty: on "
        "when KSWIFI_SMTP_URL is set (without a mail server nobody could open it)",
    )
    support_url: str = Field("", description="Help page shown in the footer and e-mails")
    support_email: str = Field("", description="Support address shown in the footer and e-mails")
    vapid_private_key: SecretStr = Field(
        SecretStr(""),
        description="Web Push (VAPID) private key, PEM; generated and kept in "
        "data_dir/vapid_private_key.pem on first use",
    )
    vapid_subject: str = Field(
        "",
        description="Contact push services may use (mailto: or https:); empty: "
        "KSWIFI_SUPPORT_EMAIL, else KSWIFI_PUBLIC_URL",
    )
    push_services: str = Field(
        "fcm.googleapis.com,*.push.services.mozilla.com,*.push.apple.com,*.notify.windows.com",
        description="Hosts a browser's push subscription may point at (`*.` for subdomains): "
        "the worker posts to them, so nothing else is accepted",
    )
    webhook_urls: str = Field(
        "",
        description="Comma-separated URLs that receive signed operator events (gateway "
        "offline/online, payment failed, purchase refunded or disputed, session ended)",
    )
    webhook_secret: SecretStr = Field(
        SecretStr(""),
        description="Signs each webhook (KSWiFi-Signature: t=…,v1=HMAC-SHA256); required with "
        "KSWIFI_WEBHOOK_URLS",
    )
    metrics_token: SecretStr = Field(
        SecretStr(""), description="Bearer token /metrics asks for; empty: /metrics is open"
    )

    @model_validator(mode="before")
    @classmethod
    def _deprecated_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for old, field in DEPRECATED_NAMES.items():
            value = os.environ.get(old)
            if value is None:
                continue
            new = f"KSWIFI_{field.upper()}"
            if field in data:
                message = f"{old} is ignored: {new} is set (remove {old})"
            else:
                data = {**data, field: value}
                message = f"{old} is deprecated: rename it to {new}"
            warnings.warn(message, FutureWarning, stacklevel=2)
        return data

    @field_validator("walled_garden_allow")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                try:
                    ipaddress.ip_network(item.strip(), strict=False)
                except ValueError as exc:
                    raise ValueError(f"{item.strip()!r} is not a network") from exc
        return value

    @field_validator("mail_from")
    @classmethod
    def _mail_from(cls, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address:
            raise ValueError(f"{value!r} is not an e-mail address (Name <user@host>)")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url:
            parts = urlsplit(url)
            if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
                raise ValueError(
                    "use smtp://host[:port], smtp+starttls://host[:port] or smtps://host[:port]"
                )
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls(cls, value: str) -> str:
        for url in (part.strip() for part in value.split(",")):
            if url:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Settings:
        if self.webhook_url_list and not self.webhook_secret.get_secret_value():
            raise ValueError("KSWIFI_WEBHOOK_URLS needs KSWIFI_WEBHOOK_SECRET (receivers check it)")
        return self

    @property
    def webhook_url_list(self) -> list[str]:
        return [url.strip() for url in self.webhook_urls.split(",") if url.strip()]

    @property
    def verify_email(self) -> bool:
        """Whether new accounts must confirm their address before they can log in."""
        if self.email_verification is not None:
            return self.email_verification
        return bool(self.smtp_url.get_secret_value())

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'kswifi.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def resolved_events_url(self) -> str:
        """Where replicas tell each other what changed: the setting, else the PostgreSQL
        database itself (two replicas must never miss each other's changes); "" means
        in-process (SQLite: one process)."""
        if self.events_url or self.is_sqlite:
            return self.events_url
        return self.resolved_database_url

    def ensure_secret_key(self) -> str:
        """The secret key, generated and kept in `data_dir/secret_key` on first use."""
        value = self.secret_key.get_secret_value()
        if value:
            return value
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
