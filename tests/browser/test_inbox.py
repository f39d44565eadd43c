"""The inbox page in a real browser: live notices from a product's XADD, the badge, reading
(and the other tab following), infinite scroll, and surviving an api restart."""

from __future__ import annotations

import re

import pytest
from browser_support import K, add_users, console_errors
from playwright.async_api import expect

from support import Api, Proc, eventually, vestnik_argv, wait_http

pytestmark = pytest.mark.browser


def notice(title: str, to: str = "1", severity: str = "warning", **extra: str) -> dict[str, str]:
    return {"alert": "disk", "title": title, "severity": severity, "recipients": to, **extra}


async def test_live_notice_badge_read_and_second_tab(api: Api, redis, start_proc, user_token,
                                                     context, shot):
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    token = user_token("1")
    tab1 = await context.new_page()
    errors = console_errors(tab1)
    await tab1.goto(f"{api.base}/?token={token}")
    inbox1 = tab1.locator("vestnik-inbox")
    await expect(inbox1).to_have_attribute("state", "empty")
    assert "token=" not in tab1.url  # kept for the tab, not in the address bar
    await shot(tab1, "empty")
    # a second tab of the same user (the token is per tab: it comes by URL again)
    tab2 = await context.new_page()
    await tab2.goto(f"{api.base}/?token={token}")
    inbox2 = tab2.locator("vestnik-inbox")
    await expect(inbox2).to_have_attribute("state", "empty")

    # a product sends notices with a plain XADD
    await redis.xadd(K.notices, notice("Backup finished on db-1", severity="info",
                                       body="Nightly backup took 4 min."))
    await redis.xadd(K.notices, notice("Disk 95% on web-1", body="/var is 95% full.",
                                       link=f"{api.base}/admin"))
    await redis.xadd(K.notices, notice("web-3 is down", severity="critical",
                                       body="No heartbeat for 60 s."))
    items = inbox1.locator("li")
    await expect(items).to_have_count(3)
    await expect(items.first).to_contain_text("web-3 is down")  # newest first
    badge1 = inbox1.locator(".head-bell .badge")
    await expect(badge1).to_have_text("3")
    await expect(inbox2.locator(".head-bell .badge")).to_have_text("3")
    await expect(tab1).to_have_title("(3) Inbox · Vestnik")
    await expect(inbox1.locator("[aria-live]")).to_contain_text("web-3 is down")
    await expect(items.first).to_have_class(re.compile(r"\bsev-critical unread\b"))
    await shot(tab1, "three-unread")

    # clicking an item without a link marks it read: the badge drops, the other tab follows
    await inbox1.locator("li", has_text="Backup finished").locator(".hit").click()
    await expect(badge1).to_have_text("2")
    await expect(inbox2.locator(".head-bell .badge")).to_have_text("2")
    await expect(inbox2.locator("li", has_text="Backup finished")).not_to_have_class(
        re.compile(r"\bunread\b"))
    await shot(tab2, "other-tab-follows")

    # keyboard: focus the first item, arrow down, Enter on the linked notice follows its link
    await inbox1.locator("li").first.locator(".hit").focus()
    await tab1.keyboard.press("ArrowDown")
    focused = inbox1.locator("li", has_text="Disk 95% on web-1").locator(".hit")
    await expect(focused).to_be_focused()
    await tab1.keyboard.press("Enter")
    await tab1.wait_for_url(f"{api.base}/admin")
    await expect(inbox2.locator(".head-bell .badge")).to_have_text("1")

    # mark all read from the second tab
    await inbox2.get_by_role("button", name="Mark all read").click()
    await expect(inbox2.locator(".head-bell .badge")).to_be_hidden()
    await expect(inbox2.locator("li.unread")).to_have_count(0)
    await shot(tab2, "all-read")
    assert not errors, errors


async def test_infinite_scroll_pages_with_the_cursor(api: Api, redis, start_proc, user_token,
                                                     context, shot):
    await add_users(redis, ("1", "Alice"))
    for i in range(45):
        await redis.xadd(K.notices, notice(f"Notice {i:02d}", severity=("info", "warning")[i % 2]))
    start_proc("center", "--no-forward")
    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(f"{api.base}/?token={user_token('1')}")
    inbox = page.locator("vestnik-inbox")
    # pages of 20: once all 45 are stored, scrolling down loads the rest, newest first
    await expect(inbox.locator(".head-bell .badge")).to_have_text("45", timeout=20_000)
    await page.reload()
    await expect(inbox.locator("li")).to_have_count(20)
    await inbox.locator("li").last.scroll_into_view_if_needed()
    await expect(inbox.locator("li")).to_have_count(40)
    await inbox.locator("li").last.scroll_into_view_if_needed()
    await expect(inbox.locator("li")).to_have_count(45)
    titles = await inbox.locator("li .title").all_inner_texts()
    assert titles == [f"Notice {i:02d}" for i in reversed(range(45))]
    await expect(inbox.locator(".more")).to_contain_text("That's everything")
    await shot(page, "scrolled", full_page=True)
    assert not errors, errors


async def test_api_restart_resumes_without_loss_or_duplicates(start_api, redis, start_proc,
                                                              user_token, context, shot,
                                                              tmp_path):
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    api = start_api()
    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(f"{api.base}/?token={user_token('1')}")
    inbox = page.locator("vestnik-inbox")
    await expect(inbox).to_have_attribute("state", "empty")
    for i in range(2):
        await redis.xadd(K.notices, notice(f"before {i}"))
    await expect(inbox.locator("li")).to_have_count(2)

    # the api dies hard while the page is open
    api.proc.kill()
    await expect(inbox).to_have_attribute("reconnecting", "")
    await expect(inbox.locator(".banner")).to_contain_text("Reconnecting")
    await shot(page, "reconnecting")
    # notices keep coming meanwhile (the center stores them; nobody pushes them to us)
    for i in range(3):
        await redis.xadd(K.notices, notice(f"while down {i}", severity="critical"))
    await eventually(lambda: _feed_len(redis, "1", 5), what="stored while the api is down")

    # the same api comes back on the same port: the page resumes from its last feed seq
    again = Proc(vestnik_argv("api", "--port", str(api.port)), api.env,
                 tmp_path / "api-again.log").start()
    try:
        wait_http(api.base + "/readyz", proc=again)
        await expect(inbox).not_to_have_attribute("reconnecting", "", timeout=30_000)
        await expect(inbox.locator("li")).to_have_count(5)
        # the count sent on reconnect already includes the replayed notices: not 8
        await expect(inbox.locator(".head-bell .badge")).to_have_text("5")
        await redis.xadd(K.notices, notice("after"))
        await expect(inbox.locator("li")).to_have_count(6)
        titles = await inbox.locator("li .title").all_inner_texts()
        assert sorted(titles) == sorted(["after", *(f"while down {i}" for i in range(3)),
                                         *(f"before {i}" for i in range(2))])
        assert titles[0] == "after"
        await expect(inbox.locator(".head-bell .badge")).to_have_text("6")
        await shot(page, "resumed")
    finally:
        again.stop()
    assert not errors, errors


async def _feed_len(redis, uid: str, n: int) -> bool:
    return await redis.zcard(K.feed(uid)) >= n


async def test_sign_in_bad_token_and_unread_filter(api: Api, redis, start_proc, user_token,
                                                   context, shot):
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    for i in range(3):
        await redis.xadd(K.notices, notice(f"n{i}", severity="info"))
    page = await context.new_page()
    errors = console_errors(page)
    # no token: the page asks for one
    await page.goto(api.base + "/")
    inbox = page.locator("vestnik-inbox")
    await expect(inbox).to_have_attribute("state", "signin")
    await shot(page, "signin")
    # a token that is not valid: the error state says so
    await inbox.get_by_label("User token").fill("not-a-jwt")
    await inbox.get_by_role("button", name="Open").click()
    await expect(inbox.locator(".state")).to_contain_text("not valid")
    await expect(inbox).to_have_attribute("state", "signin")  # and asks for another one
    await shot(page, "bad-token")
    # a good one, pasted: the inbox loads (and the tab keeps it across a reload)
    await inbox.get_by_label("User token").fill(user_token("1"))
    await inbox.get_by_role("button", name="Open").click()
    await expect(inbox.locator("li")).to_have_count(3)
    await page.reload()
    await expect(inbox.locator("li")).to_have_count(3)
    # read one, then show only the unread ones
    await inbox.locator("li", has_text="n1").locator(".hit").click()
    await expect(inbox.locator(".head-bell .badge")).to_have_text("2")
    await inbox.get_by_role("button", name="Unread", exact=True).click()
    await expect(inbox.get_by_role("button", name="Unread", exact=True)).to_have_attribute(
        "aria-pressed", "true")
    await expect(inbox.locator("li")).to_have_count(2)
    assert await inbox.locator("li .title").all_inner_texts() == ["n2", "n0"]
    await shot(page, "unread-only")
    assert not errors, errors


async def test_notice_stored_between_list_and_stream_still_shows(api: Api, redis, start_proc,
                                                                 user_token, context, shot):
    """The stream connects late (held here): a notice stored after the list was read and
    before the stream began comes by neither path unless the widget notices the gap."""
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    page = await context.new_page()
    errors = console_errors(page)
    held: list = []
    await page.route("**/api/v1/me/stream**", lambda route: held.append(route))
    await page.goto(f"{api.base}/?token={user_token('1')}")
    inbox = page.locator("vestnik-inbox")
    await expect(inbox).to_have_attribute("state", "empty")
    await redis.xadd(K.notices, notice("in the gap"))
    await eventually(lambda: _feed_len(redis, "1", 1), what="stored")

    async def stream_requested() -> bool:
        return bool(held)

    await eventually(stream_requested, what="the stream request")
    await held[0].continue_()
    await expect(inbox.locator("li", has_text="in the gap")).to_be_visible()
    await expect(inbox.locator(".head-bell .badge")).to_have_text("1")
    # and the stream is live from there: the next one comes once
    await redis.xadd(K.notices, notice("after the gap"))
    await expect(inbox.locator("li")).to_have_count(2)
    await expect(inbox.locator(".head-bell .badge")).to_have_text("2")
    assert not errors, errors
