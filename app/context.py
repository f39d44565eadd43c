"""What every request handler may use, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from streams.config import Settings
from streams.ingest import Ingest
from streams.keys import Keys
from streams.together import Appends


@dataclass
class Ctx:
    settings: Settings
    keys: Keys
    redis: Redis
    # long-lived parts started by the lifespan (topic hub, user hub, ...), by name
    parts: dict[str, Any] = field(default_factory=dict)
    # XADDs of requests that arrive together, in one pipeline (notices, topic events)
    appends: Appends = field(init=False)
    ingest: Ingest = field(init=False)  # notices into the ingest stream

    def __post_init__(self) -> None:
        self.appends = Appends(self.redis)
        self.ingest = Ingest(self.redis, self.keys, self.appends)
