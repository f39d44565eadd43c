"""`Client`: the blocking shell around `calls` (httpx.Client over HTTP, redis-py's blocking
client over Redis). Everything but the I/O is in calls.py, shared with `AsyncClient`."""

from __future__ import annotations

import time
from collections.abc import Callable
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
from vestnik.streams.center import INGEST_SCRIPT_PATH, IngestCall, resolve_entry, resolve_stream
from vestnik.streams.coalesce import Replication
from vestnik.streams.forward import DeliveryList
from vestnik.streams.keys import Keys
from vestnik.streams.lua import sync_script
from vestnik.streams.notifier import queue_publish
from vestnik.streams.redis import blocking, redacted
from vestnik.streams.schemas import (
    AlertSetting,
    EventIn,
    NoticeIn,
    ResolveIn,
    SettingList,
)

T = TypeVar("T")
HTTP_ONLY = ("settings and deliveries exist only over HTTP: make the client with "
             "Client.http(base_url, token)")


class _Http:
    def __init__(self, base_url: str, token: str, timeout: float, retries: Retries) -> None:
        self.base_url, self.retries = base_url, retries
        self.http = httpx.Client(base_url=base_url, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"})

    def call(self, call: Call[T]) -> T:
        tries = Attempts(call, self.retries)
        for _ in range(self.retries.attempts):
            try:
                r = self.http.request(call.method, call.path, content=call.body,
                                      headers=call.headers, params=call.params)
            except httpx.TransportError as e:
                step: Done[T] | float = tries.failed(e)
            else:
                step = tries.answered(r.status_code, r.headers, r.content)
            if isinstance(step, Done):
                return step.value
            time.sleep(step)
        raise AssertionError("Attempts stops within retries.attempts")

    def send(self, notice: NoticeIn, key: str | None) -> str:
        return self.call(calls.send(notice, key)).id

    def resolve(self, body: ResolveIn) -> str:
        return self.call(calls.resolve(body)).sid

    def publish(self, topic: str, event: EventIn) -> str:
        return self.call(calls.publish(topic, event)).sid

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return self.base_url


class _Redis:
    def __init__(self, url: str, prefix: str, timeout: float, topic_maxlen: int,
                 wait_replicas: int, ingest_partitions: int) -> None:
        self.url, self.topic_maxlen = url, topic_maxlen
        self.keys = Keys.for_url(prefix, url, ingest_partitions=ingest_partitions)
        self.redis = blocking(url, name="vestnik-client", timeout=timeout)
        self.replication = Replication.of(wait_replicas, timeout)

    def call(self, call: Call[T]) -> T:
        raise NotSupported(HTTP_ONLY)

    def _durable(self, stream: str, queue: Callable[[Any], Any]) -> Any:
        """What `queue` adds to a pipeline (writes to `stream`), answered once `replication`
        has it: its WAIT in the same round trip, as the api's Ingest does; on a cluster,
        after it, on the node that took the write (a pipeline routes only keyed commands)."""
        pipe = self.redis.pipeline(transaction=False)
        queue(pipe)
        rep = self.replication
        if rep is not None and not self.keys.cluster:
            pipe.execute_command("WAIT", rep.replicas, rep.timeout_ms)
        answers = pipe.execute()
        if rep is not None:
            if self.keys.cluster:
                node = self.redis.get_node_from_key(stream, replica=False)
                rep.check(self.redis.execute_command("WAIT", rep.replicas, rep.timeout_ms,
                                                     target_nodes=node))
            else:
                rep.check(answers[-1])
        return answers[0]

    def send(self, notice: NoticeIn, key: str | None) -> str:
        ingest = IngestCall.of(notice, self.keys, key)
        with calls.translated(self.url):
            if ingest.script_keys is None:
                self._durable(ingest.stream, lambda pipe: pipe.xadd(ingest.stream, ingest.fields))
                return ingest.nid
            script, script_keys = sync_script(INGEST_SCRIPT_PATH), ingest.script_keys
            if self.keys.cluster:  # a cluster pipeline refuses EVALSHA: the text (EVAL)
                kind, got = self._durable(ingest.stream, lambda pipe: pipe.execute_command(
                    "EVAL", script.script, len(script_keys), *script_keys, *ingest.script_args))
            else:
                kind, got = self._durable(ingest.stream, lambda pipe: script(
                    keys=script_keys, args=ingest.script_args, client=pipe))
            return ingest.outcome(kind, got)

    def resolve(self, body: ResolveIn) -> str:
        with calls.translated(self.url):
            stream = resolve_stream(body, self.keys)
            sid = self._durable(stream, lambda pipe: pipe.xadd(stream, resolve_entry(body)))
        return sid.decode()

    def publish(self, topic: str, event: EventIn) -> str:
        with calls.translated(self.url):
            pipe = self.redis.pipeline(transaction=False)
            queue_publish(pipe, self.keys, topic, calls.topic_event(event),
                          maxlen=self.topic_maxlen)
            sid, _ = pipe.execute()
        return sid.decode()

    def close(self) -> None:
        self.redis.close()

    def __repr__(self) -> str:
        return redacted(self.url)


class Client:
    """A product's blocking client of Vestnik: `Client.http(base_url, service_token)` or
    `Client.redis(url)` (XADD straight to the streams; no settings or deliveries). Use it
    in a `with` block, or `close()` it."""

    def __init__(self, transport: _Http | _Redis) -> None:
        self._t = transport
        self.settings = Settings(transport)

    @classmethod
    def http(cls, base_url: str, token: str, *, timeout: float = 10.0,
             retries: Retries = calls.DEFAULT_RETRIES) -> Client:
        """Over the api with a service token; every request times out after `timeout`
        seconds; `retries` bounds the tries of a call."""
        return cls(_Http(base_url, token, timeout, retries))

    @classmethod
    def redis(cls, url: str, prefix: str = "vn:", *, timeout: float = 2.0,
              topic_maxlen: int = calls.TOPIC_MAXLEN, wait_replicas: int = 0,
              ingest_partitions: int = 1) -> Client:
        """Straight to Redis (the entries the README documents; `url` may be a
        `redis+sentinel://` one); every command times out after `timeout` seconds.
        `wait_replicas`: a send or resolve returns once that many replicas have it (as
        VESTNIK_REDIS_WAIT_REPLICAS), else raises Unavailable. `ingest_partitions`: the
        center's VESTNIK_INGEST_PARTITIONS (notices spread over that many streams as
        Vestnik's own writers spread them; 1 writes `vn:notices` only)."""
        return cls(_Redis(url, prefix, timeout, topic_maxlen, wait_replicas,
                          ingest_partitions))

    def send(self, alert: str, title: str, *, idempotency_key: str | None = None,
             **options: Unpack[NoticeOptions]) -> str:
        """Send a notice; returns its id. Over HTTP a repeat with the same
        `idempotency_key` returns the first id and sends nothing."""
        return self._t.send(calls.notice_in(alert, title, options), idempotency_key)

    def resolve(self, alert: str, dedup_key: str, **options: Unpack[ResolveOptions]) -> str:
        """Resolve the incident of `alert` and `dedup_key`; returns the entry's stream id."""
        return self._t.resolve(calls.resolve_in(alert, dedup_key, options))

    def publish(self, topic: str, op: Op, id: str, data: dict[str, Any] | None = None
                ) -> str:
        """Publish an entity change (`data`: the whole entity); returns its stream id."""
        return self._t.publish(topic, calls.event_in(topic, op, id, data))

    def deliveries(self, notice_id: str) -> DeliveryList:
        """Every forward attempt of a notice (HTTP only)."""
        return self._t.call(calls.deliveries(notice_id))

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self._t!r})"


class Settings:
    """`client.settings`: alert settings CRUD (HTTP only). `version` (an int or the
    AlertSetting read) sends If-Match: a stale one raises PreconditionFailed."""

    def __init__(self, transport: _Http | _Redis) -> None:
        self._t = transport

    def create(self, setting: SettingBody) -> AlertSetting:
        return self._t.call(calls.setting_create(setting))

    def get(self, setting_id: str) -> AlertSetting:
        return self._t.call(calls.setting_get(setting_id))

    def list(self, name: str | None = None, *, cursor: str | None = None,
             limit: int | None = None) -> SettingList:
        return self._t.call(calls.setting_list(name, cursor, limit))

    def replace(self, setting_id: str, setting: SettingBody, *,
                version: Version = None) -> AlertSetting:
        return self._t.call(calls.setting_replace(setting_id, setting, version))

    def patch(self, setting_id: str, changes: PatchBody, *,
              version: Version = None) -> AlertSetting:
        return self._t.call(calls.setting_patch(setting_id, changes, version))

    def delete(self, setting_id: str, *, version: Version = None) -> None:
        self._t.call(calls.setting_delete(setting_id, version))
