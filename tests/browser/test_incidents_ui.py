"""Incidents in the inbox (issue 21 §1): a notice with an incident key shows "firing" and for
how long, flips live to "resolved" with the incident's duration (the unread count stays),
"Firing only" hides the rest, and a hostile title is text."""

from __future__ import annotations

import re

import msgspec
import pytest
from browser_support import K, add_users, console_errors
from playwright.async_api import expect

from support import Api, eventually
from vestnik.streams import schemas
from vestnik.streams.ids import now_ms, ulid

pytestmark = pytest.mark.browser

MIN = 60_000
HOSTILE = '<img src=x onerror="window.pwned=1">Disk <b>97%</b> on web-9'


async def fire(redis, dedup_key: str, title: str, created_at: int, **extra: str) -> str:
    """A product raises an incident (a notice with a dedup_key) with a plain XADD; its id
    once the center stored it."""
    nid = ulid(created_at)
    await redis.xadd(K.notices, {"alert": "disk", "title": title, "severity": "warning",
                                 "recipients": "1", "dedup_key": dedup_key, "id": nid,
                                 "created_at": str(created_at), **extra})

    async def stored() -> bool:
        return await redis.exists(K.notice(nid)) == 1

    await eventually(stored, what=f"incident {dedup_key} stored")
    body = msgspec.json.decode(await redis.get(K.notice(nid)), type=schemas.Notice)
    assert body.status == "firing"  # the center marks an incident when it stores it
    return nid


async def resolve(redis, api: Api, nid: str, dedup_key: str, at: int) -> None:
    """Resolve the incident at `at` (ms) over HTTP; the center rewrites the stored body and
    pushes `notice-update`: wait until the body says so."""
    async with api.client() as http:
        r = await http.post("/api/v1/notices/resolve",
                            json={"alert": "disk", "dedup_key": dedup_key, "at": at})
        assert r.status_code == 202, r.text

    async def resolved() -> bool:
        body = msgspec.json.decode(await redis.get(K.notice(nid)), type=schemas.Notice)
        return body.status == "resolved" and body.resolved_at == at

    await eventually(resolved, what=f"incident {dedup_key} resolved")


async def test_incident_fires_resolves_live_and_filters(api: Api, redis, start_proc,
                                                        user_token, context, shot):
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(f"{api.base}/?token={user_token('1')}")
    inbox = page.locator("vestnik-inbox")
    await expect(inbox).to_have_attribute("state", "empty")

    t0 = now_ms() - 10 * MIN
    await redis.xadd(K.notices, {"alert": "backup", "title": "Backup finished on db-1",
                                 "severity": "info", "recipients": "1"})
    web1 = await fire(redis, "web-1", "Disk 95% on web-1", t0)
    web2 = await fire(redis, "web-2", "Disk 91% on web-2", t0 + 4 * MIN)
    web9 = await fire(redis, "web-9", HOSTILE, t0 + 8 * MIN)
    items = inbox.locator("li")
    await expect(items).to_have_count(4)
    badge = inbox.locator(".head-bell .badge")
    await expect(badge).to_have_text("4")

    # firing, and for how long (created_at -> now); a plain notice has no state
    one = inbox.locator("li", has_text="Disk 95% on web-1")
    await expect(one.locator(".inc-firing")).to_have_text(re.compile(r"^● Firing for 1\d min$"))
    await expect(inbox.locator("li", has_text="web-2").locator(".inc-firing")).to_contain_text(
        re.compile(r"for [5-9] min"))
    await expect(inbox.locator("li", has_text="Backup finished").locator(".inc")).to_have_count(0)
    # the state is words, in the item's accessible name too (not only a colour)
    await expect(inbox.get_by_role("button", name="Unread. Firing. Warning: Disk 95% on web-1")
                 ).to_be_visible()

    # a hostile title is text: no element, no script
    hostile = inbox.locator("li", has_text="on web-9")
    await expect(hostile.locator(".title")).to_have_text(HOSTILE)
    await expect(hostile.locator("img, b")).to_have_count(0)
    assert await page.evaluate("window.pwned") is None
    await shot(page, "firing")

    # resolved 7.5 min after it began: the badge flips live, no reload, the count stays
    await resolve(redis, api, web1, "web-1", t0 + 7 * MIN + 30_000)
    await expect(one.locator(".inc-resolved")).to_contain_text("Resolved")
    await expect(one.locator(".lasted")).to_have_text("lasted 7 min")
    await expect(one.locator(".inc-resolved time")).to_have_attribute(
        "datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
    await expect(one.locator(".inc-firing")).to_have_count(0)
    await expect(inbox.locator("[aria-live]")).to_have_text("Resolved: Disk 95% on web-1")
    await expect(one).to_have_class(re.compile(r"\bunread\b"))  # still unread
    await expect(badge).to_have_text("4")
    await expect(page).to_have_title("(4) Inbox · Vestnik")
    assert await redis.zcard(K.feed("1")) - await redis.zcard(K.read("1")) == 4
    name = "Unread. Resolved, lasted 7 min. Warning: Disk 95% on web-1"
    await expect(inbox.get_by_role("button", name=name)).to_be_visible()
    await shot(page, "resolved")

    # "Firing only": the resolved incident and the plain notice are hidden
    toggle = inbox.get_by_role("button", name="Firing only")
    await expect(toggle).to_have_attribute("aria-pressed", "false")
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-pressed", "true")
    visible = inbox.locator("li:visible .title")
    await expect(visible).to_have_text([HOSTILE, "Disk 91% on web-2"])
    await shot(page, "firing-only")

    # the keyboard walks the shown items only
    await inbox.locator("li", has_text="on web-9").locator(".hit").focus()
    await page.keyboard.press("End")
    web2_hit = inbox.locator("li", has_text="web-2").locator(".hit")
    await expect(web2_hit).to_be_focused()

    # resolving the shown ones live empties the filtered list (focus stays in the inbox);
    # the count still stays
    await resolve(redis, api, web2, "web-2", now_ms())
    await expect(visible).to_have_text([HOSTILE])
    await expect(hostile.locator(".hit")).to_be_focused()
    await resolve(redis, api, web9, "web-9", now_ms())
    await expect(visible).to_have_count(0)
    await expect(toggle).to_be_focused()
    await expect(inbox.locator(".state")).to_contain_text("No firing incidents")
    await expect(badge).to_have_text("4")
    await shot(page, "none-firing")

    # the filter off: everything is back, resolved ones as resolved
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-pressed", "false")
    await expect(inbox.locator("li:visible")).to_have_count(4)
    await expect(inbox.locator(".inc-resolved")).to_have_count(3)
    # and a reload shows the same states from the feed page (not only from live updates)
    await page.reload()
    await expect(inbox.locator("li")).to_have_count(4)
    await expect(inbox.locator("li", has_text="web-1").locator(".lasted")).to_have_text(
        "lasted 7 min")
    await expect(badge).to_have_text("4")
    assert not errors, errors


async def test_firing_duration_ticks_with_one_interval(api: Api, redis, start_proc, user_token,
                                                       context, shot):
    """The firing duration grows on screen without a reload (one interval for the whole
    list, every 30 s); a resolved incident's duration stays. The page's clock is Playwright's
    (paused 2 min 10 s after the incident began, then jumped an hour), the server's is real."""
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    t0 = now_ms() - 30 * MIN  # web-1 began; the page's "now" is t0 + 2 min 10 s
    seen = t0 + 2 * MIN + 10_000
    done = await fire(redis, "db-1", "Replication lag on db-1", seen - 32 * MIN)
    await resolve(redis, api, done, "db-1", seen - 7 * MIN)
    await fire(redis, "web-1", "Disk 95% on web-1", t0)
    page = await context.new_page()
    errors = console_errors(page)
    # count the page's intervals: one for the list, however many items it shows
    await page.clock.install(time=(seen - 60_000) / 1000)
    await page.add_init_script("""(() => {
        const set = window.setInterval;
        window.intervals = 0;
        window.setInterval = (...a) => { window.intervals++; return set(...a); };
    })()""")
    await page.goto(f"{api.base}/?token={user_token('1')}")
    await page.clock.pause_at(seen / 1000)
    inbox = page.locator("vestnik-inbox")
    firing = inbox.locator("li", has_text="web-1").locator(".inc-firing")
    resolved = inbox.locator("li", has_text="db-1")
    chip = resolved.locator(".inc-resolved")
    await expect(firing).to_have_text("● Firing for 2 min")
    await expect(resolved.locator(".lasted")).to_have_text("lasted 25 min")
    await expect(chip).to_have_text("✓ Resolved 7 minutes ago · lasted 25 min")
    await page.clock.fast_forward("01:00:00")
    await expect(firing).to_have_text("● Firing for 1 hr 2 min")
    await expect(resolved.locator(".lasted")).to_have_text("lasted 25 min")
    await expect(chip).to_have_text("✓ Resolved 1 hour ago · lasted 25 min")
    assert await page.evaluate("window.intervals") == 1
    await shot(page, "an-hour-later")
    assert not errors, errors


async def test_firing_only_reads_older_pages_to_find_incidents(api: Api, redis, start_proc,
                                                               user_token, context, shot):
    """The filter runs over the loaded items; an incident older than the first page still
    shows under "Firing only": the inbox reads on while the filtered list is short."""
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    await fire(redis, "web-1", "Disk 95% on web-1", now_ms() - 3 * MIN)
    for i in range(30):
        await redis.xadd(K.notices, {"alert": "vm", "title": f"vm {i:02d} started",
                                     "recipients": "1"})

    async def all_stored() -> bool:
        return await redis.zcard(K.feed("1")) == 31

    await eventually(all_stored, what="31 notices stored")
    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(f"{api.base}/?token={user_token('1')}")
    inbox = page.locator("vestnik-inbox")
    await expect(inbox.locator("li")).to_have_count(20)  # the first page: no incident in it
    await expect(inbox.locator(".inc-firing")).to_have_count(0)
    await inbox.get_by_role("button", name="Firing only").click()
    await expect(inbox).to_have_attribute("firing-only", "")
    await expect(inbox.locator("li:visible .title")).to_have_text(["Disk 95% on web-1"])
    await expect(inbox.locator("li:visible .inc-firing")).to_contain_text(
        re.compile(r"Firing for [3-9] min"))
    await expect(inbox.locator(".head-bell .badge")).to_have_text("31")
    await shot(page, "found-on-page-2")
    await inbox.get_by_role("button", name="Firing only").click()
    await expect(inbox).not_to_have_attribute("firing-only", "")
    await expect(inbox.locator("li:visible")).to_have_count(31)
    assert not errors, errors
