"""In-memory sliding-window rate limiting for login, registration and e-mailed links (one
process's view)."""

from __future__ import annotations

import math
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kswifi.control.config import Settings

Clock = Callable[[], float]

# Many people can share one address (carrier NAT, an office), so an address may fail more
# often than a single account before it is slowed down.
ADDRESS_FACTOR = 5
REGISTRATIONS_PER_MINUTE = 20
# Reset and confirmation requests per address and minute (beyond: 429), and messages about
# their account one person may be sent by such requests per hour (beyond: silently none).
RESETS_PER_MINUTE = 10
ACCOUNT_MAILS_PER_HOUR = 3


class SlidingWindowLimiter:
    """At most `limit` events per key within any `window` seconds.

    Memory is bounded: keys whose events have all aged out are dropped, and past `max_keys`
    the least recently created keys are forgotten first (an attacker spraying keys only
    forgets its own oldest entries).
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError("limit and max_keys must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def _live(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def retry_after(self, key: str) -> int | None:
        """Whole seconds until `key` may act again, or None if it may act now."""
        now = self._clock()
        events = self._live(key, now)
        if events is None or len(events) < self.limit:
            return None
        return max(1, math.ceil(events[0] + self.window - now))

    def record(self, key: str) -> None:
        """Count one event for `key`."""
        now = self._clock()
        events = self._live(key, now)
        if events is None:
            self._make_room(now)
            events = self._events[key] = deque()
        events.append(now)

    def hit(self, key: str) -> int | None:
        """Count an event unless `key` is at its limit; then return the seconds to wait."""
        wait = self.retry_after(key)
        if wait is None:
            self.record(key)
        return wait

    def reset(self, key: str) -> None:
        self._events.pop(key, None)

    def __len__(self) -> int:
        return len(self._events)

    def _make_room(self, now: float) -> None:
        if len(self._events) < self.max_keys:
            return
        for key in list(self._events):
            self._live(key, now)
        while len(self._events) >= self.max_keys:
            del self._events[next(iter(self._events))]


def account_key(email: str) -> str:
    """One key per account however the address is typed (case, spaces, Unicode form)."""
    return unicodedata.normalize("NFC", email.strip()).lower()


@dataclass
class AuthRateLimits:
    """The limiters the auth endpoints (API and web forms) share for the life of one app.

    Only failed logins count, per account and per client address; a success clears the
    account's failures (not the address's, or one good login would launder a spray).
    """

    login_by_account: SlidingWindowLimiter
    login_by_address: SlidingWindowLimiter
    register_by_address: SlidingWindowLimiter
    reset_by_address: SlidingWindowLimiter
    mail_by_account: SlidingWindowLimiter

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = time.monotonic) -> AuthRateLimits:
        per_minute = settings.login_attempts_per_minute
        return cls(
            login_by_account=SlidingWindowLimiter(per_minute, clock=clock),
            login_by_address=SlidingWindowLimiter(per_minute * ADDRESS_FACTOR, clock=clock),
            register_by_address=SlidingWindowLimiter(REGISTRATIONS_PER_MINUTE, clock=clock),
            reset_by_address=SlidingWindowLimiter(RESETS_PER_MINUTE, clock=clock),
            mail_by_account=SlidingWindowLimiter(ACCOUNT_MAILS_PER_HOUR, 3600.0, clock=clock),
        )

    def login_wait(self, email: str, address: str) -> int | None:
        """Seconds before this account or address may try again; None if it may now."""
        waits = [
            wait
            for wait in (
                self.login_by_account.retry_after(account_key(email)),
                self.login_by_address.retry_after(address),
            )
            if wait is not None
        ]
        return max(waits) if waits else None

    def login_failed(self, email: str, address: str) -> None:
        self.login_by_account.record(account_key(email))
        self.login_by_address.record(address)

    def login_succeeded(self, email: str) -> None:
        self.login_by_account.reset(account_key(email))
