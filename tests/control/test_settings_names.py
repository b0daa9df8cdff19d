"""The control plane's gateway settings have their own names; the old ones still work."""

from __future__ import annotations

import pytest

from kswifi.control.config import Settings


def test_new_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSWIFI_DEFAULT_GATEWAY_CAPACITY", "7")
    monkeypatch.setenv("KSWIFI_OFFLINE_AFTER_SECONDS", "40")
    settings = Settings()
    assert settings.default_gateway_capacity == 7
    assert settings.offline_after_seconds == 40


def test_old_names_still_read_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSWIFI_GATEWAY_POOL_V4", "100.96.0.0/12")
    monkeypatch.setenv("KSWIFI_GATEWAY_POOL_V4_PREFIX", "20")
    monkeypatch.setenv("KSWIFI_GATEWAY_POOL_V6", "fd00:1::/48")
    monkeypatch.setenv("KSWIFI_GATEWAY_CAPACITY", "12")
    monkeypatch.setenv("KSWIFI_GATEWAY_OFFLINE_SECONDS", "45")
    with pytest.warns(FutureWarning) as caught:
        settings = Settings()
    assert settings.address_pool_v4 == "100.96.0.0/12"
    assert settings.address_pool_v4_prefix == 20
    assert settings.address_pool_v6 == "fd00:1::/48"
    assert settings.default_gateway_capacity == 12
    assert settings.offline_after_seconds == 45
    messages = [str(w.message) for w in caught]
    expected = "KSWIFI_GATEWAY_CAPACITY is deprecated: rename it to KSWIFI_DEFAULT_GATEWAY_CAPACITY"
    assert expected in messages
    assert len(messages) == 5


def test_new_name_wins_over_old(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSWIFI_GATEWAY_CAPACITY", "12")
    monkeypatch.setenv("KSWIFI_DEFAULT_GATEWAY_CAPACITY", "9")
    with pytest.warns(FutureWarning, match="KSWIFI_GATEWAY_CAPACITY is ignored"):
        settings = Settings()
    assert settings.default_gateway_capacity == 9


def test_old_name_is_validated_like_the_new(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSWIFI_GATEWAY_OFFLINE_SECONDS", "1")
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="offline_after_seconds"):
        Settings()
