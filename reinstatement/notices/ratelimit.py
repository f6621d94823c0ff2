"""Pace notice sending to what the mail provider allows, with a thread-safe token bucket.

Providers throttle (and eventually block) a sender that bursts past its quota, which turns
a million notices into a million deferrals. The limiter sits in front of each send: it
lets `burst` sends through at once, then one every 1/rate seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Float arithmetic can leave a refilled bucket at 0.9999999 tokens; without a tolerance
# the limiter would take a second, near-zero sleep for nothing.
_EPSILON = 1e-9


class RateLimiter:
    """A token bucket: `acquire()` blocks until a send is allowed.

    `rate_per_second` None or 0 means unlimited. `clock` and `sleep` are injectable so
    tests can drive time without waiting.
    """

    def __init__(
        self,
        rate_per_second: float | None,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_second is not None and rate_per_second < 0:
            raise ValueError("rate_per_second cannot be negative")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate_per_second = rate_per_second or None
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        return self.rate_per_second is None

    def _refill(self, rate: float) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * rate)
        self._updated = now

    def try_acquire(self) -> bool:
        """Take a token if one is available now; never blocks."""
        rate = self.rate_per_second
        if rate is None:
            return True
        with self._lock:
            self._refill(rate)
            if self._tokens >= 1.0 - _EPSILON:
                self._tokens -= 1.0
                return True
            return False

    def acquire(self) -> None:
        """Block until a token is available, then take it."""
        rate = self.rate_per_second
        if rate is None:
            return
        # The lock is held while sleeping on purpose: waiters then go one at a time in the
        # order they queued, and the bucket is never over-drawn by threads that all woke
        # up to the same refill.
        with self._lock:
            self._refill(rate)
            while self._tokens < 1.0 - _EPSILON:
                self._sleep((1.0 - self._tokens) / rate)
                self._refill(rate)
            self._tokens -= 1.0
