"""Secrets handling: argon2id for passwords, signed access tokens, encryption at rest."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from argon2 import PasswordHasher, Type

from kswifi.control.errors import Unauthorized
from kswifi.control.security import SecretBox, hash_token, new_opaque_token


def test_production_password_hashing_is_argon2id_with_recommended_cost() -> None:
    # The suite swaps in cheap parameters; what ships is the library's RFC 9106 profile.
    default = PasswordHasher()
    assert default.type is Type.ID
    assert default.time_cost >= 2 and default.memory_cost >= 19 * 1024
    assert default.hash("x").startswith("$argon2id$")


def test_access_tokens_round_trip_and_refuse_forgeries() -> None:
    box = SecretBox("a-secret-key-of-enough-length")
    token = box.issue_access_token("user-1", True, timedelta(minutes=5))
    claims = box.read_access_token(token)
    assert claims.user_id == "user-1" and claims.is_admin
    with pytest.raises(Unauthorized):
        SecretBox("another-secret-key-entirely").read_access_token(token)
    unsigned = jwt.encode({"sub": "user-1", "exp": 9999999999, "typ": "access"}, None, "none")
    with pytest.raises(Unauthorized):
        box.read_access_token(unsigned)
    expired = box.issue_access_token("user-1", False, timedelta(seconds=-1))
    with pytest.raises(Unauthorized, match="expired"):
        box.read_access_token(expired)


def test_encryption_at_rest_needs_the_same_secret() -> None:
    box = SecretBox("a-secret-key-of-enough-length")
    sealed = box.encrypt("preshared-key-material")
    assert "preshared" not in sealed
    assert box.decrypt(sealed) == "preshared-key-material"
    with pytest.raises(ValueError, match="decrypt"):
        SecretBox("another-secret-key-entirely").decrypt(sealed)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 characters"):
        SecretBox("short")


def test_opaque_tokens_are_long_and_stored_hashed() -> None:
    token = new_opaque_token()
    assert len(token) >= 43  # 256 bits, URL-safe base64
    assert hash_token(token) != token and len(hash_token(token)) == 64
