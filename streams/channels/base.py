"""The channel interface: what a message sender implements to be used by forward jobs.

A channel is built once per forwarder process (`create(settings, http)`), reused for every
message, and closed once (`aclose()`). `send` never raises for an expected failure: it
returns a SendResult saying whether the message went out, can never go out as it is
(`permanent`: a bad address, a refused payload — not retried) or may go out later
(`retry`: timeout, connection refused, 5xx, rate limit — retried with backoff).
An exception out of `send` is a bug: it is recorded and surfaces in the worker's log.
"""

from __future__ import annotations

import urllib.request
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

import httpx
import msgspec

from vestnik.streams.config import Config
from vestnik.streams.egress import Egress, EgressRefused, pinned_client
from vestnik.streams.schemas import ChannelTarget, Notice, User

Status = Literal["ok", "permanent", "retry"]


class SendResult(msgspec.Struct, frozen=True):
    """The outcome of one send: `ok`, `permanent` failure or `retry`able failure."""

    status: Status
    detail: str = ""
    # seconds the other side asked us to wait (Telegram `retry_after`, HTTP Retry-After)
    retry_after: float | None = None
    # the id the other side gave the message (Message-ID, Telegram message_id, Slack ts):
    # kept (`Keys.threads`) so a `resolved` message can reply to it
    ref: str | None = None

    @classmethod
    def sent(cls, detail: str = "", ref: str | None = None) -> SendResult:
        return cls("ok", detail, None, ref)

    @classmethod
    def permanent(cls, detail: str) -> SendResult:
        return cls("permanent", detail)

    @classmethod
    def retry(cls, detail: str, retry_after: float | None = None) -> SendResult:
        return cls("retry", detail, retry_after)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Channel(ABC):
    """One external channel (email, telegram, slack, webhook, or a plugin's).

    `name` is the key of the channel in a setting's `channel` map and the entry-point
    name in group `vestnik.channels`. `user_address` names the User field that holds a
    user's address on this channel (`email`, `telegram_chat_id`, `slack_user`), or None
    for a channel that only sends to targets named in the setting (a webhook URL).
    """

    name: ClassVar[str]
    user_address: ClassVar[str | None] = None

    @classmethod
    def create(cls, settings: Config, http: httpx.AsyncClient) -> Channel | None:
        """Build the channel from settings, or None when it is not configured (off).

        `http` is the forwarder's one shared client: use it instead of opening your own.
        """
        return cls()

    @abstractmethod
    async def send(self, notice: Notice, user: User | None, target: ChannelTarget
                   ) -> SendResult:
        """Send `notice` to `user` (a per-user forward) or, when `user` is None, to the
        user-independent target of the setting's channel entry (`target`, e.g.
        `chat_ids=(123,)` or `url="https://..."`). A plugin's own fields of the entry are
        in `target.extra`."""

    async def send_resolved(self, notice: Notice, user: User | None, target: ChannelTarget,
                            reply_to: str | None) -> SendResult:
        """Say that incident `notice` (status `resolved`) is over, as a reply to the firing
        message when the channel can thread (`reply_to`: the `ref` its send returned, or
        None). Default: `resolved_notice(notice)` sent as a new message."""
        return await self.send(resolved_notice(notice), user, target)

    async def send_digest(self, digest: Digest, user: User | None, target: ChannelTarget
                          ) -> SendResult:
        """Send several notices as one message. Default: `digest_notice(digest)` sent as
        one notice."""
        return await self.send(digest_notice(digest), user, target)

    async def aclose(self) -> None:
        """Release connections (the shared http client is closed by the registry)."""
        return None

    def shared_targets(self, target: ChannelTarget) -> list[tuple[str, ChannelTarget]]:
        """Split a channel entry into its user-independent sends: `(key, target)` pairs.

        Each pair is sent, retried and marked as sent on its own (the key is appended to
        the idempotency marker), so a failure to one chat never resends to another.
        Default: one send per `chat_ids` item, or one send to `url`; none otherwise.
        """
        if target.chat_ids:
            return [(str(c), msgspec.structs.replace(target, chat_ids=(c,)))
                    for c in target.chat_ids]
        if target.url:
            return [("", target)]
        return []


class Digest(msgspec.Struct, frozen=True, kw_only=True):
    """What one digest message lists: `notices` newest first (at most the policy's
    `limit`), `more` left out past it. `id` is stable for its user, channel and window."""

    id: str
    notices: list[Notice]
    more: int = 0


def duration_text(ms: int) -> str:
    """A duration for people: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h` (two units at most)."""
    s = max(0, ms) // 1000
    d, s = divmod(s, 86_400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d} d {h} h" if h else f"{d} d"
    if h:
        return f"{h} h {m} min" if m else f"{h} h"
    if m:
        return f"{m} min {s} s" if s else f"{m} min"
    return f"{s} s"


def fired_for(notice: Notice) -> str:
    """How long incident `notice` fired (created_at -> resolved_at), for its resolved message."""
    end = notice.resolved_at or notice.last_seen or notice.created_at
    return duration_text(end - notice.created_at) if notice.created_at else "an unknown time"


def resolved_notice(notice: Notice) -> Notice:
    """The short "resolved" message of an incident, as a notice a channel can send: the
    title prefixed, how long it fired as the body, the link kept."""
    return msgspec.structs.replace(notice, title=f"Resolved: {notice.title}",
                                   body=f"Fired for {fired_for(notice)}.", severity="info")


def utc_time(ms: int) -> str:
    """A notice's time as a digest lists it (`2026-12-04 18:15 UTC`)."""
    return datetime.fromtimestamp(max(0, ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def digest_lines(digest: Digest) -> list[str]:
    """One line per listed notice (`[severity] title - link`), then "and N more"."""
    lines = [f"[{n.severity}] {n.title}" + (f" - {n.link}" if n.link else "")
             for n in digest.notices]
    if digest.more:
        lines.append(f"and {digest.more} more")
    return lines


def digest_notice(digest: Digest) -> Notice:
    """A digest as one notice (for channels that send notices): the count as title, a line
    per notice as body, the ids in `data.digest`."""
    total = len(digest.notices) + digest.more
    first = digest.notices[0] if digest.notices else None
    return Notice(id=digest.id, alert=first.alert if first else "digest",
                  title=f"{total} notice{'s' if total != 1 else ''}",
                  severity=max((n.severity for n in digest.notices), key=_SEVERITY.index,
                               default="info"),
                  body="\n".join(digest_lines(digest)),
                  data={"digest": [n.id for n in digest.notices], "more": digest.more},
                  created_at=first.created_at if first else 0)


_SEVERITY = ("info", "warning", "critical")


# ------------------------------------------------------------------ HTTP helpers

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
HTTP_HEADERS = {"User-Agent": "vestnik", "Accept-Encoding": "identity"}
MAX_REPLY = 64 * 1024  # an answer is read for its status and a short detail: keep this much
DETAIL_BYTES = 200  # of an answer's body, recorded in /deliveries


class AnyResponse(Protocol):
    """What classify_http reads: an httpx.Response or an http1.HttpResponse."""

    @property
    def status_code(self) -> int: ...
    @property
    def content(self) -> bytes: ...
    @property
    def headers(self) -> Any: ...


def retry_after_of(resp: AnyResponse) -> float | None:
    raw = resp.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def classify_http(resp: AnyResponse, what: str) -> SendResult:
    """2xx sent; 408/409/425/429 and 5xx retry; any other 4xx can never succeed as it is."""
    code = resp.status_code
    if 200 <= code < 300:
        return SendResult.sent(f"{what}: {code}")
    text = resp.content[:DETAIL_BYTES].decode("utf-8", "replace")
    detail = f"{what}: HTTP {code} {text}".strip()
    if code >= 500 or code in RETRYABLE_STATUS:
        return SendResult.retry(detail, retry_after_of(resp))
    return SendResult.permanent(detail)


class ReplyTooLarge(ValueError):
    """A reply whose whole body is needed (an entity to hydrate) is over its cap."""


async def capped_request(http: httpx.AsyncClient, method: str, url: str, *,
                         limit: int = MAX_REPLY, whole: bool = False, **kw: Any
                         ) -> httpx.Response:
    """Send; the answer's body is read up to `limit` bytes (as sent: never inflated), the rest
    left unread, so a hostile endpoint cannot make us hold a huge reply. `whole`: a body
    longer than `limit` is ReplyTooLarge instead of cut (a cut entity is no entity)."""
    async with http.stream(method, url, **kw) as resp:
        keep, raw = (limit + 1 if whole else limit), bytearray()
        async for chunk in resp.aiter_raw():
            raw += chunk[:keep - len(raw)]
            if len(raw) >= keep:
                break
        if len(raw) > limit:
            raise ReplyTooLarge(f"the reply to {method} {url} is larger than {limit} bytes")
        headers = [(k, v) for k, v in resp.headers.multi_items()
                   if k not in ("content-encoding", "transfer-encoding", "content-length")]
        return httpx.Response(resp.status_code, headers=headers, content=bytes(raw),
                              request=resp.request)


async def capped_post(http: httpx.AsyncClient, url: str, **kw: Any) -> httpx.Response:
    """POST, the answer cut at MAX_REPLY bytes (read for its status and a short detail)."""
    return await capped_request(http, "POST", url, **kw)


async def post(http: httpx.AsyncClient, url: str, what: str, **kw: Any
               ) -> tuple[httpx.Response | None, SendResult]:
    """POST and classify; transport errors (refused, reset, timeouts) are retryable, a
    target the egress policy refuses or an unusable URL is permanent."""
    try:
        resp = await capped_post(http, url, **kw)
    except EgressRefused as e:
        return None, SendResult.permanent(f"{what}: {e}")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as e:
        return None, SendResult.permanent(f"{what}: bad url: {e}")
    except httpx.TimeoutException as e:
        return None, SendResult.retry(f"{what}: timeout ({type(e).__name__})")
    except httpx.TransportError as e:
        return None, SendResult.retry(f"{what}: {type(e).__name__}: {e}")
    return resp, classify_http(resp, what)


def proxied() -> bool:
    """Whether the environment names an HTTP proxy (only httpx's shared client uses it)."""
    return any(k in ("http", "https", "all") for k in urllib.request.getproxies())


class DataTargets:
    """POSTs to URLs that come from data (a setting's or notice's `url`): through the
    egress policy, connected to the address it checked. Behind a configured proxy the name
    is checked first and the proxy (the operator's) connects."""

    def __init__(self, settings: Config, shared: httpx.AsyncClient) -> None:
        self.egress = Egress.from_settings(settings)
        self.shared = shared
        self.proxied = proxied()
        self._pinned: httpx.AsyncClient | None = None

    async def post(self, url: str, what: str, **kw: Any
                   ) -> tuple[httpx.Response | None, SendResult]:
        if not self.proxied:
            if self._pinned is None:
                self._pinned = pinned_client(self.egress, timeout=HTTP_TIMEOUT,
                                             headers=HTTP_HEADERS)
            return await post(self._pinned, url, what, **kw)
        try:
            await self.egress.check_url(url)
        except EgressRefused as e:
            return None, SendResult.permanent(f"{what}: {e}")
        except OSError as e:  # DNS
            return None, SendResult.retry(f"{what}: {type(e).__name__}: {e}")
        return await post(self.shared, url, what, **kw)

    async def aclose(self) -> None:
        if self._pinned is not None:
            await self._pinned.aclose()
