"""How long to wait before trying an outgoing message again (e-mail, operator webhooks)."""

from __future__ import annotations

from datetime import timedelta

MAX_ATTEMPTS = 8
FIRST_RETRY_SECONDS = 30.0
LONGEST_RETRY_SECONDS = 3600.0


def retry_delay(attempts: int) -> timedelta:
    """30 s after the first failure, doubling, at most an hour (8 attempts span ~1 h)."""
    seconds = FIRST_RETRY_SECONDS * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, LONGEST_RETRY_SECONDS))
