"""The per-token write rate's bucket table (pure logic, a fake clock)."""

from __future__ import annotations

from vestnik.app.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_then_retry_after():
    clock = Clock()
    limiter = RateLimiter(2.0, 4, clock=clock)
    assert [limiter.retry_after("t") for _ in range(5)] == [0, 0, 0, 0, 1]
    clock.now += 0.5  # one token back
    assert limiter.retry_after("t") == 0
    assert limiter.retry_after("t") == 1
    assert limiter.retry_after("other") == 0  # its own bucket
    slow = RateLimiter(1 / 60, 1, clock=clock)
    assert slow.retry_after("t") == 0
    assert slow.retry_after("t") == 60  # whole seconds, never 0


def test_the_table_stays_bounded_with_many_tokens():
    clock = Clock()
    limiter = RateLimiter(10.0, 20, max_keys=1000, clock=clock)
    for i in range(50_000):  # all busy: none has refilled
        limiter.retry_after(f"token-{i}")
        assert len(limiter.buckets) <= 1000
    clock.now += 10  # all idle past their refill time: dropped first, no state lost
    limiter.retry_after("fresh")
    assert len(limiter.buckets) <= 1000
