"""Rate limits for the live runtime: the core's token buckets, slept on by asyncio.

A `Throttle` is one or more buckets (say the host's total download limit and one task's
limit); passing bytes through it takes from each and sleeps as long as the slowest says.
Buckets are created unlimited (`inf`) and changed in place with `set_rate`, so a limit
picked up from the config service or a rate controller applies to transfers already running.
"""
from __future__ import annotations

import asyncio
import math
import time

from .core.tokenbucket import TokenBucket

BURST_S = 0.25          # a bucket holds a quarter second of its rate (at least one chunk)
MIN_BURST = 256 * 1024


def bucket(rate: float = math.inf) -> TokenBucket:
    return TokenBucket(rate, _burst(rate), time.monotonic())


def set_rate(b: TokenBucket, rate: float) -> None:
    b.set_rate(rate, time.monotonic())
    b.burst = _burst(rate)
    b.tokens = min(b.tokens, b.burst)


def _burst(rate: float) -> float:
    return MIN_BURST if rate == math.inf else max(MIN_BURST, rate * BURST_S)


async def pace(buckets: tuple[TokenBucket, ...], n: int) -> None:
    """Let `n` bytes pass every bucket, sleeping as needed."""
    now = time.monotonic()
    wait = 0.0
    for b in buckets:
        wait = max(wait, b.take(n, now))
    if wait > 0:
        await asyncio.sleep(wait)


def charge(buckets: tuple[TokenBucket, ...], n: int) -> None:
    """Let `n` bytes that already passed count against every bucket, without sleeping (the
    debt, if any, slows whatever passes next)."""
    now = time.monotonic()
    for b in buckets:
        b.take(n, now)
