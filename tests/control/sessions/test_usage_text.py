"""How usage reads to a person: "2.1 GB of 5 GB used"."""

from __future__ import annotations

import pytest

from kswifi.control.sessions.service import GIB, MIB, format_gb, usage_text


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [
        (0, "0 GB"),
        (5 * GIB, "5 GB"),
        (int(2.1 * GIB), "2.1 GB"),
        (GIB, "1 GB"),
        (350 * MIB, "350 MB"),
        (int(1.5 * MIB), "1.5 MB"),
        (20 * GIB, "20 GB"),
    ],
)
def test_format_gb(num_bytes: int, text: str) -> None:
    assert format_gb(num_bytes) == text


def test_usage_text_matches_the_product_note() -> None:
    assert usage_text(int(2.1 * GIB), 5 * GIB) == "2.1 GB of 5 GB used"


def test_usage_text_never_shows_more_than_bought() -> None:
    assert usage_text(6 * GIB, 5 * GIB) == "5 GB of 5 GB used"


def test_nothing_used_yet_reads_in_the_limits_unit() -> None:
    assert usage_text(0, MIB) == "0 MB of 1 MB used"
    assert usage_text(0, 500 * MIB) == "0 MB of 500 MB used"
    assert usage_text(0, 5 * GIB) == "0 GB of 5 GB used"
