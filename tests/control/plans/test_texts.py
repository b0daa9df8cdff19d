"""How plan amounts and prices read to people."""

from __future__ import annotations

import pytest

from kswifi.control.plans.service import GIB, MIB, data_text, price_text


@pytest.mark.parametrize(
    ("data_bytes", "expected"),
    [
        (1 * GIB, "1 GB"),
        (5 * GIB, "5 GB"),
        (20 * GIB, "20 GB"),
        (1536 * MIB, "1.5 GB"),
        (500 * MIB, "500 MB"),
        (1 * MIB, "1 MB"),
    ],
)
def test_data_text(data_bytes: int, expected: str) -> None:
    assert data_text(data_bytes) == expected


@pytest.mark.parametrize(
    ("cents", "currency", "expected"),
    [
        (499, "USD", "$4.99"),
        (1499, "EUR", "€14.99"),
        (100000, "GBP", "£1,000.00"),
        (5, "USD", "$0.05"),
        (500, "JPY", "¥500"),
        (1250, "CHF", "12.50 CHF"),
        (0, "USD", "Free"),
    ],
)
def test_price_text(cents: int, currency: str, expected: str) -> None:
    assert price_text(cents, currency) == expected
