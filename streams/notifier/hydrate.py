"""Hydration of thin events (`op` + `id`, no `data`) from the product's own source.

A source is per topic: `redis:<key template>` (a JSON string or hash key) or an
`http(s)://` URL template, `{id}` standing for the entity id. Each event is
hydrated once per process however many clients subscribe: concurrent requests
for the same stream entry share one in-flight call, and results are cached by
stream id. HTTP sources may only point at configured hosts (no SSRF through a
crafted event id: the id is percent-encoded into the path), and their replies are read
up to MAX_ENTITY bytes: a larger one fails that event (`result="too_large"`), so a
misbehaving source cannot make every api process hold its reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import msgspec
from redis.asyncio import Redis

from vestnik.streams.channels import HTTP_HEADERS, ReplyTooLarge, capped_request
from vestnik.streams.metrics import HYDRATIONS
from vestnik.streams.schemas import TopicEvent

log = logging.getLogger("vestnik.hydrate")

_decode = msgspec.json.Decoder().decode
MAX_ENTITY = 1024 * 1024  # bytes of one entity read from an HTTP source (more: an error)


class HydrationConfigError(ValueError):
    pass


async def read_entity(redis: Redis, key: str) -> dict[str, Any] | None:
    """The entity held at `key`: a JSON object string, or a hash (field → string value)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.type(key)
        pipe.get(key)  # fails harmlessly for a hash: WRONGTYPE is returned, not raised
        kind, raw = await pipe.execute(raise_on_error=False)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "string" and isinstance(raw, bytes):
        try:
            value = _decode(raw)
        except msgspec.DecodeError:
            return {"value": raw.decode(errors="replace")}
        return value if isinstance(value, dict) else {"value": value}
    if kind == "hash":
        h = await redis.hgetall(key)
        return {k.decode(): v.decode(errors="replace") for k, v in h.items()}
    return None


def check_sources(sources: dict[str, str], allowed_hosts: list[str]) -> None:
    for topic, src in sources.items():
        if src.startswith("redis:"):
            if "{id}" not in src:
                raise HydrationConfigError(f"hydrate.{topic}: the key template needs {{id}}")
            continue
        parts = urlsplit(src)
        if parts.scheme not in ("http", "https") or "{id}" not in src:
            raise HydrationConfigError(
                f"hydrate.{topic}: expected redis:<key with {{id}}> or an http(s) URL with {{id}}"
            )
        if parts.hostname not in allowed_hosts:
            raise HydrationConfigError(
                f"hydrate.{topic}: host {parts.hostname!r} is not in hydrate_hosts"
            )


class Hydrator:
    def __init__(
        self,
        redis: Redis,
        sources: dict[str, str],
        allowed_hosts: list[str],
        *,
        cache_size: int = 10_000,
        timeout: float = 5.0,
    ) -> None:
        check_sources(sources, allowed_hosts)
        self.redis = redis
        self.sources = sources
        self.allowed_hosts = set(allowed_hosts)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], dict[str, Any] | None] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[dict[str, Any] | None]] = {}
        self._http: httpx.AsyncClient | None = None
        self._timeout = timeout

    def needs(self, topic: str, ev: TopicEvent) -> bool:
        return ev.data is None and ev.op != "delete" and topic in self.sources

    async def hydrate(self, topic: str, sid: str, ev: TopicEvent) -> TopicEvent:
        """Fill `ev.data` from the topic's source, once per (topic, stream id) per process."""
        if not self.needs(topic, ev):
            return ev
        key = (topic, sid)
        if key in self._cache:
            self._cache.move_to_end(key)
            return msgspec.structs.replace(ev, data=self._cache[key])
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            try:
                data = await self._fetch(topic, ev.id)
            except BaseException as e:
                fut.set_exception(e)
                fut.exception()  # mark retrieved: waiters (if any) re-raise it themselves
                raise
            finally:
                self._inflight.pop(key, None)
            fut.set_result(data)
            self._cache[key] = data
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            data = await asyncio.shield(fut)
        return msgspec.structs.replace(ev, data=data)

    async def _fetch(self, topic: str, entity_id: str) -> dict[str, Any] | None:
        src = self.sources[topic]
        try:
            if src.startswith("redis:"):
                data = await read_entity(self.redis, src[len("redis:"):].replace("{id}", entity_id))
            else:
                data = await self._fetch_http(src.replace("{id}", quote(entity_id, safe="")))
        except (httpx.HTTPError, ValueError, msgspec.DecodeError) as e:
            HYDRATIONS.labels(topic, "too_large" if isinstance(e, ReplyTooLarge) else "error"
                              ).inc()
            log.warning("hydrating %s/%s failed: %s", topic, entity_id, e)
            return None
        HYDRATIONS.labels(topic, "ok" if data is not None else "missing").inc()
        return data

    async def _fetch_http(self, url: str) -> dict[str, Any] | None:
        if urlsplit(url).hostname not in self.allowed_hosts:  # defence in depth
            raise ValueError(f"host of {url!r} is not in hydrate_hosts")
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False,
                                           headers=HTTP_HEADERS)  # identity: bytes as sent
        resp = await capped_request(self._http, "GET", url, limit=MAX_ENTITY, whole=True)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        value = _decode(resp.content)
        return value if isinstance(value, dict) else {"value": value}

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
