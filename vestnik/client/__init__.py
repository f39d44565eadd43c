"""A Python product's client of Vestnik, sync (`Client`) and asyncio (`AsyncClient`).

Over HTTP with a service token (`Client.http(base_url, token)`: notices, resolves, topic
events, alert settings, deliveries; retries on 429/503 honouring Retry-After) or straight
to Redis (`Client.redis(url)`: the XADDs the README documents, for notices, resolves and
topic events). Requests and answers are the server's own wire types (`vestnik.streams.
schemas`); errors are one hierarchy (`VestnikError`). See docs/client.md.
"""

from vestnik.client.aio import AsyncClient, AsyncSettings
from vestnik.client.calls import NoticeOptions, ResolveOptions, Retries
from vestnik.client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    NotSupported,
    PreconditionFailed,
    Unauthorized,
    Unavailable,
    VestnikError,
)
from vestnik.client.sync import Client, Settings

__all__ = ["AsyncClient", "AsyncSettings", "BadRequest", "Client", "Conflict", "Forbidden",
           "NotFound", "NotSupported", "NoticeOptions", "PreconditionFailed", "ResolveOptions",
           "Retries", "Settings", "Unauthorized", "Unavailable", "VestnikError"]
