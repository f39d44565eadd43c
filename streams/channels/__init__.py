"""Channel registry: every class in the entry-point group `vestnik.channels`, built once.

A package adds a channel without forking Vestnik by declaring, in its pyproject.toml,

    [project.entry-points."vestnik.channels"]
    sms = "mypkg.sms:SmsChannel"      # a streams.channels.base.Channel subclass

and a setting then names it in its channel map (`"sms": {"users": ["1"]}`).
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import entry_points
from typing import Any

import httpx

from vestnik.streams.channels.base import (
    HTTP_HEADERS,
    HTTP_TIMEOUT,
    Channel,
    Digest,
    ReplyTooLarge,
    SendResult,
    capped_request,
    digest_lines,
)
from vestnik.streams.channels.http1 import HttpPool
from vestnik.streams.config import Config

__all__ = ["GROUP", "HTTP_HEADERS", "Channel", "Channels", "Digest", "HttpPool",
           "ReplyTooLarge", "SendResult", "available", "capped_request", "digest_lines",
           "user_addresses"]

GROUP = "vestnik.channels"
log = logging.getLogger("vestnik.channels")
# httpcore scans every pooled connection (a poll() each) for every request it assigns, so
# its cost grows with the pool: keep it small and queue the excess here, in O(1).
HTTP_CONNECTIONS = 16


class BoundedClient(httpx.AsyncClient):
    """One shared client; at most `slots` requests in flight, the rest wait their turn."""

    def __init__(self, *, slots: int, **kw: Any) -> None:
        super().__init__(**kw)
        self._slots = asyncio.Semaphore(slots)

    async def send(self, request: httpx.Request, **kw: Any) -> httpx.Response:
        async with self._slots:
            return await super().send(request, **kw)


def available(group: str = GROUP) -> dict[str, type[Channel]]:
    """Channel classes by name; a plugin that fails to import is logged and left out."""
    out: dict[str, type[Channel]] = {}
    for ep in entry_points(group=group):
        try:
            cls = ep.load()
        except Exception:
            log.exception("channel %r (%s) failed to load; it is off", ep.name, ep.value)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Channel)):
            log.error("channel %r (%s) is not a Channel subclass; it is off", ep.name, ep.value)
            continue
        out[ep.name] = cls
    return out


def user_addresses(classes: dict[str, type[Channel]]) -> dict[str, str | None]:
    """Each channel's User field holding a user's address (None: shared targets only), what
    `forward.user_routes` reads to decide who a channel reaches."""
    return {name: klass.user_address for name, klass in classes.items()}


class Channels:
    """The channels of one forwarder process, sharing one HTTP client (keep-alive pool)."""

    def __init__(self, classes: dict[str, type[Channel]], channels: dict[str, Channel],
                 http: httpx.AsyncClient) -> None:
        self.classes, self.channels, self.http = classes, channels, http
        self.addresses = user_addresses(classes)

    @classmethod
    def from_settings(cls, settings: Config, *,
                      classes: dict[str, type[Channel]] | None = None) -> Channels:
        classes = available() if classes is None else classes
        http = BoundedClient(
            slots=HTTP_CONNECTIONS,
            timeout=HTTP_TIMEOUT,
            limits=httpx.Limits(max_connections=HTTP_CONNECTIONS,
                                max_keepalive_connections=HTTP_CONNECTIONS),
            headers=HTTP_HEADERS,
        )
        built: dict[str, Channel] = {}
        for name, klass in classes.items():
            channel = klass.create(settings, http)
            if channel is None:
                log.info("channel %s is not configured; it is off", name)
            else:
                built[name] = channel
        log.info("channels on: %s", ", ".join(sorted(built)) or "none")
        return cls(classes, built, http)

    def get(self, name: str) -> Channel | None:
        return self.channels.get(name)

    async def aclose(self) -> None:
        for channel in self.channels.values():
            try:
                await channel.aclose()
            except Exception:
                log.exception("closing channel %s", channel.name)
        await self.http.aclose()
