"""The sliding-window limiter on its own, with an injected clock."""

from __future__ import annotations

import pytest

from kswifi.control.config import Settings
from kswifi.control.users.ratelimit import (
    ADDRESS_FACTOR,
    REGISTRATIONS_PER_MINUTE,
    AuthRateLimits,
    SlidingWindowLimiter,
)
from tests.control.users.conftest import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestSlidingWindow:
    def test_allows_up_to_the_limit_then_refuses(self, clock: FakeClock) -> None:
        limiter = SlidingWindowLimiter(3, 60, clock=clock)
        assert [limiter.hit("k") for _ in range(3)] == [None, None, None]
        assert limiter.hit("k") == 60
        assert limiter.retry_after("k") == 60

    def test_refused_hits_are_not_counted(self, clock: FakeClock) -> None:
        limiter = SlidingWindowLimiter(1, 60, clock=clock)
        limiter.hit("k")
        for _ in range(5):
            clock.advance(10)
            assert limiter.hit("k") is not None
        clock.advance(10.5)  # 60.5 s after the only counted event
        assert limiter.hit("k") is None

    def test_window_slides_event_by_event(self, clock: FakeClock) -> None:
        limiter = SlidingWindowLimiter(2, 60, clock=clock)
        limiter.record("k")  # t=0
        clock.advance(20)
        limiter.record("k")  # t=20
        clock.advance(10)  # t=30
        assert limiter.retry_after("k") == 30  # until the t=0 event ages out
        clock.advance(30)  # t=60: the first event is exactly one window old
        assert limiter.retry_after("k") is None
        limiter.record("k")
        assert limiter.retry_after("k") == 20  # until the t=20 event ages out

    def test_retry_after_is_whole_seconds_at_least_one(self, clock: FakeClock) -> None:
        limiter = SlidingWindowLimiter(1, 60, clock=clock)
        limiter.record("k")
        clock.advance(59.9)
        assert limiter.retry_after("k") == 1

    def test_keys_are_independent(self, clock: FakeClock) -> None:
        limiter = SlidingWindowLimiter(1, 60, clock=clock)
        limiter.record("a")
        assert limiter.retry_after("a") is not None
        assert limiter.retry_after("b") is None

    def test_reset_forgets_a_key(self, clock: FakeClock) -> None:
        limiter = SlidingWindowLimiter(1, 60, clock=clock)
        limiter.record("k")
        limiter.reset("k")
        assert limiter.retry_after("k") is None
        limiter.reset("never-seen")  # no error

    def test_aged_out_keys_are_dropped(self, clock: FakeClock) -> None:
        limiter = SlidingWindowLimiter(5, 60, clock=clock)
        limiter.record("k")
        assert len(limiter) == 1
        clock.advance(61)
        assert limiter.retry_after("k") is None
        assert len(limiter) == 0

    def test_memory_is_bounded_oldest_keys_forgotten_first(self, clock: FakeClock) -> None:
        limiter = SlidingWindowLimiter(1, 60, clock=clock, max_keys=3)
        for key in ("a", "b", "c", "d"):
            limiter.record(key)
        assert len(limiter) == 3
        assert limiter.retry_after("a") is None  # evicted
        assert limiter.retry_after("d") is not None

    def test_expired_keys_are_swept_before_evicting_live_ones(self, clock: FakeClock) -> None:
        limiter = SlidingWindowLimiter(1, 60, clock=clock, max_keys=2)
        limiter.record("old")
        clock.advance(30)
        limiter.record("live")
        clock.advance(31)  # "old" has aged out, "live" has not
        limiter.record("new")
        assert limiter.retry_after("live") is not None
        assert limiter.retry_after("new") is not None

    @pytest.mark.parametrize(("limit", "window", "max_keys"), [(0, 60, 10), (1, 0, 10), (1, 60, 0)])
    def test_rejects_nonsense_configuration(self, limit: int, window: float, max_keys: int) -> None:
        with pytest.raises(ValueError):
            SlidingWindowLimiter(limit, window, max_keys=max_keys)


class TestAuthRateLimits:
    def test_limits_come_from_settings(self) -> None:
        settings = Settings(login_attempts_per_minute=4)
        limits = AuthRateLimits.from_settings(settings)
        assert limits.login_by_account.limit == 4
        assert limits.login_by_address.limit == 4 * ADDRESS_FACTOR
        assert limits.register_by_address.limit == REGISTRATIONS_PER_MINUTE
        assert limits.login_by_account.window == 60

    def test_login_helpers_share_one_key_per_account(self, clock: FakeClock) -> None:
        limits = AuthRateLimits.from_settings(Settings(login_attempts_per_minute=2), clock=clock)
        limits.login_failed(" Ann@Example.com", "192.0.2.1")
        assert limits.login_wait("ann@example.com", "192.0.2.1") is None
        limits.login_failed("ANN@EXAMPLE.COM", "192.0.2.2")
        assert limits.login_wait("ann@example.com", "192.0.2.3") == 60
        clock.advance(20)
        limits.login_succeeded("Ann@example.com")
        assert limits.login_wait("ann@example.com", "192.0.2.3") is None

    def test_login_wait_is_the_longer_of_account_and_address(self, clock: FakeClock) -> None:
        limits = AuthRateLimits.from_settings(Settings(login_attempts_per_minute=1), clock=clock)
        for index in range(ADDRESS_FACTOR):
            limits.login_failed(f"user{index}@example.com", "192.0.2.1")
        clock.advance(30)
        limits.login_failed("late@example.com", "198.51.100.1")
        assert limits.login_wait("late@example.com", "192.0.2.1") == 60  # the account's
        assert limits.login_wait("fresh@example.com", "192.0.2.1") == 30  # the address's
