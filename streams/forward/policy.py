"""When an external forward to a user must wait: quiet hours and snoozes (issue 21 §3).

Pure functions (no Redis, no clock: the time is an argument), so the notice center (at
schedule time, `schedule.forward_jobs_for`) and the forward job (when it runs: a snooze
set after scheduling) decide alike, and tests drive time through `now_ms`.

Quiet hours: `prefs.quiet = {"from": "22:00", "to": "08:00", "tz": "Europe/Berlin",
"allow": ["critical"]}` (`tz` default UTC, `allow` default none). A forward that falls
due inside the window waits until it ends, unless its severity is in `allow`. One
window is the interval of instants from day D's `from` to `to` (on D+1 when `to` is not
after `from`: the window wraps midnight), both read on the zone's wall clock with zoneinfo
(PEP 495 `fold=0`): a bound in a repeated hour (DST ends) is its first occurrence, a bound
in a skipped hour (DST starts) is read with the offset before the jump (02:30 on a
23-hour night is 03:30 summer time). `from == to` is an empty window (nothing is held).
Prefs that cannot be read (wrong types, "25:99", an unknown zone) mean no quiet hours,
never a failed job: a warning is logged once per user and value.

Snooze: `User.snooze` (alert name or "*" -> until, ms; the center fills it from
`Keys.snooze(uid)`, the job reads it again) holds every forward of that alert (or all)
until then, whatever the severity.

In-app is never held (only forwards ask), and neither are the `*` forwards (shared
targets belong to no user).
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from typing import Annotated, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from vestnik.streams.schemas import Notice, Severity, User

log = logging.getLogger("vestnik.forward")

QUIET = "quiet"  # the prefs key
MAX_HOLD_MS = 31 * 86_400_000  # a hold never reaches further (hostile or stale data)
_WARNED_MAX = 10_000  # (user, value) pairs warned about, kept to warn once each

_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9](?!\n)$"
_ZONE = r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*(?!\n)$"


class QuietPrefs(msgspec.Struct, frozen=True):
    """`prefs.quiet` as a user (a product's user record) writes it; unknown keys ignored."""

    start: Annotated[str, msgspec.Meta(pattern=_HHMM)] = msgspec.field(name="from")
    to: Annotated[str, msgspec.Meta(pattern=_HHMM)]
    tz: Annotated[str, msgspec.Meta(max_length=64, pattern=_ZONE)] = "UTC"
    allow: Annotated[list[Severity], msgspec.Meta(max_length=3)] = []


class Quiet(NamedTuple):
    """A readable quiet window: wall-clock bounds in `tz`, severities let through."""

    start: time
    end: time
    tz: ZoneInfo
    allow: frozenset[str]

    def end_if_inside(self, now_ms: int) -> int | None:
        """The end (ms) of the window `now_ms` falls in, or None outside every window."""
        if self.start == self.end:
            return None
        today = datetime.fromtimestamp(now_ms / 1000, self.tz).date()
        wraps = self.end < self.start
        # the windows that start the day before, on the day and (zones whose clocks go back
        # across midnight) the day after now's wall-clock date
        for day in (today - timedelta(days=1), today, today + timedelta(days=1)):
            start = _instant(day, self.start, self.tz)
            end = _instant(day + timedelta(days=1) if wraps else day, self.end, self.tz)
            if start <= now_ms < end:
                return end
        return None


def _instant(day: date, at: time, tz: ZoneInfo) -> int:
    """ms of wall-clock `at` on `day` in `tz` (fold=0: see the module docstring)."""
    return int(datetime.combine(day, at, tzinfo=tz).timestamp() * 1000)


_warned: set[tuple[str, str]] = set()


def _warn_once(uid: str, raw: object, why: str) -> None:
    key = (uid, repr(raw)[:200])
    if key in _warned:
        return
    if len(_warned) >= _WARNED_MAX:
        _warned.clear()
    _warned.add(key)
    log.warning("user %s: prefs.quiet ignored (%s)", uid, why[:300],
                extra={"user": uid})


def _time(hhmm: str) -> time:
    return time(int(hhmm[:2]), int(hhmm[3:]))


def quiet_of(user: User) -> Quiet | None:
    """The user's quiet window, or None (none set, or unreadable: warned once)."""
    raw = user.prefs.get(QUIET)
    if raw is None:
        return None
    try:
        prefs = msgspec.convert(raw, QuietPrefs)
    except msgspec.ValidationError as e:
        _warn_once(user.id, raw, str(e))
        return None
    try:
        tz = ZoneInfo(prefs.tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:
        _warn_once(user.id, raw, f"unknown time zone {prefs.tz!r}: {type(e).__name__}")
        return None
    return Quiet(_time(prefs.start), _time(prefs.to), tz, frozenset(prefs.allow))


def snoozed_until(snooze: dict[str, int], alert: str, now_ms: int) -> int | None:
    """When the snooze of `alert` (or of every alert) ends, if one runs at `now_ms`."""
    until = max(snooze.get("*", 0), snooze.get(alert, 0))
    return until if until > now_ms else None


Why = Literal["quiet hours", "snooze"]


class Hold(NamedTuple):
    """A forward due at some time waits until `until` (ms), for `why` (the last reason)."""

    until: int
    why: Why


def hold(user: User, notice: Notice, now_ms: int) -> Hold | None:
    """Whether a forward of `notice` to `user` due at `now_ms` must wait, and until when:
    a snooze, then quiet hours at its end (and so on: a snooze may end inside quiet
    hours), capped at MAX_HOLD_MS."""
    if not user.snooze and QUIET not in user.prefs:
        return None  # most users: no work
    quiet = quiet_of(user)
    if quiet is not None and notice.severity in quiet.allow:
        quiet = None
    at: int = now_ms
    why: Why | None = None
    for _ in range(4):  # snooze -> quiet -> snooze settles in two rounds
        moved = False
        s = snoozed_until(user.snooze, notice.alert, at) if user.snooze else None
        if s is not None:
            at, why, moved = s, "snooze", True
        q = quiet.end_if_inside(at) if quiet is not None else None
        if q is not None:
            at, why, moved = q, "quiet hours", True
        if not moved:
            break
    if why is None or at <= now_ms:
        return None
    return Hold(min(at, now_ms + MAX_HOLD_MS), why)


def hold_until(user: User, notice: Notice, now_ms: int) -> int | None:
    """When an external forward of `notice` to `user`, due at `now_ms`, may go: None when
    it need not wait (see `hold`)."""
    h = hold(user, notice, now_ms)
    return h.until if h is not None else None

