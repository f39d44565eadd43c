"""Quiet hours and snoozes as pure functions: time is an argument (streams.forward.policy)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from vestnik.streams.forward.policy import MAX_HOLD_MS, hold, hold_until
from vestnik.streams.schemas import Notice, User

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = {"from": "22:00", "to": "08:00", "tz": "Europe/Berlin"}


def ms(y: int, mo: int, d: int, h: int, mi: int = 0, tz: Any = UTC,
       fold: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=tz, fold=fold).timestamp() * 1000)


def utc(at: int | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def user(quiet: Any = None, snooze: dict[str, int] | None = None, uid: str = "1") -> User:
    return User(id=uid, prefs={} if quiet is None else {"quiet": quiet},
                snooze=snooze or {})


def notice(severity: str = "warning", alert: str = "disk") -> Notice:
    return Notice(id="N", alert=alert, title="t", severity=severity)  # type: ignore[arg-type]


def test_no_prefs_no_hold():
    assert hold_until(user(), notice(), ms(2026, 12, 4, 3)) is None


@pytest.mark.parametrize(("local", "until"), [
    # a window that wraps midnight, in winter (UTC+1): 22:00-08:00 Berlin = 21:00-07:00 UTC
    ((2026, 12, 4, 21, 59), None),
    ((2026, 12, 4, 22, 0), "2026-12-05 07:00"),
    ((2026, 12, 5, 3, 0), "2026-12-05 07:00"),
    ((2026, 12, 5, 7, 59), "2026-12-05 07:00"),
    ((2026, 12, 5, 8, 0), None),
    ((2026, 12, 5, 12, 0), None),
    # in summer (UTC+2)
    ((2026, 7, 1, 23, 30), "2026-07-02 06:00"),
])
def test_quiet_window_wrapping_midnight(local: tuple[int, ...], until: str | None):
    assert utc(hold_until(user(NIGHT), notice(), ms(*local, tz=BERLIN))) == until


def test_quiet_window_within_one_day():
    lunch = {"from": "12:00", "to": "13:30", "tz": "Europe/Berlin"}
    assert utc(hold_until(user(lunch), notice(), ms(2026, 12, 4, 12, 15, BERLIN))) == \
        "2026-12-04 12:30"
    assert hold_until(user(lunch), notice(), ms(2026, 12, 4, 13, 30, BERLIN)) is None
    assert hold_until(user(lunch), notice(), ms(2026, 12, 4, 11, 59, BERLIN)) is None


def test_dst_starts_in_berlin_the_night_is_an_hour_shorter():
    """2026-03-29: 02:00 CET jumps to 03:00 CEST. The window 22:00-08:00 ends at 08:00 CEST
    (06:00 UTC), nine hours after it began (21:00 UTC)."""
    start = ms(2026, 3, 28, 22, 0, BERLIN)
    assert utc(start) == "2026-03-28 21:00"
    assert utc(hold_until(user(NIGHT), notice(), start)) == "2026-03-29 06:00"
    assert utc(hold_until(user(NIGHT), notice(), ms(2026, 3, 29, 1, 30))) == \
        "2026-03-29 06:00"  # 03:30 CEST
    # a bound in the skipped hour reads with the offset before the jump: 02:30 CET = 03:30 CEST
    gap = {"from": "22:00", "to": "02:30", "tz": "Europe/Berlin"}
    assert utc(hold_until(user(gap), notice(), ms(2026, 3, 28, 23, 0, BERLIN))) == \
        "2026-03-29 01:30"
    assert hold_until(user(gap), notice(), ms(2026, 3, 29, 1, 30)) is None


def test_dst_ends_in_berlin_the_night_is_an_hour_longer():
    """2026-10-25: 03:00 CEST goes back to 02:00 CET. 22:00 CEST (20:00 UTC) to 08:00 CET
    (07:00 UTC): eleven hours."""
    assert utc(hold_until(user(NIGHT), notice(), ms(2026, 10, 24, 22, 0, BERLIN))) == \
        "2026-10-25 07:00"
    # both 02:30s (00:30 UTC in summer time, 01:30 UTC in winter time) are inside
    assert utc(hold_until(user(NIGHT), notice(), ms(2026, 10, 25, 0, 30))) == "2026-10-25 07:00"
    assert utc(hold_until(user(NIGHT), notice(), ms(2026, 10, 25, 1, 30))) == "2026-10-25 07:00"
    assert hold_until(user(NIGHT), notice(), ms(2026, 10, 25, 7, 0)) is None
    # a bound in the repeated hour is its first occurrence (summer time)
    early = {"from": "01:00", "to": "02:30", "tz": "Europe/Berlin"}
    assert utc(hold_until(user(early), notice(), ms(2026, 10, 24, 23, 30))) == \
        "2026-10-25 00:30"
    assert hold_until(user(early), notice(), ms(2026, 10, 25, 1, 0)) is None


def test_dst_in_new_york():
    """2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST."""
    ny = {"from": "23:00", "to": "07:00", "tz": "America/New_York"}
    assert utc(hold_until(user(ny), notice(), ms(2026, 3, 7, 23, 30, NEW_YORK))) == \
        "2026-03-08 11:00"  # 07:00 EDT
    assert utc(hold_until(user(ny), notice(), ms(2026, 3, 8, 6, 59, NEW_YORK))) == \
        "2026-03-08 11:00"
    assert utc(hold_until(user(ny), notice(), ms(2026, 10, 31, 23, 30, NEW_YORK))) == \
        "2026-11-01 12:00"  # 07:00 EST
    assert utc(hold_until(user(ny), notice(), ms(2026, 11, 1, 1, 30, NEW_YORK, fold=1))) == \
        "2026-11-01 12:00"
    assert hold_until(user(ny), notice(), ms(2026, 11, 1, 7, 0, NEW_YORK)) is None


def test_from_equal_to_is_an_empty_window():
    same = {"from": "08:00", "to": "08:00", "tz": "Europe/Berlin"}
    for h in (0, 8, 12, 23):
        assert hold_until(user(same), notice(), ms(2026, 12, 4, h, 0, BERLIN)) is None


def test_default_zone_is_utc_and_allow_lets_a_severity_through():
    q = {"from": "00:00", "to": "06:00", "allow": ["critical"]}
    at = ms(2026, 12, 4, 3)
    assert utc(hold_until(user(q), notice("warning"), at)) == "2026-12-04 06:00"
    assert hold_until(user(q), notice("critical"), at) is None


def test_snooze_all_or_one_alert():
    at = ms(2026, 12, 4, 12)
    later = at + 3_600_000
    assert hold_until(user(snooze={"*": later}), notice(alert="disk"), at) == later
    assert hold_until(user(snooze={"disk": later}), notice(alert="disk"), at) == later
    assert hold_until(user(snooze={"disk": later}), notice(alert="cpu"), at) is None
    assert hold_until(user(snooze={"*": at - 1}), notice(), at) is None  # over
    assert hold_until(user(snooze={"*": at}), notice(), at) is None  # ends now
    # the later of the two applies; severity does not pass a snooze
    got = hold(user({"from": "00:00", "to": "01:00", "allow": ["critical"]},
                    snooze={"*": later, "disk": later + 5}), notice("critical"), at)
    assert got is not None and got.until == later + 5 and got.why == "snooze"


def test_a_snooze_ending_inside_quiet_hours_waits_for_their_end():
    q = {"from": "22:00", "to": "08:00", "tz": "UTC"}
    got = hold(user(q, snooze={"*": ms(2026, 12, 4, 23)}), notice(), ms(2026, 12, 4, 12))
    assert got is not None and utc(got.until) == "2026-12-05 08:00" and got.why == "quiet hours"


def test_a_hold_is_capped():
    at = ms(2026, 12, 4, 12)
    assert hold_until(user(snooze={"*": at + 400 * 86_400_000}), notice(), at) == \
        at + MAX_HOLD_MS


@pytest.mark.parametrize("quiet", [
    "22:00-08:00", 1, ["22:00", "08:00"], {"from": "22:00"}, {"to": "08:00"},
    {"from": "25:99", "to": "08:00"}, {"from": "22:00", "to": "8:00"},
    {"from": 22, "to": 8}, {"from": None, "to": None},
    {"from": "22:00", "to": "08:00", "tz": "Mars/Olympus_Mons"},
    {"from": "22:00", "to": "08:00", "tz": "../../../etc/passwd"},
    {"from": "22:00", "to": "08:00", "tz": "Europe"},
    {"from": "22:00", "to": "08:00", "tz": "x" * 10_000},
    {"from": "22:00", "to": "08:00", "tz": 1},
    {"from": "22:00", "to": "08:00", "allow": "critical"},
    {"from": "22:00", "to": "08:00", "allow": ["page-me"]},
    {"from": "22:00\n", "to": "08:00"},
])
def test_hostile_quiet_prefs_mean_no_quiet_and_one_warning(quiet: Any,
                                                           caplog: pytest.LogCaptureFixture):
    u = user(quiet, uid=f"hostile-{id(quiet)}")
    at = ms(2026, 12, 4, 23, 30, BERLIN)
    with caplog.at_level(logging.WARNING, "vestnik.forward"):
        assert hold_until(u, notice(), at) is None
        assert hold_until(u, notice(), at + 1) is None
    warned = [r for r in caplog.records if "prefs.quiet ignored" in r.getMessage()]
    assert len(warned) == 1
    assert len(warned[0].getMessage()) < 600
