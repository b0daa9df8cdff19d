"""`kswifi demo` (behind `make run`): what it prepares, and that a second start reuses it."""

from __future__ import annotations

import pytest

from kswifi.commands import demo


def test_prepares_operator_gateway_and_vouchers_once(demo_settings) -> None:  # type: ignore[no-untyped-def]
    first = demo._prepare(demo_settings, "127.0.0.1:51820")
    assert len(first.admin_password) >= 12
    assert len(first.gateway_token) >= 32
    assert set(first.vouchers) == {"basic", "premium", "ultra"}
    assert all(len(codes) == 2 for codes in first.vouchers.values())
    password_file = demo_settings.data_dir / "admin-password"
    assert oct(password_file.stat().st_mode & 0o777) == "0o600"

    second = demo._prepare(demo_settings, "127.0.0.1:51820")
    assert second.admin_password == first.admin_password
    assert second.gateway_token == first.gateway_token
    assert second.vouchers == first.vouchers


def test_says_why_there_is_no_local_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    reason = demo._why_no_gateway()
    assert reason is not None and "root" in reason
