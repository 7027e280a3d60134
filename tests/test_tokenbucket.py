"""Token-bucket arithmetic with time passed in."""

import math

import pytest

from dfnet.core import TokenBucket


def test_starts_full_and_refills_at_rate_up_to_burst():
    b = TokenBucket(rate=100.0, burst=50.0, now=0.0)
    assert b.try_take(50, 0.0)
    assert not b.try_take(1, 0.0)
    assert b.delay_for(10, 0.0) == pytest.approx(0.1)
    assert b.try_take(10, 0.1)
    b.refill(100.0)  # a long idle time fills only up to the burst
    assert b.tokens == 50.0


def test_delay_for_then_sleep_is_admitted_exactly():
    # Sleeping exactly the returned delay must be enough, even at clock values where float
    # rounding could leave a shortfall of 1e-17 tokens (which would loop forever in a sim).
    b = TokenBucket(rate=12_500_000.0, burst=4 * 2**20, now=86_400.123)
    now = 86_400.123
    for _ in range(1000):
        d = b.delay_for(4 * 2**20, now)
        assert d >= 0.0
        now += d
        assert b.try_take(4 * 2**20, now)
    # 1000 pieces of 4 MiB at 12.5 MB/s, the first one free from the initial burst.
    assert now - 86_400.123 == pytest.approx(999 * 4 * 2**20 / 12_500_000, rel=1e-9)


def test_long_run_rate_is_exact_with_take():
    b = TokenBucket(rate=1000.0, burst=100.0)
    now = 0.0
    sent = 0
    while sent < 100_000:
        now += b.take(37, now)
        sent += 37
    # Everything beyond the initial burst is paced at exactly the rate: the last request
    # may be used at the instant the bytes it reserved have all accrued.
    assert now == pytest.approx((sent - 100) / 1000.0, rel=1e-12)


def test_large_request_goes_into_debt_instead_of_starving():
    b = TokenBucket(rate=10.0, burst=100.0)
    # A 250-byte read is larger than the burst; it passes once the bucket is full...
    assert b.delay_for(250, 0.0) == 0.0
    assert b.try_take(250, 0.0)
    assert b.tokens == -150.0
    # ...and the next request repays the debt first: 150 + 10 bytes at 10 B/s.
    assert b.delay_for(10, 0.0) == pytest.approx(16.0)
    assert not b.try_take(10, 15.9)
    assert b.try_take(10, 16.0)


def test_large_request_waits_for_a_full_bucket_not_for_n():
    b = TokenBucket(rate=10.0, burst=100.0)
    b.take(100, 0.0)  # empty
    # n > burst waits only until the bucket is full again (10 s), not n / rate (25 s).
    assert b.delay_for(250, 0.0) == pytest.approx(10.0)
    assert not b.try_take(250, 9.0)
    assert b.try_take(250, 10.0)


def test_take_is_a_reservation_served_in_order():
    b = TokenBucket(rate=10.0, burst=10.0)
    assert b.take(10, 0.0) == 0.0
    assert b.take(10, 0.0) == pytest.approx(1.0)
    assert b.take(10, 0.0) == pytest.approx(2.0)
    assert b.tokens == -20.0
    # A try_take while others hold reservations must wait for them.
    assert not b.try_take(1, 2.0)
    assert b.try_take(1, 2.1)


def test_zero_and_invalid_requests():
    b = TokenBucket(rate=1.0, burst=1.0)
    b.take(5, 0.0)
    # The rule is min(n, burst) tokens, so even n = 0 waits out the debt: delay_for(0) is
    # "when may anything pass at all".
    assert b.delay_for(0, 0.0) == pytest.approx(4.0)
    assert not b.try_take(0, 0.0)
    assert b.try_take(0, 4.0)
    for bad in (-1, math.inf, math.nan):
        with pytest.raises(ValueError):
            b.delay_for(bad, 0.0)
    for rate, burst in ((-1, 1), (math.nan, 1), (1, -1), (1, math.nan)):
        with pytest.raises(ValueError):
            TokenBucket(rate, burst)


def test_set_rate_conserves_tokens():
    b = TokenBucket(rate=10.0, burst=1000.0)
    b.take(1000, 0.0)  # empty at t=0
    b.set_rate(100.0, 5.0)  # 5 s at the old rate: 50 tokens, none lost
    assert b.tokens == pytest.approx(50.0)
    b.refill(6.0)  # 1 s at the new rate
    assert b.tokens == pytest.approx(150.0)
    b.set_rate(100.0, 6.0)  # no time passed: nothing invented
    assert b.tokens == pytest.approx(150.0)
    # Debt survives a rate change too.
    b.take(350, 6.0)
    b.set_rate(50.0, 6.0)
    assert b.tokens == pytest.approx(-200.0)
    assert b.delay_for(0, 6.0) == pytest.approx(4.0)
    assert b.delay_for(50, 6.0) == pytest.approx(5.0)


def test_unlimited_rate():
    b = TokenBucket(rate=math.inf, burst=0.0)
    for now in (0.0, 0.0, 1.0):
        assert b.try_take(10**12, now)
        assert b.take(10**12, now) == 0.0
        assert b.delay_for(10**12, now) == 0.0
    # Leaving unlimited mode: the bucket counts as full, then paces at the new rate.
    b = TokenBucket(rate=math.inf, burst=100.0)
    b.take(10**9, 0.0)
    b.set_rate(10.0, 1.0)
    assert b.tokens == 100.0
    assert b.take(200, 1.0) == 0.0
    assert b.delay_for(10, 1.0) == pytest.approx(11.0)
    # And entering it: everything passes, debts are forgiven.
    b.set_rate(math.inf, 1.0)
    assert b.take(10**9, 1.0) == 0.0


def test_zero_rate_blocks_until_rate_changes():
    b = TokenBucket(rate=0.0, burst=10.0)
    assert b.try_take(10, 0.0)
    assert b.delay_for(1, 100.0) == math.inf
    b.set_rate(1.0, 100.0)  # the paused time created nothing
    assert b.tokens == 0.0
    assert b.delay_for(1, 100.0) == pytest.approx(1.0)


def test_time_going_backwards_creates_no_tokens():
    b = TokenBucket(rate=10.0, burst=100.0, now=10.0)
    b.take(100, 10.0)
    b.refill(5.0)  # a stale reading
    assert b.tokens == 0.0
    b.refill(10.0)  # back to where we were: [5, 10] is not credited twice
    assert b.tokens == 0.0
    b.refill(11.0)
    assert b.tokens == pytest.approx(10.0)
    # A stale caller may use tokens already there, but waits from its own clock for new ones.
    assert b.try_take(5, 3.0)
    assert b.delay_for(10, 3.0) == pytest.approx(8.0 + 0.5)
    assert b.delay_for(10, 11.0) == pytest.approx(0.5)
    # Refilling at a stale time with backwards steps never moves the credited mark back.
    b.refill(0.0)
    assert b.last == 11.0


def test_burst_zero_paces_every_request():
    b = TokenBucket(rate=10.0, burst=0.0)
    assert b.take(10, 0.0) == 0.0
    assert b.take(10, 0.0) == pytest.approx(1.0)
    assert not b.try_take(1, 1.5)
    assert b.try_take(1, 2.0)
