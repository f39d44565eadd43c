"""Alert settings: storage, optimistic concurrency and the `settings` topic event.

A setting lives in the hash `vn:settings` (id → JSON) and is indexed in two
sorted sets (all scores 0, ids ordered lexicographically, so paging is a
ZRANGEBYLEX after the last id seen): every id, and the ids of each alert name.

Every change is a compare-and-set in ONE Lua call: check that the stored JSON is
still the one the change was made from (by its SHA-1), write the hash, fix both
indexes and XADD the whole setting to topic `settings` (`op` create|update|delete,
`data` = the setting, also on delete). So a concurrent edit can never be lost, and
the topic never disagrees with the store. A caller's `If-Match` is checked against
the version read just before the CAS; when the CAS loses a race the change is
re-read and re-checked, so a stale `If-Match` gets 412 and a request without one
simply applies to the fresher version.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

import msgspec
from redis.asyncio import Redis

from vestnik.streams import lua
from vestnik.streams.egress import Egress
from vestnik.streams.errors import BadInput, BadRequest, Conflict, NotFound, PreconditionFailed
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import SETTINGS_TOPIC, Keys
from vestnik.streams.metrics import EVENTS_PUBLISHED
from vestnik.streams.schemas import (
    AlertSetting,
    ChannelMap,
    SettingIn,
    SettingList,
    SettingPatch,
    TopicEvent,
    decoder,
    json_encode,
    topic_fields,
)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
CAS_ATTEMPTS = 20
_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}\Z")

_decode_setting = decoder(AlertSetting).decode

# compare and set of one setting (its header names KEYS and ARGV)
_WRITE = lua.script("configurator/write.lua", TOPIC=SETTINGS_TOPIC)


def etag(setting: AlertSetting) -> str:
    return f'"{setting.version}"'


def parse_if_match(header: str | None) -> frozenset[int] | None:
    """`If-Match` → the versions it accepts; None when absent or `*` (unconditional).

    An entity tag that is not one of ours (`"abc"`, or a weak `W/"3"`: If-Match compares
    strongly, RFC 9110 13.1.1) matches nothing, so it yields 412.
    """
    if header is None or header.strip() == "*":
        return None
    out: set[int] = set()
    for tag in header.split(","):
        tag = tag.strip()
        if len(tag) > 2 and tag[0] == tag[-1] == '"' and tag[1:-1].isdigit():
            out.add(int(tag[1:-1]))
    return frozenset(out)


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        last = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        last = ""
    if not _ID_RE.match(last):
        raise BadRequest("cursor is not one returned as `next` by this API", field="cursor")
    return last


def check_urls(channel: ChannelMap, egress: Egress) -> None:
    """A `url` whose host is a literal address the egress policy refuses is bad input now
    (names resolve when sending: the forwarder refuses those then)."""
    for name, target in channel.targets.items():
        if target.url is None:
            continue
        try:
            host = urlsplit(target.url).hostname or ""
        except ValueError:
            continue  # the channel refuses it when sending, naming it
        why = egress.check_literal(host)
        if why is not None:
            raise BadInput(why, field=f"$.channel.{name}.url")


class SettingsStore:
    """CRUD of alert settings; every change is one atomic Lua call (see the module doc)."""

    def __init__(self, redis: Redis, keys: Keys, *, topic_maxlen: int, src: str = "api",
                 egress: Egress | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.topic_maxlen = topic_maxlen
        self.src = src
        self.egress = egress  # None: urls are not checked here (the demo's own settings)

    # reads ---------------------------------------------------------------------------
    async def get(self, sid: str) -> AlertSetting:
        return (await self._load(sid))[0]

    async def _load(self, sid: str) -> tuple[AlertSetting, str]:
        """The setting and the SHA-1 of its stored JSON (what a change is compared with)."""
        raw = await self.redis.hget(self.keys.settings, sid)
        if raw is None:
            raise NotFound(f"no alert setting with id `{sid}`", field="id")
        return _decode_setting(raw), hashlib.sha1(raw).hexdigest()

    async def list(self, name: str | None = None, cursor: str | None = None,
                   limit: int = DEFAULT_LIMIT) -> SettingList:
        """One page in id order (ids are ULIDs: creation order); `next` is null at the end."""
        index = self.keys.settings_ids if name is None else self.keys.settings_by_name(name)
        start = "-" if not cursor else "(" + decode_cursor(cursor)
        ids = await self.redis.zrangebylex(index, start, "+", start=0, num=limit + 1)
        more = len(ids) > limit
        ids = ids[:limit]
        items: list[AlertSetting] = []
        if ids:
            for raw in await self.redis.hmget(self.keys.settings, ids):
                if raw is not None:  # deleted between the two reads
                    items.append(_decode_setting(raw))
        nxt = encode_cursor(ids[-1].decode()) if more else None
        return SettingList(items=items, next=nxt)

    # writes --------------------------------------------------------------------------
    async def create(self, body: SettingIn) -> AlertSetting:
        self._check_urls(body.channel)
        now = now_ms()
        setting = AlertSetting(id=ulid(now), name=body.name, metric=body.metric,
                               channel=body.channel, enabled=body.enabled,
                               send_resolved=body.send_resolved,
                               resolve_after=body.resolve_after, version=1,
                               created_at=now, updated_at=now)
        await self._cas(setting, expected="", old_name=body.name, op="create")
        return setting

    async def replace(self, sid: str, body: SettingIn,
                      if_match: frozenset[int] | None = None) -> AlertSetting:
        self._check_urls(body.channel)
        return await self._update(sid, if_match, lambda cur: msgspec.structs.replace(
            cur, name=body.name, metric=body.metric, channel=body.channel,
            enabled=body.enabled, send_resolved=body.send_resolved,
            resolve_after=body.resolve_after))

    async def patch(self, sid: str, body: SettingPatch,
                    if_match: frozenset[int] | None = None) -> AlertSetting:
        changes: dict[str, Any] = {
            f: getattr(body, f) for f in ("name", "metric", "channel", "enabled",
                                          "send_resolved", "resolve_after")
            if getattr(body, f) is not None
        }
        if body.channel is not None:
            self._check_urls(body.channel)
        return await self._update(sid, if_match,
                                  lambda cur: msgspec.structs.replace(cur, **changes))

    async def delete(self, sid: str, if_match: frozenset[int] | None = None) -> AlertSetting:
        """Remove a setting; the `delete` event on topic `settings` carries its last state."""
        for _ in range(CAS_ATTEMPTS):
            cur, digest = await self._load(sid)
            self._check(cur, if_match)
            if await self._cas(cur, expected=digest, old_name=cur.name, op="delete"):
                return cur
        raise Conflict("the setting keeps changing; try again")

    # internals -----------------------------------------------------------------------
    async def _update(self, sid: str, if_match: frozenset[int] | None,
                      change: Any) -> AlertSetting:
        for _ in range(CAS_ATTEMPTS):
            cur, digest = await self._load(sid)
            self._check(cur, if_match)
            new = change(cur)
            new.version = cur.version + 1
            new.updated_at = max(now_ms(), cur.updated_at)
            if await self._cas(new, expected=digest, old_name=cur.name, op="update"):
                return new
        raise Conflict("the setting keeps changing; try again")

    def _check_urls(self, channel: ChannelMap) -> None:
        if self.egress is not None:  # None: the demo's own settings
            check_urls(channel, self.egress)

    @staticmethod
    def _check(cur: AlertSetting, if_match: frozenset[int] | None) -> None:
        if if_match is not None and cur.version not in if_match:
            raise PreconditionFailed(
                f"the setting is at version {cur.version} (ETag {etag(cur)}); "
                "read it again and retry", field="If-Match")

    async def _cas(self, setting: AlertSetting, *, expected: str, old_name: str,
                   op: str) -> bool:
        """Write (or delete) atomically if the stored JSON still has the digest `expected`.

        False: someone else wrote first (re-read and retry). Raises 404 when it is gone.
        """
        data = msgspec.to_builtins(setting)
        fields = topic_fields(TopicEvent(op=op, id=setting.id, data=data,  # type: ignore[arg-type]
                                         ts=setting.updated_at if op != "delete" else now_ms(),
                                         src=self.src))
        argv: list[Any] = [setting.id, expected, b"" if op == "delete" else json_encode(data),
                           self.topic_maxlen]
        for k, v in fields.items():
            argv += [k, v]
        keys = [self.keys.settings, self.keys.settings_ids, self.keys.topic(SETTINGS_TOPIC),
                self.keys.settings_by_name(old_name), self.keys.settings_by_name(setting.name),
                self.keys.topics]
        res = await _WRITE(keys=keys, args=argv, client=self.redis)
        if res[0] == 1:
            EVENTS_PUBLISHED.labels(SETTINGS_TOPIC, self.src).inc()
            return True
        if res[0] == -1:
            raise NotFound(f"no alert setting with id `{setting.id}`", field="id")
        if op == "create":
            raise Conflict(f"a setting with id `{setting.id}` already exists")
        return False  # lost a race: the caller re-reads, and `_check` decides on If-Match
