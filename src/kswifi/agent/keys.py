"""WireGuard key helpers: generate, derive and convert (base64 <-> hex for the UAPI socket)."""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)


def generate_private_key() -> str:
    """A fresh X25519 private key, base64 as WireGuard writes it."""
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def public_key_of(private_key: str) -> str:
    """The public key that belongs to a base64 private key."""
    private = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key, validate=True))
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def to_hex(key: str) -> str:
    """base64 WireGuard key -> the lowercase hex form the UAPI protocol uses."""
    raw = base64.b64decode(key, validate=True)
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes")
    return raw.hex()


def from_hex(value: str) -> str:
    """UAPI hex key -> base64."""
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise ValueError("not a hex WireGuard key") from exc
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes")
    return base64.b64encode(raw).decode()


def is_zero_key(value: str) -> bool:
    """UAPI reports an unset key as 64 zeros (and wg as '(none)')."""
    try:
        return not any(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return True
