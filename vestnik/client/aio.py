"""`AsyncClient`: the asyncio shell around `calls` (httpx.AsyncClient over HTTP; over
Redis the api's own `Ingest` and `publish` on a `streams.redis.connect` client). Everything
but the I/O is in calls.py, shared with `Client`."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar, Unpack

import httpx

from vestnik.client import calls
from vestnik.client.calls import (
    Attempts,
    Call,
    Done,
    NoticeOptions,
    Op,
    PatchBody,
    ResolveOptions,
    Retries,
    SettingBody,
    Version,
)
from vestnik.client.errors import NotSupported
from vestnik.client.sync import HTTP_ONLY
from vestnik.streams.center import Ingest
from vestnik.streams.coalesce import Appends, Replication
from vestnik.streams.forward import DeliveryList
from vestnik.streams.keys import Keys
from vestnik.streams.notifier import publish
from vestnik.streams.redis import connect, redacted
from vestnik.streams.schemas import (
    AlertSetting,
    EventIn,
    NoticeIn,
    ResolveIn,
    SettingList,
)

T = TypeVar("T")


class _Http:
    def __init__(self, base_url: str, token: str, timeout: float, retries: Retries) -> None:
        self.base_url, self.retries = base_url, retries
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout,
                                      headers={"Authorization": f"Bearer {token}"})

    async def call(self, call: Call[T]) -> T:
        tries = Attempts(call, self.retries)
        for _ in range(self.retries.attempts):
            try:
                r = await self.http.request(call.method, call.path, content=call.body,
                                            headers=call.headers, params=call.params)
            except httpx.TransportError as e:
                step: Done[T] | float = tries.failed(e)
            else:
                step = tries.answered(r.status_code, r.headers, r.content)
            if isinstance(step, Done):
                return step.value
            await asyncio.sleep(step)
        raise AssertionError("Attempts stops within retries.attempts")

    async def send(self, notice: NoticeIn, key: str | None) -> str:
        return (await self.call(calls.send(notice, key))).id

    async def resolve(self, body: ResolveIn) -> str:
        return (await self.call(calls.resolve(body))).sid

    async def publish(self, topic: str, event: EventIn) -> str:
        return (await self.call(calls.publish(topic, event))).sid

    async def close(self) -> None:
        await self.http.aclose()

    def __repr__(self) -> str:
        return self.base_url


class _Redis:
    def __init__(self, url: str, prefix: str, timeout: float, topic_maxlen: int,
                 wait_replicas: int, ingest_partitions: int) -> None:
        self.url, self.topic_maxlen = url, topic_maxlen
        self.keys = Keys.for_url(prefix, url, ingest_partitions=ingest_partitions)
        self.redis = connect(url, max_connections=4, name="vestnik-client", timeout=timeout)
        self.ingest = Ingest(self.redis, self.keys,
                             Appends(self.redis, Replication.of(wait_replicas, timeout)))

    async def call(self, call: Call[T]) -> T:
        raise NotSupported(HTTP_ONLY)

    async def send(self, notice: NoticeIn, key: str | None) -> str:
        with calls.translated(self.url):
            return await self.ingest.send(notice, via="client", idempotency_key=key)

    async def resolve(self, body: ResolveIn) -> str:
        with calls.translated(self.url):
            return await self.ingest.resolve(body)

    async def publish(self, topic: str, event: EventIn) -> str:
        with calls.translated(self.url):
            return await publish(self.redis, self.keys, topic, calls.topic_event(event),
                                 maxlen=self.topic_maxlen, via="client")

    async def close(self) -> None:
        await self.redis.aclose()

    def __repr__(self) -> str:
        return redacted(self.url)


class AsyncClient:
    """`Client` for asyncio: the same calls, awaited. Use it in an `async with` block, or
    `await close()`."""

    def __init__(self, transport: _Http | _Redis) -> None:
        self._t = transport
        self.settings = AsyncSettings(transport)

    @classmethod
    def http(cls, base_url: str, token: str, *, timeout: float = 10.0,
             retries: Retries = calls.DEFAULT_RETRIES) -> AsyncClient:
        """Over the api with a service token (see `Client.http`)."""
        return cls(_Http(base_url, token, timeout, retries))

    @classmethod
    def redis(cls, url: str, prefix: str = "vn:", *, timeout: float = 2.0,
              topic_maxlen: int = calls.TOPIC_MAXLEN, wait_replicas: int = 0,
              ingest_partitions: int = 1) -> AsyncClient:
        """Straight to Redis (see `Client.redis`)."""
        return cls(_Redis(url, prefix, timeout, topic_maxlen, wait_replicas,
                          ingest_partitions))

    async def send(self, alert: str, title: str, *, idempotency_key: str | None = None,
                   **options: Unpack[NoticeOptions]) -> str:
        """See `Client.send`."""
        return await self._t.send(calls.notice_in(alert, title, options), idempotency_key)

    async def resolve(self, alert: str, dedup_key: str,
                      **options: Unpack[ResolveOptions]) -> str:
        return await self._t.resolve(calls.resolve_in(alert, dedup_key, options))

    async def publish(self, topic: str, op: Op, id: str, data: dict[str, Any] | None = None
                      ) -> str:
        return await self._t.publish(topic, calls.event_in(topic, op, id, data))

    async def deliveries(self, notice_id: str) -> DeliveryList:
        return await self._t.call(calls.deliveries(notice_id))

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self._t!r})"


class AsyncSettings:
    """`client.settings` of an AsyncClient (see `Settings`)."""

    def __init__(self, transport: _Http | _Redis) -> None:
        self._t = transport

    async def create(self, setting: SettingBody) -> AlertSetting:
        return await self._t.call(calls.setting_create(setting))

    async def get(self, setting_id: str) -> AlertSetting:
        return await self._t.call(calls.setting_get(setting_id))

    async def list(self, name: str | None = None, *, cursor: str | None = None,
                   limit: int | None = None) -> SettingList:
        return await self._t.call(calls.setting_list(name, cursor, limit))

    async def replace(self, setting_id: str, setting: SettingBody, *,
                      version: Version = None) -> AlertSetting:
        return await self._t.call(calls.setting_replace(setting_id, setting, version))

    async def patch(self, setting_id: str, changes: PatchBody, *,
                    version: Version = None) -> AlertSetting:
        return await self._t.call(calls.setting_patch(setting_id, changes, version))

    async def delete(self, setting_id: str, *, version: Version = None) -> None:
        await self._t.call(calls.setting_delete(setting_id, version))
