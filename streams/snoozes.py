"""A user's snoozes as stored under `Keys.snooze(uid)`: the one reader the center (a batch's
recipients get `User.snooze`) and the forwarder (a job reads them again before it sends)
share, and the encoding the writes (`streams.center.snooze`) store. Shared (not in the
center) because the forward package must not import the center.

Layout: one string per user, JSON `{alert name or "*": until ms}`, with PEXPIREAT at the
latest until, so the key goes by itself when the last snooze ends. An entry whose until
has passed is ignored when read and dropped by the next write. Reading a batch's
recipients is one MGET (one GET each on a cluster) in a round trip the center already
makes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from vestnik.streams.ids import now_ms
from vestnik.streams.keys import Keys

log = logging.getLogger("vestnik.snooze")

DAY_MS = 86_400 * 1000
ALL = "*"  # the key of a snooze of every alert
MAX_ENTRIES = 100  # alerts one user may snooze at once (a write past it is refused)
MAX_AHEAD_MS = 30 * DAY_MS  # a snooze ends at most 30 days after it is set

_decode = msgspec.json.Decoder(dict[str, int]).decode
encode = msgspec.json.Encoder().encode


def read_commands(pipe: Any, keys: Keys, uid: str) -> int:
    """Queue the read of `uid`'s snoozes on `pipe`; returns how many replies it adds (for
    `decode`)."""
    pipe.get(keys.snooze(uid))
    return 1


def decode(replies: Sequence[Any], now: int | None = None) -> dict[str, int]:
    """The snoozes in the replies of `read_commands`: alert (or "*") -> until ms, only the
    ones still running at `now` (default: now)."""
    return decode_value(replies[0], now)


def decode_value(raw: bytes | None, now: int | None = None) -> dict[str, int]:
    """One stored value (None: no key) as `decode` reads it. A value that is not what the
    writes store (hand-edited) counts as no snooze, logged: it must not stop a forward."""
    if not raw:
        return {}
    try:
        items = _decode(raw)
    except msgspec.DecodeError as e:
        log.warning("unreadable snooze value ignored (%s; %d bytes)", e, len(raw))
        return {}
    at = now_ms() if now is None else now
    return {alert: until for alert, until in items.items() if until > at}


def held_until(snooze: Mapping[str, int], alert: str, at: int) -> int | None:
    """Until when a forward of `alert` due at `at` waits (the later of the alert's own
    snooze and `*`), or None when it is not snoozed then."""
    until = max(snooze.get(alert, 0), snooze.get(ALL, 0))
    return until if until > at else None
