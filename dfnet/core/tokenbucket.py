"""Token-bucket arithmetic, with time passed in as ``now`` (float seconds).

This module owns the one rate-limiting rule that the live runtime and the simulator share;
it never sleeps and never reads a clock. Rates are bytes per second, sizes are bytes.

Rules it keeps:

- The bucket fills at ``rate`` up to ``burst`` and starts full. ``rate = inf`` means
  unlimited: every request passes at once and the bucket counts as full.
- Large requests may go into debt, so a read bigger than ``burst`` is never starved:
  a request for ``n`` bytes is admitted once the bucket holds ``min(n, burst)`` tokens
  (for ``n > burst``: once the bucket is full). Admission takes all ``n``, which may leave
  the level negative; later requests wait until that debt is repaid (so ``delay_for(0, now)``
  is the time until the bucket is out of debt). The long-run rate is therefore exact, and
  no request waits longer than ``burst / rate`` plus the debt already owed.
- ``take`` is the reservation form (what a caller that can sleep uses): it takes ``n`` now,
  possibly into debt, and returns how long the caller must sleep before using the bytes.
  Callers that reserve one after another are served in order.
- ``now`` is a monotonic clock reading (the event loop's clock, simulated time). The bucket
  remembers the latest ``now`` it has credited; an earlier ``now`` is a stale reading that
  neither creates tokens nor moves that mark back. It may use tokens already there, and
  its wait for missing ones is measured from itself (so it includes the gap).
- ``set_rate`` credits the time so far at the old rate, then switches, so no tokens are lost
  or invented by the change.
- Float rounding: a shortfall smaller than what a few ulps of ``now`` are worth at this rate
  (or 1e-9 of the request) counts as none. A caller that sleeps exactly the returned delay
  is then admitted, instead of being told to wait 1e-17 s forever.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        self.rate = self._checked_rate(rate)
        if not burst >= 0:  # also refuses NaN
            raise ValueError(f"burst must be >= 0, got {burst!r}")
        self.burst = float(burst)
        self.tokens = self.burst  # may go negative: that is debt
        self.last = float(now)  # latest time already credited

    @staticmethod
    def _checked_rate(rate: float) -> float:
        if not rate >= 0:
            raise ValueError(f"rate must be >= 0 (inf for unlimited), got {rate!r}")
        return float(rate)

    @property
    def unlimited(self) -> bool:
        return self.rate == math.inf

    def refill(self, now: float) -> None:
        """Credit the time since the last credited instant; stale ``now`` is a no-op."""
        if self.unlimited:
            self.tokens = self.burst
        elif now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = max(self.last, now)

    def _wait(self, n: float, now: float) -> float:
        """Seconds from ``now`` until a request for ``n`` is admissible (bucket refilled)."""
        if not n >= 0 or n == math.inf:
            raise ValueError(f"request must be a finite number of bytes >= 0, got {n!r}")
        if self.unlimited:
            return 0.0
        shortfall = min(n, self.burst) - self.tokens
        slack = 1e-9 * n + 4.0 * self.rate * math.ulp(max(abs(now), abs(self.last)))
        if shortfall <= slack:
            return 0.0
        if self.rate == 0.0:
            return math.inf
        # New tokens accrue only after `last`, so a stale `now` also waits out the gap.
        return max(0.0, self.last - now) + shortfall / self.rate

    def delay_for(self, n: float, now: float) -> float:
        """Seconds until ``n`` bytes may pass (0 if they may pass now; never negative)."""
        self.refill(now)
        return self._wait(n, now)

    def try_take(self, n: float, now: float) -> bool:
        """Take ``n`` bytes if they may pass now (possibly into debt); else take nothing."""
        if self.delay_for(n, now) > 0.0:
            return False
        if not self.unlimited:
            self.tokens -= n
        return True

    def take(self, n: float, now: float) -> float:
        """Take ``n`` bytes now, possibly into debt; return how long the caller must sleep."""
        wait = self.delay_for(n, now)
        if not self.unlimited:
            self.tokens -= n
        return wait

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from ``now`` on, crediting the time so far at the old rate."""
        rate = self._checked_rate(rate)
        self.refill(now)
        self.rate = rate

    def __repr__(self) -> str:
        return (
            f"TokenBucket(rate={self.rate!r}, burst={self.burst!r}, "
            f"tokens={self.tokens!r}, last={self.last!r})"
        )
