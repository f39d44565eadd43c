"""What every request handler may use, built once by the app's lifespan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis

from vestnik.app.limits import RateLimiter
from vestnik.app.sse import UserStreams
from vestnik.streams.center import Ingest
from vestnik.streams.coalesce import Appends, Replication
from vestnik.streams.config import Config, parse_rate
from vestnik.streams.keys import Keys

T = TypeVar("T")


@dataclass
class Ctx:
    config: Config
    keys: Keys
    redis: Redis
    # long-lived parts started by the lifespan (topic hub, user hub, ...), by name
    parts: dict[str, Any] = field(default_factory=dict)
    # XADDs of requests that arrive together, in one pipeline (notices, topic events)
    appends: Appends = field(init=False)
    ingest: Ingest = field(init=False)  # notices into the ingest stream
    # per-token write rate (None: VESTNIK_RATE=off) and per-user SSE streams, this process
    limiter: RateLimiter | None = field(init=False)
    sse_users: UserStreams = field(init=False)

    def __post_init__(self) -> None:
        self.appends = Appends(self.redis, Replication.of(
            self.config.redis_wait_replicas, self.config.redis_timeout))
        self.ingest = Ingest(self.redis, self.keys, self.appends)
        rate = parse_rate(self.config.rate)
        self.limiter = None if rate is None else RateLimiter(rate, self.config.rate_burst)
        self.sse_users = UserStreams(self.config.sse_per_user)

    def part(self, name: str, build: Callable[[], T]) -> T:
        """The part `name`, built by `build` on first use (a route's store, built once per
        process)."""
        got = self.parts.get(name)
        if got is None:
            got = self.parts[name] = build()
        return got
