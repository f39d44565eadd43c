"""/admin's Silences section in a real browser: create a silence (a bad matcher is named next
to its field), see it listed; a matching notice sent then is not pushed to an open inbox
but is in its feed; expire the silence on the page and the next one is pushed."""

from __future__ import annotations

import pytest
from browser_support import K, add_users, console_errors
from playwright.async_api import expect

from support import Api

pytestmark = pytest.mark.browser


def notice(title: str, eid: str) -> dict[str, str]:
    return {"alert": "disk", "title": title, "severity": "warning", "recipients": "1",
            "entity": f'{{"topic":"vm","id":"{eid}"}}'}


async def test_create_list_silence_then_expire_it(api: Api, redis, start_proc, user_token,
                                                  context, shot):
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    admin = await context.new_page()
    errors = console_errors(admin)
    await admin.goto(f"{api.base}/admin")
    await admin.get_by_role("textbox", name="Service token").fill(api.service_token)
    await admin.get_by_role("button", name="Continue").click()
    section = admin.locator("#silences-card")
    await expect(section.locator("#sil-empty")).to_be_visible()

    # no matcher at all: the API's 422 is shown on the form
    await section.get_by_role("button", name="Add silence").click()
    await expect(section.locator("#sil-error")).to_contain_text("at least one matcher")
    # a bad entity topic: named next to its field
    await section.get_by_label("Entity topic").fill("no/slashes")
    await section.get_by_role("button", name="Add silence").click()
    await expect(section.locator("#sil-err-entity_topic")).not_to_be_empty()
    await expect(section.locator('[data-sil="entity_topic"]')).to_have_class("field invalid")

    # a silence of alert disk on vm web-1, for 4 hours, with a comment
    await section.get_by_label("Alert").fill("disk")
    await section.get_by_label("Entity topic").fill("vm")
    await section.get_by_label("Entity id").fill("web-1")
    await section.get_by_label("Duration").select_option(label="4 hours")
    await section.get_by_label("Comment").fill("<b>rebuilding</b> web-1")
    await section.get_by_label("Created by").fill("ops")
    await section.get_by_role("button", name="Add silence").click()
    row = section.locator("#silences tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_have_attribute("data-state", "active")
    await expect(row).to_contain_text("alert=disk")
    await expect(row).to_contain_text("entity_id=web-1")
    await expect(row.locator("td").nth(4)).to_have_text("<b>rebuilding</b> web-1")  # as text
    await expect(row).to_contain_text("ops")
    await expect(section.locator("#sil-error")).to_be_hidden()
    await shot(admin, "silence-listed", full_page=True)

    # an open inbox: the silenced notice does not arrive, the other one does
    inbox_page = await context.new_page()
    inbox_errors = console_errors(inbox_page)
    await inbox_page.goto(f"{api.base}/?token={user_token('1')}")
    inbox = inbox_page.locator("vestnik-inbox")
    await expect(inbox).to_have_attribute("state", "empty")
    await redis.xadd(K.notices, notice("Disk 97% on web-1", "web-1"))
    await redis.xadd(K.notices, notice("Disk 91% on web-2", "web-2"))
    items = inbox.locator("li")
    await expect(items.first).to_contain_text("Disk 91% on web-2")
    await expect(items).to_have_count(1)
    await shot(inbox_page, "silenced-not-pushed")
    # it is in the feed: a reload lists both
    await inbox_page.reload()
    await expect(items).to_have_count(2)
    await expect(inbox.locator("li", has_text="Disk 97% on web-1")).to_have_count(1)

    # expire it on the page: the next matching notice is pushed live
    await row.get_by_role("button", name="Expire").click()
    await expect(row).to_have_attribute("data-state", "expired")
    await expect(row.get_by_role("button", name="Expire")).to_have_count(0)
    await shot(admin, "silence-expired", full_page=True)
    await redis.xadd(K.notices, notice("Disk 99% on web-1", "web-1"))
    await expect(items.first).to_contain_text("Disk 99% on web-1")
    await expect(items).to_have_count(3)
    assert not errors, errors
    assert not inbox_errors, inbox_errors
