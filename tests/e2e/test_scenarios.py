"""Issue 3's end-to-end scenarios with real traffic through a real gateway agent."""

from __future__ import annotations

import pytest

from .harness import E2ESystem

pytestmark = pytest.mark.root

MB = 1024 * 1024


def test_1_phone_reaches_internet_and_bill_matches_bytes_crossed(system: E2ESystem) -> None:
    phone = system.connect_phone("premium")
    system.reset_crossed()
    result = system.fetch(phone, 3 * MB)
    assert result["received"] == 3 * MB
    used = system.settle_usage(phone)
    crossed = system.crossed_bytes()
    # Accounting rule: the gateway bills IP packets it forwarded, both directions, headers
    # included: the same bytes the Internet host exchanged with the gateway.
    assert crossed > 3 * MB
    assert abs(used - crossed) <= max(0.005 * crossed, 3000), (used, crossed)
    session = system.session(phone.session_id, phone.owner)
    assert session["status"] in ("active", "connected")
