"""Everything the two clients share, without I/O: checking the caller's input into the
server's own wire types (streams.schemas, so the client cannot drift from the api), the
HTTP call of each operation, reading its answer or error, and when to try again.

`Client` (sync.py) and `AsyncClient` (aio.py) only move bytes: each sends a `Call` and
hands the answer to `Attempts`, which says "done", "wait this long and repeat" or raises.
"""

from __future__ import annotations

import email.utils
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vestnik.client.errors import BY_STATUS, BadRequest, Unavailable, VestnikError
from vestnik.streams import errors as server_errors
from vestnik.streams.config import Config
from vestnik.streams.configurator import etag
from vestnik.streams.forward import DeliveryList
from vestnik.streams.notifier import check_topic
from vestnik.streams.redis import redacted
from vestnik.streams.schemas import (
    Accepted,
    AlertSetting,
    ErrorBody,
    EventIn,
    NoticeIn,
    Op,
    Published,
    Queued,
    ResolveIn,
    SettingIn,
    SettingList,
    SettingPatch,
    Severity,
    TopicEvent,
    convert,
    decoder,
    json_encode,
)

T = TypeVar("T")
# `vn:topic:<t>` is trimmed to about this many entries (the api's VESTNIK_TOPIC_MAXLEN default)
TOPIC_MAXLEN: int = next(f.default for f in msgspec.structs.fields(Config)
                         if f.name == "topic_maxlen")


class NoticeOptions(TypedDict, total=False):
    """`send`'s optional fields: NoticeIn's (see docs/guide.md, "Sending notices")."""

    body: str
    severity: Severity
    recipients: list[str]
    dedup_key: str
    link: str
    data: dict[str, Any]
    entity: dict[str, str]  # {"topic": "vm", "id": "42"}
    channels: dict[str, Any]  # a channel map, as a setting's `channel`
    forward_after: float
    setting_id: str
    metric: dict[str, Any]
    id: str  # the notice's own id (a ULID is assigned when absent)
    created_at: int  # ms


class ResolveOptions(TypedDict, total=False):
    setting_id: str  # only this setting's incident (default: every setting of the alert)
    at: int  # ms (default: now)


# ---------------------------------------------------------------------- input


def checked(obj: Any, typ: type[T]) -> T:
    """`obj` (a dict or a Struct) as the api would decode it; BadRequest names the field."""
    if isinstance(obj, msgspec.Struct):
        obj = msgspec.to_builtins(obj)
    with translated():
        return convert(obj, typ)


def notice_in(alert: str, title: str, options: NoticeOptions) -> NoticeIn:
    return checked({"alert": alert, "title": title, **options}, NoticeIn)


def resolve_in(alert: str, dedup_key: str, options: ResolveOptions) -> ResolveIn:
    return checked({"alert": alert, "dedup_key": dedup_key, **options}, ResolveIn)


def event_in(topic: str, op: Op, id: str, data: dict[str, Any] | None) -> EventIn:
    with translated():
        check_topic(topic)
    return checked({"op": op, "id": id, "data": data, "src": "client"}, EventIn)


def topic_event(event: EventIn) -> TopicEvent:
    """The stream entry of an event published straight to Redis (what the api XADDs)."""
    return TopicEvent(op=event.op, id=event.id, data=event.data, src=event.src)


@contextmanager
def translated(redis_url: str | None = None) -> Iterator[None]:
    """The server code's errors (streams.errors, redis-py's) as the client's: the same
    field, and a Redis URL only without its password."""
    try:
        yield
    except server_errors.VestnikError as e:
        kind = BadRequest if e.status in (400, 413, 422) else BY_STATUS.get(e.status,
                                                                             VestnikError)
        raise kind(e.detail, code=e.code, field=e.field) from None
    except (RedisConnectionError, RedisTimeoutError, OSError) as e:
        where = redacted(redis_url) if redis_url else "redis"
        raise Unavailable(f"redis at {where} unavailable: {type(e).__name__}") from None


# ---------------------------------------------------------------------- calls


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and the type of its answer (None: no body). `repeatable`: safe to
    send again after a 503 or a connection error (the first may have done its work)."""

    method: str
    path: str
    answer: type[T] | None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    repeatable: bool = True

    def read(self, status: int, content: bytes) -> T:
        """The decoded answer of a 2xx, else the error the api's body describes."""
        if not 200 <= status < 300:
            raise error_of(status, content)
        if self.answer is None:
            return None  # type: ignore[return-value]
        try:
            return decoder(self.answer).decode(content)
        except msgspec.DecodeError as e:
            raise VestnikError(f"{self.method} {self.path}: unreadable answer: {e}",
                               status=status) from None


_error_body = msgspec.json.Decoder(ErrorBody)


def error_of(status: int, content: bytes) -> VestnikError:
    """The exception for an error answer: its class by status, the api's code, detail and
    field (`path`)."""
    try:
        body = _error_body.decode(content)
        detail, code, where = body.detail, body.error, body.path
    except msgspec.DecodeError:
        detail, code, where = f"HTTP {status}", "error", None
    return BY_STATUS.get(status, VestnikError)(detail, code=code, field=where, status=status)


def _id(value: str) -> str:
    return quote(value, safe="")


def _if_match(version: int | AlertSetting | None) -> dict[str, str]:
    if version is None:
        return {}
    if isinstance(version, AlertSetting):
        return {"If-Match": etag(version)}
    return {"If-Match": f'"{int(version)}"'}


def send(notice: NoticeIn, idempotency_key: str | None) -> Call[Accepted]:
    """Repeatable: the api answers a repeat of the key with the first notice's id, so a
    key is made up when the caller gave none."""
    key = idempotency_key or secrets.token_urlsafe(16)
    return Call("POST", "/api/v1/notices", Accepted, json_encode(notice),
                {"Idempotency-Key": key})


def resolve(body: ResolveIn) -> Call[Queued]:
    return Call("POST", "/api/v1/notices/resolve", Queued, json_encode(body), repeatable=False)


def publish(topic: str, event: EventIn) -> Call[Published]:
    return Call("POST", f"/api/v1/topics/{_id(topic)}/events", Published, json_encode(event),
                repeatable=False)


def deliveries(notice_id: str) -> Call[DeliveryList]:
    return Call("GET", f"/api/v1/notices/{_id(notice_id)}/deliveries", DeliveryList)


SETTINGS = "/api/v1/settings"


SettingBody = SettingIn | dict[str, Any]
PatchBody = SettingPatch | dict[str, Any]
Version = int | AlertSetting | None


def setting_create(body: SettingBody) -> Call[AlertSetting]:
    return Call("POST", SETTINGS, AlertSetting, json_encode(checked(body, SettingIn)),
                repeatable=False)


def setting_get(setting_id: str) -> Call[AlertSetting]:
    return Call("GET", f"{SETTINGS}/{_id(setting_id)}", AlertSetting)


def setting_list(name: str | None, cursor: str | None, limit: int | None
                 ) -> Call[SettingList]:
    params = {k: str(v) for k, v in (("name", name), ("cursor", cursor), ("limit", limit))
              if v is not None}
    return Call("GET", SETTINGS, SettingList, params=params)


def setting_replace(setting_id: str, body: SettingBody, version: Version
                    ) -> Call[AlertSetting]:
    # a repeat under If-Match would fail on the version the first one wrote
    return Call("PUT", f"{SETTINGS}/{_id(setting_id)}", AlertSetting,
                json_encode(checked(body, SettingIn)),
                _if_match(version), repeatable=version is None)


def setting_patch(setting_id: str, body: PatchBody, version: Version) -> Call[AlertSetting]:
    # PATCH sets the fields given: a repeat sets them again (not under If-Match: see PUT)
    return Call("PATCH", f"{SETTINGS}/{_id(setting_id)}", AlertSetting,
                json_encode(checked(body, SettingPatch)),
                _if_match(version), repeatable=version is None)


def setting_delete(setting_id: str, version: Version) -> Call[None]:
    # not repeatable: a repeat of a delete that went through answers 404
    return Call("DELETE", f"{SETTINGS}/{_id(setting_id)}", None, None, _if_match(version),
                repeatable=False)


# ---------------------------------------------------------------------- retries


@dataclass(frozen=True)
class Retries:
    """How hard a call tries: at most `attempts` sends and `budget` seconds of waiting in
    all. A 429 (refused before any work) is retried for every call; a 503 and a connection
    error only for a repeatable one. The wait is the answer's Retry-After, else `backoff`
    doubled each time."""

    attempts: int = 4
    budget: float = 30.0
    backoff: float = 0.25


DEFAULT_RETRIES = Retries()


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class Done(Generic[T]):
    value: T


class Attempts(Generic[T]):
    """The attempts of one call: after each answer or connection error, `Done`, a wait in
    seconds before the next send, or the error to raise. Bounded by `Retries`."""

    def __init__(self, call: Call[T], retries: Retries) -> None:
        self.call, self.retries = call, retries
        self.sent = 0
        self.waited = 0.0

    def answered(self, status: int, headers: Mapping[str, str], content: bytes
                 ) -> Done[T] | float:
        self.sent += 1
        if status == 429 or (status == 503 and self.call.repeatable):
            wait = self._next_wait(retry_after(headers.get("retry-after")))
            if wait is not None:
                return wait
        return Done(self.call.read(status, content))

    def failed(self, exc: Exception) -> float:
        """A connection error or timeout (the caller passes only those)."""
        self.sent += 1
        wait = self._next_wait(None) if self.call.repeatable else None
        if wait is None:
            raise Unavailable(f"{self.call.method} {self.call.path} failed after "
                              f"{self.sent} attempt(s): {type(exc).__name__}") from exc
        return wait

    def _next_wait(self, asked: float | None) -> float | None:
        r = self.retries
        if self.sent >= r.attempts:
            return None
        wait = asked if asked is not None else r.backoff * 2 ** (self.sent - 1)
        if self.waited + wait > r.budget:
            return None
        self.waited += wait
        return wait
