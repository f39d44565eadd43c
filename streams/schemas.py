"""Wire types: what travels through Redis streams, HTTP bodies and SSE events.

Decode once at the edge into these Structs; inside, nothing passes raw dicts.
Stream entries are flat string fields (so `redis-cli XADD` works), decoded with
`msgspec.convert(strict=False)` after the JSON-valued fields are parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from vestnik.streams.errors import BadInput, from_validation
from vestnik.streams.ids import now_ms

T = TypeVar("T")

Op = Literal["create", "update", "delete"]
IncidentStatus = Literal["firing", "resolved"]
Severity = Literal["info", "warning", "critical"]
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*(?!\n)$"
# names that become Redis keys, log lines and headers (alert, dedup key, entity id): no CR,
# LF, NUL..., and bounded
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=_NO_CONTROL)]
EntityId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=_NO_CONTROL)]
DedupKey = Annotated[str, msgspec.Meta(max_length=1024, pattern=_NO_CONTROL)]
TopicName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,100}(?!\n)$")]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Body = Annotated[str, msgspec.Meta(max_length=65536)]
# Ids that can end up in a URL path, a header line or a log line: no control character
# (CR, LF, NUL...) in any of them, and a notice id from a small alphabet (ULIDs pass).
# (?!\n): Python's `$` also matches before a final LF; `\Z` would not port to the OpenAPI
# document's (ECMA) patterns
NOTICE_ID_RE = r"^[A-Za-z0-9._:~-]{1,128}(?!\n)$"
NoticeId = Annotated[str, msgspec.Meta(pattern=NOTICE_ID_RE)]
SafeId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=_NO_CONTROL)]

json_encode = msgspec.json.Encoder().encode
_json_decode_any = msgspec.json.Decoder().decode


class Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Base of everything a client sends: an unknown field is an error naming it."""


# --------------------------------------------------------------------------- topics


class TopicEvent(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One entry of `vn:topic:<t>`. `data` is the whole entity; absent on delete or thin events."""

    op: Op
    id: EntityId
    data: dict[str, Any] | None = None
    ts: int = 0
    src: str = ""


class EventIn(Strict):
    """Body of `POST /api/v1/topics/{topic}/events`."""

    op: Op
    id: EntityId
    data: dict[str, Any] | None = None
    src: str = "http"


class EntityEvent(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What a topic SSE subscriber receives: the event with its stream id and topic."""

    topic: str
    sid: str
    op: Op
    id: str
    data: dict[str, Any] | None = None
    ts: int = 0
    src: str = ""


class Snapshot(msgspec.Struct, kw_only=True):
    """`GET /api/v1/topics/{topic}`: every current entity and the stream id it reflects."""

    topic: str
    last_id: str
    items: dict[str, dict[str, Any]]


class Published(msgspec.Struct):
    sid: str


def _field_text(fields: dict[bytes, bytes], name: str) -> str | None:
    raw = fields.get(name.encode())
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise BadInput(f"field `{name}` is not UTF-8", field=f"$.{name}") from None


def _json_field(fields: dict[bytes, bytes], name: str) -> Any:
    raw = fields.get(name.encode())
    if raw is None or raw == b"":
        return None
    return _json_value(raw, name)


def _json_value(raw: bytes, name: str) -> Any:
    try:
        return _json_decode_any(raw)
    except msgspec.DecodeError as e:
        raise BadInput(f"field `{name}` is not valid JSON: {e}", field=f"$.{name}") from None
    except RecursionError:  # thousands of nested arrays: msgspec recurses per level
        raise BadInput(f"field `{name}` is nested too deeply", field=f"$.{name}") from None


def decode_topic_entry(fields: dict[bytes, bytes]) -> TopicEvent:
    """Decode a flat topic stream entry; raises BadInput naming the field."""
    obj: dict[str, Any] = {}
    for name in ("op", "id", "src"):
        value = _field_text(fields, name)
        if value is not None:
            obj[name] = value
    ts = _field_text(fields, "ts")
    if ts is not None:
        obj["ts"] = ts
    data = _json_field(fields, "data")
    if data is not None:
        obj["data"] = data
    return convert(obj, TopicEvent)


def topic_fields(ev: TopicEvent) -> dict[str, str | bytes]:
    """Flat fields for XADD of a topic event (the inverse of decode_topic_entry)."""
    out: dict[str, str | bytes] = {"op": ev.op, "id": ev.id, "ts": str(ev.ts or now_ms())}
    if ev.data is not None:
        out["data"] = json_encode(ev.data)
    if ev.src:
        out["src"] = ev.src
    return out


# ------------------------------------------------------------------------ channels

IN_APP = "ui"  # the channel map's in-app entry: who gets the notice in their feed
_FORWARD_AFTER = "forward_after"  # the one key of a channel map that names no channel
_TARGET_FIELDS = frozenset({"users", "chat_ids", "url", "secret", "after", "digest"})


class DigestPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`digest` of a channel entry (or of a user's `prefs.digest.<channel>`): the notices
    due on the channel within `window` seconds go as one message, listing at most `limit`
    of them (newest first) and "and N more"."""

    window: Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20


class ChannelTarget(msgspec.Struct, frozen=True, kw_only=True):
    """One channel's entry in a channel map (`"email": {"users": ["1"]}`): whom it names
    (`users`; UNSET, left out: every recipient of the notice) and its user-independent targets
    (Telegram `chat_ids`, a webhook's or Slack's `url` and `secret`). A plugin channel's own
    fields are kept as given in `extra`, for its channel class."""

    users: tuple[str, ...] | UnsetType = UNSET
    chat_ids: tuple[int | str, ...] = ()
    url: str | None = None
    secret: str | None = None
    # seconds after the notice's creation this channel sends (escalation: telegram now,
    # email in 15 minutes if still unread); None: the map's `forward_after`
    after: Annotated[float, msgspec.Meta(ge=0)] | None = None
    digest: DigestPolicy | None = None
    extra: dict[str, Any] = {}

    def names(self, uid: str) -> bool:
        """Whether the entry reaches user `uid` (an entry without `users` reaches all)."""
        return self.users is UNSET or uid in self.users

    @property
    def shared(self) -> bool:
        """Whether it has user-independent targets (the `*` forward sends to them): chat
        ids, a url, or a plugin's list of `urls` (the apprise channel's)."""
        return bool(self.chat_ids or self.url or self.extra.get("urls"))

    def wire(self) -> dict[str, Any]:
        """The entry as stored and returned (what `ChannelMap.decode` reads)."""
        out: dict[str, Any] = {}
        if self.users is not UNSET:
            out["users"] = list(self.users)
        if self.chat_ids:
            out["chat_ids"] = list(self.chat_ids)
        if self.url is not None:
            out["url"] = self.url
        if self.secret is not None:
            out["secret"] = self.secret
        if self.after is not None:
            out["after"] = self.after
        if self.digest is not None:
            out["digest"] = msgspec.to_builtins(self.digest)
        out.update(self.extra)
        return out


def _decode_target(name: str, value: dict[str, Any]) -> tuple[dict[str, Any], ChannelTarget]:
    """An entry's wire form (user ids as strings) and its Struct; ValueError names the path."""
    if not value:  # `{}`: every recipient, no target of its own (the common entry)
        return value, _EVERYONE
    users = value.get("users")
    if isinstance(users, list):  # ints are user ids too: users: [1, 2] means ["1", "2"]
        value = {**value, "users": [str(u) if isinstance(u, int) else u for u in users]}
    known = value
    if not value.keys() <= _TARGET_FIELDS:
        known = {k: v for k, v in value.items() if k in _TARGET_FIELDS}
        known["extra"] = {k: v for k, v in value.items() if k not in _TARGET_FIELDS}
    try:
        return value, msgspec.convert(known, ChannelTarget)
    except msgspec.ValidationError as e:
        # msgspec's path is the entry's (`$.users[0]`); the map's is `$.<name>.users[0]`
        text, _, path = str(e).rpartition(" - at `$")
        raise ValueError(f"{text} - at `$.{name}{path}") from None


class ChannelMap(dict[str, Any]):
    """A setting's `channel` (a notice's `channels`): each channel's entry by name (`ui` is
    the in-app feed, every other name an external channel, plugins' included) and
    `forward_after` (seconds). Read it through `targets` (Structs) and `forward_after`.

    Its wire format is one JSON object whose keys are channel names (open: plugins add
    them) next to the number `forward_after`, which a Struct's fixed fields cannot say. So
    it is a read-only dict holding that object, normalized (user ids as strings): every
    msgspec encoder writes it as it always was, at no cost, and `decode` (this module's
    `dec_hook`: `decoder`, `decode_json`, `convert`) checks it and types it, once, at the
    edge.
    """

    __slots__ = ("_external", "forward_after", "grouped", "shared", "targets")

    targets: Mapping[str, ChannelTarget]  # read-only, as the map
    forward_after: float | None
    shared: bool  # whether an entry has user-independent targets (the `*` forward's)
    grouped: bool  # whether an external entry has an `after` of its own (its own job)

    def __init__(self, targets: Mapping[str, ChannelTarget] | None = None,
                 forward_after: float | None = None) -> None:
        wire: dict[str, Any] = {name: t.wire() for name, t in (targets or {}).items()}
        if forward_after is not None:
            wire[_FORWARD_AFTER] = forward_after
        super().__init__(wire)
        self._typed(dict(targets or {}), forward_after)

    def _typed(self, targets: dict[str, ChannelTarget], forward_after: float | None) -> None:
        self.targets, self.forward_after = targets, forward_after
        # asked for every recipient of every notice: once
        ext = targets if IN_APP not in targets else \
            {name: t for name, t in targets.items() if name != IN_APP}
        self._external = tuple(ext.items())
        self.shared = any(t.shared for t in ext.values())
        self.grouped = any(t.after is not None for t in ext.values())

    @classmethod
    def decode(cls, obj: Any) -> ChannelMap:
        """A channel map from its JSON value. ValueError names the path under the map
        (`$.email.users[0]`): msgspec puts the map's own path (`$.channel`) after it."""
        if isinstance(obj, ChannelMap):
            return obj
        if not isinstance(obj, dict):
            raise ValueError(f"Expected `object`, got `{_json_type(obj)}`")
        if not obj:
            return NO_CHANNELS
        wire: dict[str, Any] = {}
        targets: dict[str, ChannelTarget] = {}
        after: float | None = None
        for name, value in obj.items():
            if name == _FORWARD_AFTER:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError("forward_after must be a number of seconds >= 0"
                                     " - at `$.forward_after`")
                wire[name] = after = value
            elif isinstance(value, dict):
                wire[name], targets[name] = _decode_target(name, value)
            else:
                raise ValueError(f"channel `{name}` must be an object such as "
                                 f"{{\"users\": [\"1\"]}} - at `$.{name}`")
        out = dict.__new__(cls)
        dict.__init__(out, wire)
        out._typed(targets, after)
        return out

    def external(self) -> tuple[tuple[str, ChannelTarget], ...]:
        """The entries of external channels (every one but the in-app `ui`), in order."""
        return self._external

    def users(self) -> list[str]:
        """Every user an entry names (ui, email, ...), in order, once."""
        seen: dict[str, None] = {}
        for target in self.targets.values():
            if target.users is not UNSET:
                seen.update(dict.fromkeys(target.users))
        return list(seen)

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a ChannelMap is read-only: build another one")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChannelMap.decode, (dict(self),))

    def __repr__(self) -> str:
        return f"ChannelMap({dict.__repr__(self)})"


_EVERYONE = ChannelTarget()

# The empty map, shared: a default that Notice (omit_defaults) leaves out when encoding (by
# identity), as it left out an empty dict
NO_CHANNELS = ChannelMap()

_JSON_TYPES = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str",
               list: "array", dict: "object"}


def _json_type(obj: Any) -> str:
    return _JSON_TYPES.get(type(obj), type(obj).__name__)


def dec_hook(typ: type, obj: Any) -> Any:
    """msgspec's dec_hook for the types of this module that are no Struct (ChannelMap):
    modules that build their own decoders of these types pass it."""
    if typ is ChannelMap:
        return ChannelMap.decode(obj)
    raise NotImplementedError(f"cannot decode {typ!r}")


_TARGET_SCHEMA = {"type": "object", "properties": {
    "users": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
              "description": "user ids (absent: every recipient)"},
    "chat_ids": {"type": "array", "items": {"anyOf": [{"type": "integer"},
                                                      {"type": "string"}]}},
    "url": {"type": "string"}, "secret": {"type": "string"},
    "after": {"type": "number", "minimum": 0,
              "description": "seconds after creation this channel sends (default: forward_after)"},
    "digest": {"type": "object", "required": ["window"], "properties": {
        "window": {"type": "number", "exclusiveMinimum": 0, "maximum": 604800},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100}}}}}


def schema_hook(typ: type) -> dict[str, Any]:
    """The JSON schema of a channel map, for the OpenAPI document."""
    if typ is ChannelMap:
        return {"type": "object", "additionalProperties": _TARGET_SCHEMA,
                "properties": {_FORWARD_AFTER: {"type": "number", "minimum": 0}}}
    raise NotImplementedError(f"no schema for {typ!r}")


# ------------------------------------------------------------------------ settings


class AlertSetting(msgspec.Struct, kw_only=True):
    """An alert setting as stored and returned. `version` backs the ETag."""

    id: str
    name: str
    metric: dict[str, Any] = {}
    channel: ChannelMap = NO_CHANNELS
    enabled: bool = True
    # incidents (notices with a dedup_key): a "resolved" message to every channel that got
    # the firing one; resolved by itself after this many seconds without a repeat
    send_resolved: bool = False
    resolve_after: float | None = None
    version: int = 1
    created_at: int = 0
    updated_at: int = 0


AlertName = Annotated[str, msgspec.Meta(min_length=1, max_length=200,
                                         pattern=r"^[\w.:-]+(?!\n)$")]


ResolveAfter = Annotated[float, msgspec.Meta(gt=0, le=365 * 86_400)]


class SettingIn(Strict):
    """Body of POST and PUT /settings."""

    name: AlertName
    metric: dict[str, Any] = {}
    channel: ChannelMap = NO_CHANNELS
    enabled: bool = True
    send_resolved: bool = False
    resolve_after: ResolveAfter | None = None


class SettingPatch(Strict):
    """Body of PATCH /settings/{id}: only the fields given change."""

    name: AlertName | None = None
    metric: dict[str, Any] | None = None
    channel: ChannelMap | None = None
    enabled: bool | None = None
    send_resolved: bool | None = None
    resolve_after: ResolveAfter | None = None


class SettingList(msgspec.Struct):
    items: list[AlertSetting]
    next: str | None = None


# ------------------------------------------------------------------------- notices


class EntityRef(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    id: SafeId


class EntityRefIn(EntityRef, forbid_unknown_fields=True):
    """What a sender names (checked at the edge; stored bodies stay readable as they are)."""

    topic: TopicName


class Notice(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A notice as stored once and shared by its recipients' feeds."""

    id: str
    alert: str
    title: Title
    severity: Severity = "info"
    body: Body = ""
    link: str | None = None
    setting_id: str | None = None
    entity: EntityRef | None = None
    metric: dict[str, Any] = {}
    data: dict[str, Any] = {}
    recipients: list[str] = []
    channels: ChannelMap = NO_CHANNELS
    dedup_key: str | None = None
    forward_after: Annotated[float, msgspec.Meta(ge=0)] | None = None
    # an incident (a notice with a dedup_key) is "firing" until resolved; other notices
    # have no status. Before created_at: fold.lua rewrites the body's tail (created_at,
    # repeat, last_seen), so fields after it would be lost
    status: IncidentStatus | None = None
    resolved_at: int = 0
    silenced: bool = False  # a silence matched it: stored, neither pushed live nor forwarded
    created_at: int = 0
    repeat: int = 0
    last_seen: int = 0


# What a notice's recipients must not see of it: the other recipients, and the alert's
# channel map (user ids, chat ids, webhook URLs that are secrets).
PRIVATE_NOTICE_FIELDS = ("recipients", "channels")
_PRIVATE_DEFAULTS = {f.name: f.default_factory() if f.default is msgspec.NODEFAULT else f.default
                     for f in msgspec.structs.fields(Notice) if f.name in PRIVATE_NOTICE_FIELDS}


def public_json(notice: Notice) -> bytes:
    """`notice_view` of a Notice in hand, without a decode: the private fields set to their
    defaults, which Notice (omit_defaults) leaves out (webhook bodies, the store's views)."""
    return json_encode(msgspec.structs.replace(notice, **_PRIVATE_DEFAULTS))


def notice_view(body: bytes) -> bytes:
    """A stored notice's JSON as its recipients see it (feed items, live pushes)."""
    obj = _json_decode_any(body)
    for name in PRIVATE_NOTICE_FIELDS:
        obj.pop(name, None)
    return json_encode(obj)


class NoticeIn(Strict):
    """Body of `POST /api/v1/notices` (and `vestnik send`): id and created_at are optional."""

    alert: NonEmpty
    title: Title
    severity: Severity = "info"
    body: Body = ""
    id: NoticeId | None = None
    link: str | None = None
    setting_id: SafeId | None = None
    entity: EntityRefIn | None = None
    metric: dict[str, Any] = {}
    data: dict[str, Any] = {}
    recipients: list[SafeId] | None = None
    channels: ChannelMap = NO_CHANNELS
    dedup_key: DedupKey | None = None
    forward_after: Annotated[float, msgspec.Meta(ge=0)] | None = None
    created_at: int | None = None


class Accepted(msgspec.Struct):
    """Answer to `POST /api/v1/notices`: the notice's id."""

    id: str


class Queued(msgspec.Struct):
    """Answer to `POST /api/v1/notices/resolve`: the entry's id on `vn:notices`."""

    sid: str


# What a sender says in a notice (not what the center derives: created_at, recipients
# from settings, channels, metric, repeat): a caller-chosen id that exists with other
# content is refused.
_CONTENT_FIELDS = ("alert", "title", "body", "severity", "link", "entity", "data", "dedup_key")


def same_content(sent: NoticeIn, other: NoticeIn | Notice) -> bool:
    """Whether `sent` says what `other` (the notice already under its id) says: a retry.
    A `setting_id` left out matches the one the center chose."""
    if sent.setting_id is not None and sent.setting_id != other.setting_id:
        return False
    # its own recipients are what it says too: else a reused id for other users is a 202
    # that nobody gets (compared as sets: a retry may list them in another order)
    if sent.recipients is not None and set(sent.recipients) != set(other.recipients or ()):
        return False
    return all(_value(getattr(sent, f)) == _value(getattr(other, f)) for f in _CONTENT_FIELDS)


def _value(v: Any) -> Any:
    """An entity as (topic, id): the sent one is an EntityRefIn, the stored one an
    EntityRef, and Structs of two classes never compare equal (a retry was a conflict)."""
    return (v.topic, v.id) if isinstance(v, EntityRef) else v


def check_recipients(notice: NoticeIn, limit: int) -> None:
    """A notice's own recipient list is capped (`max_recipients`); recipients that come
    from settings are not. Raises BadInput naming `$.recipients`."""
    if notice.recipients is not None and len(notice.recipients) > limit:
        raise BadInput(f"recipients: {len(notice.recipients)} ids, more than the limit of "
                       f"{limit} (VESTNIK_MAX_RECIPIENTS)", field="$.recipients")


class User(msgspec.Struct, kw_only=True):
    """A recipient: an entity of topic `user`."""

    id: str
    name: str = ""
    email: str | None = None
    telegram_chat_id: int | str | None = None
    slack_user: str | None = None
    apprise_urls: list[str] | None = None
    locale: str = "en"
    # mute, per-channel switches, quiet hours, per-channel digests: streams.forward.policy
    prefs: dict[str, Any] = {}
    # what `POST /me/snooze` set (alert name or "*" -> until, ms): filled in from
    # `Keys.snooze(uid)` by whoever loads the user for a forward, never from the record
    snooze: dict[str, int] = {}

    def mutes(self, alert: str) -> bool:
        """Whether the user muted `alert` (`prefs: {"mute": ["disk"]}`)."""
        mute = self.prefs.get("mute")
        return isinstance(mute, list) and alert in mute


class ResolveIn(Strict):
    """Resolve an incident (`POST /api/v1/notices/resolve`; on `vn:notices` an entry with
    `op resolve`): the firing notice of `alert` with `dedup_key` (scoped like the notice:
    by `setting_id` when given, else every setting of the alert and none)."""

    alert: NonEmpty
    dedup_key: Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=_NO_CONTROL)]
    setting_id: SafeId | None = None
    # ms (default: when the center reads it); bounded, so a hostile one cannot overflow
    at: Annotated[int, msgspec.Meta(gt=0, le=2**53)] | None = None


class SnoozeIn(Strict):
    """Body of `POST /api/v1/me/snooze`: hold the caller's external forwards (of one alert,
    or all) until `until` (ms)."""

    until: Annotated[int, msgspec.Meta(gt=0)]
    alert: NonEmpty | None = None


class SilenceMatchers(Strict):
    """What a silence matches: every field given must equal the notice's."""

    alert: NonEmpty | None = None
    entity_topic: TopicName | None = None
    entity_id: EntityId | None = None
    severity: Severity | None = None


class SilenceIn(Strict):
    """Body of `POST /api/v1/silences` (times in ms; `starts_at` default now)."""

    matchers: SilenceMatchers
    ends_at: Annotated[int, msgspec.Meta(gt=0)]
    starts_at: int | None = None
    comment: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    created_by: Annotated[str, msgspec.Meta(max_length=200, pattern=_NO_CONTROL)] = ""


SilenceState = Literal["active", "pending", "expired"]


class Silence(msgspec.Struct, kw_only=True):
    """A silence as stored and returned. `state` is set when it is returned (from its times
    and the time of the answer: `pending` before `starts_at`, `expired` from `ends_at`),
    never stored."""

    id: str
    matchers: SilenceMatchers
    starts_at: int
    ends_at: int
    comment: str = ""
    created_by: str = ""
    created_at: int = 0
    state: SilenceState | None = None


class SilenceList(msgspec.Struct):
    """`GET /api/v1/silences`: active ones first (ending soonest first), then pending ones
    (starting soonest first), then expired ones (most recently ended first)."""

    items: list[Silence]


class SnoozeList(msgspec.Struct):
    """A user's running snoozes: alert name (or "*": every alert) -> until, ms."""

    items: dict[str, int]


def decode_user(uid: str, raw: bytes) -> User | str:
    """A user record of the `user` topic state, or why it cannot be used. The hash field is
    the id (entities often carry a numeric `id`); scalars are coerced. A `snooze` in the
    record is dropped, whatever it holds: only `POST /me/snooze` sets one (`User.snooze`)."""
    try:
        obj = _json_decode_any(raw)
        if not isinstance(obj, dict):
            return f"unreadable record of user {uid}: not a JSON object"
        obj["id"] = uid
        obj.pop("snooze", None)
        return msgspec.convert(obj, User, strict=False)
    except msgspec.DecodeError as e:  # ValidationError included
        return f"unreadable record of user {uid}: {e}"
    except RecursionError:
        return f"unreadable record of user {uid}: nested too deeply"


# -------------------------------------------------------------------------- errors


class ErrorBody(msgspec.Struct):
    """Every HTTP error: a stable code, a human detail and the JSON path of the bad field."""

    error: str
    detail: str
    path: str | None = None


# ------------------------------------------------------------------------- helpers


def convert(obj: Any, typ: type[T]) -> T:
    """msgspec.convert with string coercion; raises BadInput naming the field."""
    try:
        return msgspec.convert(obj, typ, strict=False, dec_hook=dec_hook)
    except msgspec.ValidationError as e:
        raise from_validation(e) from None


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decoder(typ: type[T]) -> msgspec.json.Decoder[T]:
    """The one JSON decoder of `typ`, built with the hooks (stored records: a bad one raises
    msgspec's DecodeError, for the caller to skip or log)."""
    dec = _decoders.get(typ)
    if dec is None:
        dec = _decoders[typ] = msgspec.json.Decoder(typ, dec_hook=dec_hook)
    return dec


def decode_json(raw: bytes | str, typ: type[T]) -> T:
    """Decode a JSON body into `typ`; raises BadInput naming the field."""
    try:
        return decoder(typ).decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise from_validation(e) from None


# ---------------------------------------------------------------- notice stream codec

_NOTICE_JSON_FIELDS = ("metric", "data", "entity", "channels")
_NOTICE_TEXT_FIELDS = ("id", "alert", "title", "severity", "body", "link", "setting_id",
                       "dedup_key", "forward_after", "created_at")
_NOTICE_FIELDS = {*_NOTICE_JSON_FIELDS, *_NOTICE_TEXT_FIELDS, "recipients"}
_NOTICE_FIELD_BYTES = frozenset(n.encode() for n in _NOTICE_FIELDS)
_TEXT_BYTES = {n.encode(): n for n in _NOTICE_TEXT_FIELDS}
_JSON_BYTES = {n.encode(): n for n in _NOTICE_JSON_FIELDS}


def decode_notice_entry(fields: dict[bytes, bytes]) -> NoticeIn:
    """Decode a flat `vn:notices` entry (as sent with redis-cli) into NoticeIn.

    Scalars are strings; `recipients` is a JSON array or comma-separated ids;
    `metric`, `data`, `entity` and `channels` are JSON objects. Raises BadInput
    naming the field; an unknown field is refused like over HTTP.
    """
    if not fields.keys() <= _NOTICE_FIELD_BYTES:
        for raw_name in fields:
            if raw_name not in _NOTICE_FIELD_BYTES:
                name = raw_name.decode(errors="replace")
                raise BadInput(f"unknown field `{name}`", field=f"$.{name}")
    obj: dict[str, Any] = {}
    for raw_name, raw in fields.items():  # one pass: this runs for every notice
        if (name := _TEXT_BYTES.get(raw_name)) is not None:
            try:
                obj[name] = raw.decode()
            except UnicodeDecodeError:
                raise BadInput(f"field `{name}` is not UTF-8", field=f"$.{name}") from None
        elif (name := _JSON_BYTES.get(raw_name)) is not None:
            if raw:
                known = _known_maps.get(raw) if name == "channels" else None
                obj[name] = known if known is not None else _json_value(raw, name)
    recipients = _field_text(fields, "recipients")
    if recipients is not None:
        text = recipients.strip()
        if text.startswith("["):
            parsed = _json_field(fields, "recipients")
            if not isinstance(parsed, list):
                raise BadInput("recipients must be a JSON array or comma-separated ids",
                               field="$.recipients")
            obj["recipients"] = [str(r) if isinstance(r, int) else r for r in parsed]
        else:
            obj["recipients"] = [r.strip() for r in text.split(",") if r.strip()]
    notice = convert(obj, NoticeIn)
    raw = fields.get(b"channels")
    if raw and len(raw) <= _KNOWN_MAP_BYTES and raw not in _known_maps:
        if len(_known_maps) >= _KNOWN_MAPS:
            _known_maps.clear()
        _known_maps[raw] = notice.channels
    return notice


# Channel maps decoded from entries, by their JSON: the notices of one setting (a wrapper's,
# a product's) carry the same map, and a ChannelMap is immutable, so one decode serves them
# all. Bounded: at most _KNOWN_MAPS maps of at most _KNOWN_MAP_BYTES each.
_KNOWN_MAPS = 1024
_KNOWN_MAP_BYTES = 1024
_known_maps: dict[bytes, ChannelMap] = {}


def notice_fields(notice: NoticeIn | Notice) -> dict[str, str | bytes]:
    """Flat fields for XADD to `vn:notices` (the inverse of decode_notice_entry)."""
    out: dict[str, str | bytes] = {}
    for name in _NOTICE_TEXT_FIELDS:
        value = getattr(notice, name, None)
        if value is not None and value != "":
            out[name] = str(value)
    for name in _NOTICE_JSON_FIELDS:
        value = getattr(notice, name, None)
        if value:
            out[name] = json_encode(value)
    if notice.recipients:
        out["recipients"] = json_encode(notice.recipients)
    return out


_RESOLVE_FIELDS = {n.encode(): n for n in ("op", "alert", "dedup_key", "setting_id", "at")}
RESOLVE_OP = "resolve"


def decode_center_entry(fields: dict[bytes, bytes]) -> NoticeIn | ResolveIn:
    """Decode a `vn:notices` entry: a notice (no `op` field) or the resolve of an incident
    (`op resolve alert <name> dedup_key <key> [setting_id <id>] [at <ms>]`). Any other `op`
    is refused naming `$.op`; raises BadInput naming the field, like a notice."""
    op = fields.get(b"op")
    if op is None:  # a notice: one lookup more than before on the hot path
        return decode_notice_entry(fields)
    if op != RESOLVE_OP.encode():
        shown = op[:40].decode(errors="replace")
        raise BadInput(f"`op` must be absent (a notice) or `resolve`, not {shown!r}",
                       field="$.op")
    obj: dict[str, Any] = {}
    for raw_name in fields:
        name = _RESOLVE_FIELDS.get(raw_name)
        if name is None:
            shown = raw_name[:100].decode(errors="replace")
            raise BadInput(f"unknown field `{shown}` of a resolve", field=f"$.{shown}")
        if name != "op":
            obj[name] = _field_text(fields, name)
    return convert(obj, ResolveIn)


def resolve_fields(resolve: ResolveIn) -> dict[str, str]:
    """Flat fields for XADD of a resolve to `vn:notices` (the inverse of
    decode_center_entry)."""
    out = {"op": RESOLVE_OP, "alert": resolve.alert, "dedup_key": resolve.dedup_key}
    if resolve.setting_id is not None:
        out["setting_id"] = resolve.setting_id
    if resolve.at is not None:
        out["at"] = str(resolve.at)
    return out


# Live messages ---------------------------------------------------------------------------
# What goes on a user's live channel (`Keys.live`): a msgpack array, its tag first, in the
# layouts below. The store and inbox scripts pack them with cmsgpack (store_user.lua,
# mark.lua, read_all.lua), Python with `encode_live`; the user hub decodes each once
# (`decode_live`) and `live_event` makes the SSE event: the one encoder of live payloads
# (no JSON is built in Lua).


class ReadChange(msgspec.Struct, omit_defaults=True):
    """The data of a `read` event: these notices' read state changed."""

    ids: list[str]
    read: bool
    count: int  # the user's unread count after the change
    archived: bool = False


class LiveNotice(msgspec.Struct, array_like=True, tag="notice"):
    """A new feed entry: its seq and the notice as its recipients see it (`notice_view`)."""

    seq: int
    view: str


class LiveUpdate(msgspec.Struct, array_like=True, tag="notice-update"):
    """A dedup repeat was folded into a notice: its new view."""

    view: str


class LiveRead(msgspec.Struct, array_like=True, tag="read"):
    """Read state changed (`['read', {ids, read, count, archived?}]`)."""

    data: ReadChange


LiveMsg = LiveNotice | LiveUpdate | LiveRead
encode_live = msgspec.msgpack.Encoder().encode
decode_live = msgspec.msgpack.Decoder(LiveMsg).decode


def feed_item(view: bytes, seq: int, read: bool, archived: bool) -> bytes:
    """A feed item (a page, the SSE backlog, a live `notice`): the notice's view with the
    user's seq and state appended (spliced in: the view is never decoded again)."""
    return (view[:-1] + b',"seq":' + str(seq).encode() + b',"read":'
            + (b"true" if read else b"false") + b',"archived":'
            + (b"true" if archived else b"false") + b"}")


def live_event(msg: LiveMsg) -> tuple[str, bytes, int]:
    """The SSE event of a live message: its name, its JSON data, its seq (0: no event id)."""
    if isinstance(msg, LiveNotice):
        return "notice", feed_item(msg.view.encode(), msg.seq, False, False), msg.seq
    if isinstance(msg, LiveUpdate):
        return "notice-update", msg.view.encode(), 0
    return "read", json_encode(msg.data), 0


# ------------------------------------------------------------ sources: Alertmanager
# Prometheus Alertmanager's webhook payload, version 4 (`POST /api/v1/sources/alertmanager`,
# app/sources.py). Not Strict: fields a newer Alertmanager adds are ignored, not refused.
# The payload is decoded with `alerts` left raw, then each alert on its own, so one bad
# alert is skipped (named by its path) while the others of the payload go on.

ALERTMANAGER_VERSION = "4"
MAX_ALERTS = 1000  # alerts per payload (Alertmanager's `max_alerts` keeps it below)
_LabelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=_NO_CONTROL)]
_LabelValue = Annotated[str, msgspec.Meta(max_length=4096)]
_AnnotationValue = Annotated[str, msgspec.Meta(max_length=65536)]
AlertLabels = Annotated[dict[_LabelName, _LabelValue], msgspec.Meta(max_length=100)]
AlertAnnotations = Annotated[dict[_LabelName, _AnnotationValue], msgspec.Meta(max_length=100)]
# Alertmanager's fingerprint: 16 hex digits (a little room for other senders)
Fingerprint = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Fa-f]{1,64}(?!\n)$")]


class AlertmanagerAlert(msgspec.Struct, kw_only=True):
    """One alert of the payload; its labels and annotations as Prometheus gave them."""

    status: IncidentStatus
    labels: AlertLabels
    fingerprint: Fingerprint
    starts_at: datetime = msgspec.field(name="startsAt")
    annotations: AlertAnnotations = {}
    ends_at: datetime | None = msgspec.field(name="endsAt", default=None)
    generator_url: Annotated[str, msgspec.Meta(max_length=4096)] = msgspec.field(
        name="generatorURL", default="")


class AlertmanagerPayload(msgspec.Struct, kw_only=True):
    """The webhook body. `alerts` stay raw JSON here: `AlertmanagerAlert` decodes each."""

    version: str
    alerts: Annotated[list[msgspec.Raw], msgspec.Meta(
        max_length=MAX_ALERTS, description="each an AlertmanagerAlert (status, labels, "
        "annotations, startsAt, endsAt, generatorURL, fingerprint)")]
    status: IncidentStatus | None = None
    receiver: str = ""
    group_key: str = msgspec.field(name="groupKey", default="")
    truncated_alerts: int = msgspec.field(name="truncatedAlerts", default=0)
    group_labels: dict[str, str] = msgspec.field(name="groupLabels", default_factory=dict)
    common_labels: dict[str, str] = msgspec.field(name="commonLabels", default_factory=dict)
    common_annotations: dict[str, str] = msgspec.field(name="commonAnnotations",
                                                       default_factory=dict)
    external_url: str = msgspec.field(name="externalURL", default="")


class SkippedAlert(msgspec.Struct):
    """An alert of the payload that was not taken, and why (`path`: its bad field)."""

    path: str
    detail: str


class SourceAccepted(msgspec.Struct, omit_defaults=True):
    """Reply to a source: how many entries went to `vn:notices` and the alerts skipped."""

    accepted: int
    skipped: list[SkippedAlert] = []
