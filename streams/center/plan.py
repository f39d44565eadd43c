"""Planning a notice: its id, its settings' channels merged, who gets it in-app (a
forward's channels are decided by `streams.forward.user_routes`). Pure functions of
decoded values: no Redis here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from msgspec import UNSET

from vestnik.streams.consumer import Entry
from vestnik.streams.ids import encode_ulid, parse_stream_id
from vestnik.streams.keys import dedup_scope
from vestnik.streams.schemas import (
    NO_CHANNELS,
    AlertSetting,
    ChannelMap,
    ChannelTarget,
    Notice,
    NoticeIn,
    User,
)


def derived_id(sid: str, stream: str = "") -> str:
    """A ULID for an entry sent without `id`: its time from the stream id, the rest a hash of
    it, so every delivery of the entry gets the same notice id. Entry ids repeat across
    the ingest partitions' streams (same ms, same sequence), so a partition's stream name
    (`stream`: "" for partition 0, whose ids stay what they always were) is hashed too."""
    ms = parse_stream_id(sid)[0]
    seed = f"{stream}\0{sid}" if stream else sid
    rnd = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=10).digest(), "big")
    return encode_ulid(ms, rnd)


def merge_channels(settings: Iterable[AlertSetting]) -> ChannelMap:
    """The channel maps of several settings of one alert as one: each channel's users and
    chat ids united (an entry naming nobody names every recipient, so it wins), its `url`,
    `secret`, `digest` and a plugin's own fields the first setting's; the least
    `forward_after`."""
    maps = [s.channel for s in settings if s.channel]
    if len(maps) <= 1:
        return maps[0] if maps else NO_CHANNELS
    targets: dict[str, ChannelTarget] = {}
    afters = [m.forward_after for m in maps if m.forward_after is not None]
    for m in maps:
        for name, target in m.targets.items():
            have = targets.get(name)
            targets[name] = target if have is None else _merge_target(have, target)
    return ChannelMap(targets, min(afters) if afters else None)


def _merge_target(a: ChannelTarget, b: ChannelTarget) -> ChannelTarget:
    users = UNSET if a.users is UNSET or b.users is UNSET \
        else tuple(dict.fromkeys((*a.users, *b.users)))
    return ChannelTarget(users=users, chat_ids=tuple(dict.fromkeys((*a.chat_ids, *b.chat_ids))),
                         url=a.url if a.url is not None else b.url,
                         secret=a.secret if a.secret is not None else b.secret,
                         digest=a.digest if a.digest is not None else b.digest,
                         extra={**b.extra, **a.extra})


@dataclass(slots=True)
class Plan:
    """One valid entry on its way to the store."""

    entry: Entry[NoticeIn]
    notice: Notice
    settings: list[AlertSetting] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    fold_into: str | None = None
    # recipients without a readable profile: in-app only, and their forwards read the
    # profile when they run (never claimed with the profile in hand)
    missing: set[str] = field(default_factory=set)

    @property
    def dedup_claim(self) -> str:
        """The key of this notice's dedup claim: scoped by alert and the setting the
        sender named (not one the center chose, which may change)."""
        assert self.notice.dedup_key is not None
        return dedup_scope(self.notice.alert, self.entry.value.setting_id,
                           self.notice.dedup_key)


def to_notice(entry: Entry[NoticeIn], base_stream: str) -> Notice:
    """The notice of an ingest entry read from `entry.stream`; `base_stream` is partition
    0's name (`Keys.notices`), whose derived ids hash the entry id alone."""
    n = entry.value
    created = n.created_at or parse_stream_id(entry.sid)[0]
    salt = "" if entry.stream in ("", base_stream) else entry.stream
    return Notice(
        id=n.id or derived_id(entry.sid, salt), alert=n.alert, title=n.title, severity=n.severity,
        body=n.body, link=n.link, setting_id=n.setting_id, entity=n.entity, metric=n.metric,
        # once each: a repeated id would be one feed entry counted (and pushed) n times
        data=n.data, recipients=list(dict.fromkeys(n.recipients or ())), channels=n.channels,
        dedup_key=n.dedup_key, forward_after=n.forward_after, created_at=created,
    )
