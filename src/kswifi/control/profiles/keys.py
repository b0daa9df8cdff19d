"""WireGuard keys as a validated value type: X25519 key pairs and preshared keys."""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class WireguardKey:
    """A 32-byte WireGuard key; parse once at the edge, then pass the typed value around."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_BYTES:
            raise ValueError("a WireGuard key is 32 bytes")

    @classmethod
    def from_base64(cls, text: str) -> WireguardKey:
        """Parse the 44-character base64 form `wg` prints; anything else is a ValueError."""
        if not isinstance(text, str) or len(text) != 44:
            raise ValueError("a WireGuard key is 44 base64 characters")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("not a base64 WireGuard key") from exc
        return cls(raw)

    def __str__(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def __repr__(self) -> str:
        # Never print key material into logs or tracebacks.
        return "WireguardKey(…)"

    def public_key(self) -> WireguardKey:
        """The X25519 public key of this key read as a private key (what `wg pubkey` prints)."""
        private = X25519PrivateKey.from_private_bytes(self.raw)
        return WireguardKey(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


@dataclass(frozen=True, slots=True)
class KeyPair:
    private_key: WireguardKey
    public_key: WireguardKey


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair (clamping is applied by X25519 itself, as `wg genkey` does)."""
    private = X25519PrivateKey.generate()
    private_raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public_raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyPair(WireguardKey(private_raw), WireguardKey(public_raw))


def generate_preshared_key() -> WireguardKey:
    """32 random bytes, like `wg genpsk`."""
    return WireguardKey(secrets.token_bytes(KEY_BYTES))
