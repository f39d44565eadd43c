"""Planning a notice: its id, its settings' channels merged, who gets it in-app and who
gets a forward. Pure functions of decoded values: no Redis here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vestnik.streams.consumer import Entry
from vestnik.streams.ids import encode_ulid, parse_stream_id
from vestnik.streams.keys import dedup_scope
from vestnik.streams.schemas import AlertSetting, Notice, NoticeIn, User, validate_channel


def derived_id(sid: str) -> str:
    """A ULID for an entry sent without `id`: its time from the stream id, the rest a hash of
    it, so every delivery of the entry gets the same notice id."""
    ms = parse_stream_id(sid)[0]
    rnd = int.from_bytes(hashlib.blake2b(sid.encode(), digest_size=10).digest(), "big")
    return encode_ulid(ms, rnd)


def merge_channels(settings: Iterable[AlertSetting]) -> dict[str, Any]:
    """The channel maps of several settings of one alert as one: users and chat ids united."""
    out: dict[str, Any] = {}
    for s in settings:
        for name, value in s.channel.items():
            if name == "forward_after":
                if isinstance(value, int | float) and not isinstance(value, bool):
                    cur = out.get(name)
                    out[name] = value if cur is None else min(cur, value)
                continue
            if not isinstance(value, dict):
                continue
            cur = out.setdefault(name, {})
            for k, v in value.items():
                if isinstance(v, list):
                    have = cur.setdefault(k, [])
                    have.extend(x for x in v if x not in have)
                else:
                    cur.setdefault(k, v)
    return out


def channel_users(channels: dict[str, Any]) -> list[str]:
    """Every user named by a channel entry (ui, email, ...), in order, once."""
    targets = validate_channel(channels)
    seen: dict[str, None] = {}
    for target in targets.values():
        for uid in target.users:
            seen[uid] = None
    return list(seen)


def is_muted(user: User, alert: str) -> bool:
    mute = user.prefs.get("mute")
    return isinstance(mute, list) and alert in mute


def wants_forward(notice: Notice, user: User,
                  addresses: Mapping[str, str | None] | None = None) -> bool:
    """Whether any external channel of the notice reaches `user` and is not switched off.

    `addresses`: a known channel's user field (`Channel.user_address`; None for a channel
    with shared targets only, such as a webhook URL, which the `*` job serves). A user
    without the address still gets a job: it reads the profile when it sends (an address
    published meanwhile is used) and records `skipped_no_address` otherwise.
    """
    for name, target in notice.channels.items():
        if name in ("ui", "forward_after") or not isinstance(target, dict):
            continue
        users = target.get("users")
        if isinstance(users, list) and user.id not in [str(u) for u in users]:
            continue
        if user.prefs.get(name) is False:
            continue
        if addresses is not None and name in addresses and addresses[name] is None:
            continue
        return True
    return False


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


def to_notice(entry: Entry[NoticeIn]) -> Notice:
    n = entry.value
    created = n.created_at or parse_stream_id(entry.sid)[0]
    return Notice(
        id=n.id or derived_id(entry.sid), alert=n.alert, title=n.title, severity=n.severity,
        body=n.body, link=n.link, setting_id=n.setting_id, entity=n.entity, metric=n.metric,
        # once each: a repeated id would be one feed entry counted (and pushed) n times
        data=n.data, recipients=list(dict.fromkeys(n.recipients or ())), channels=n.channels,
        dedup_key=n.dedup_key, forward_after=n.forward_after, created_at=created,
    )
