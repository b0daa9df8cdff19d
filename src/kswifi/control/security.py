"""Password hashing, access tokens, opaque token hashing and encryption at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kswifi.control.errors import Unauthorized

_password_hasher = PasswordHasher()  # argon2id with the library's recommended parameters
_JWT_ALGORITHM = "HS256"
_DUMMY_HASH = _password_hasher.hash("kswifi-timing-equaliser")


def use_password_hasher(hasher: PasswordHasher) -> None:
    """Swap the argon2id parameters (the test suite uses cheap ones; production never calls)."""
    global _password_hasher, _DUMMY_HASH
    _password_hasher = hasher
    _DUMMY_HASH = hasher.hash("kswifi-timing-equaliser")


def hash_password(password: str) -> str:
    return _password_hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-ish time whether or not the account exists."""
    try:
        return _password_hasher.verify(password_hash or _DUMMY_HASH, password) and bool(
            password_hash
        )
    except (VerificationError, InvalidHashError):
        return False


def new_opaque_token(nbytes: int = 32) -> str:
    """An unguessable URL-safe token (default 256 bits)."""
    return secrets.token_urlsafe(nbytes)


def hash_token(token: str) -> str:
    """Tokens are stored as their SHA-256: a database leak does not leak usable tokens."""
    return hashlib.sha256(token.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    is_admin: bool
    expires_at: datetime


class SecretBox:
    """Everything derived from KSWIFI_SECRET_KEY: token signing and at-rest encryption."""

    def __init__(self, secret_key: str) -> None:
        if len(secret_key) < 16:
            raise ValueError("KSWIFI_SECRET_KEY must be at least 16 characters")
        self._signing_key = self._derive(secret_key, b"kswifi access tokens")
        self._fernet = Fernet(base64.urlsafe_b64encode(self._derive(secret_key, b"kswifi at rest")))
        self._link_key = self._derive(secret_key, b"kswifi links")

    @staticmethod
    def _derive(secret_key: str, purpose: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
            secret_key.encode()
        )

    def issue_access_token(self, user_id: str, is_admin: bool, ttl: timedelta) -> str:
        now = utcnow()
        claims: dict[str, Any] = {
            "sub": user_id,
            "adm": is_admin,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "typ": "access",
        }
        return jwt.encode(claims, self._signing_key, algorithm=_JWT_ALGORITHM)

    def read_access_token(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._signing_key,
                algorithms=[_JWT_ALGORITHM],
                options={"require": ["sub", "exp", "typ"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The access token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("The access token is not valid") from exc
        if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str):
            raise Unauthorized("The access token is not valid")
        return AccessClaims(
            user_id=claims["sub"],
            is_admin=bool(claims.get("adm")),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("cannot decrypt: wrong KSWIFI_SECRET_KEY?") from exc

    def sign(self, message: str) -> str:
        return hmac.new(self._link_key, message.encode(), hashlib.sha256).hexdigest()
