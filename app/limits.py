"""Per-token request rate on write routes: a token bucket per token, in this api process.

The check is a dict lookup and a few float operations (no Redis round trip, nothing
allocated for a token already seen), so the ingest POST does not slow down. The table
is bounded: a bucket idle long enough to have refilled is the same as no bucket, so
those go first; if that is not enough, the oldest half goes (those tokens start full).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """`rate` requests per second per key, up to `burst` at once."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self.refill = self.burst / rate  # seconds an idle bucket needs to be full again
        self.buckets: dict[str, Bucket] = {}

    def retry_after(self, key: str) -> int:
        """0 when the request may go ahead (and is counted), else whole seconds to wait."""
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self._evict(now)
            self.buckets[key] = Bucket(self.burst - 1.0, now)
            return 0
        tokens = bucket.tokens + (now - bucket.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return 0
        bucket.tokens = tokens
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _evict(self, now: float) -> None:
        """Drop refilled buckets; when most are busy, drop the oldest half (amortised O(1))."""
        idle_since = now - self.refill
        for key in [k for k, b in self.buckets.items() if b.stamp <= idle_since]:
            del self.buckets[key]
        if len(self.buckets) > self.max_keys // 2:
            for key in list(self.buckets)[: len(self.buckets) // 2]:
                del self.buckets[key]
