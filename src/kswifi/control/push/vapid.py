"""The server's VAPID key pair (RFC 8292): it signs every push request, and browsers bind
their subscriptions to its public key. Kept like the secret key: the setting, else a PEM file
in the data dir made on first use (mode 0600). Changing it orphans every subscription."""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02

from kswifi.control.config import Settings

FILE_NAME = "vapid_private_key.pem"


@lru_cache(maxsize=8)
def _load(pem: bytes) -> Vapid02:
    return Vapid02.from_pem(pem)


def _pem(settings: Settings) -> bytes:
    configured = settings.vapid_private_key.get_secret_value().strip()
    if configured:
        return configured.encode()
    path: Path = settings.data_dir / FILE_NAME
    if path.exists():
        return path.read_bytes()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = Vapid02()
    key.generate_keys()
    pem: bytes = key.private_pem()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem)
    tmp.chmod(0o600)
    tmp.replace(path)
    return pem


def keys(settings: Settings) -> Vapid02:
    return _load(_pem(settings))


def public_key(settings: Settings) -> str:
    """The applicationServerKey a page subscribes with: the uncompressed P-256 point,
    base64url without padding."""
    point = keys(settings).public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(point).rstrip(b"=").decode()


def subject(settings: Settings) -> str:
    if settings.vapid_subject:
        return settings.vapid_subject
    if settings.support_email:
        return f"mailto:{settings.support_email}"
    return settings.public_url
