"""/demo/vms follows topic `vm` live; /admin creates, validates, toggles and deletes alert
settings through the settings API."""

from __future__ import annotations

import re

import pytest
from browser_support import K, console_errors
from playwright.async_api import expect

from support import SERVICE_TOKEN, Api, base_env, wait_http
from vestnik.streams.redis_server import free_port

pytestmark = pytest.mark.browser


@pytest.fixture
def demo_api(start_proc, redis_url: str, tmp_path) -> Api:
    """`vestnik up --demo` on the test's Redis: /demo/* exists only there."""
    port = free_port()
    proc = start_proc("up", "--demo", "--port", str(port), VESTNIK_DATA_DIR=str(tmp_path / "d"))
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", timeout=40, proc=proc)
    return Api(base, proc, SERVICE_TOKEN, base_env(redis_url))


async def test_vms_table_shows_created_vm_and_its_status_change(demo_api: Api, redis,
                                                                 user_token, context, shot):
    api = demo_api
    # one VM of ours exists before the page opens (it comes from the snapshot), beside the
    # demo's six (changed every second by its simulator)
    await redis.xadd(K.topic("vm"), {"op": "create", "id": "30", "data":
                                     '{"id":30,"name":"aa-db-30","status":"running","cpu":12,'
                                     '"mem":48,"disk":71}'})
    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(f"{api.base}/demo/vms?token={user_token('1')}")
    await expect(page.locator("#live")).to_have_text("live")
    rows = page.locator("#vms tbody tr")
    await expect(rows).to_have_count(7)
    await expect(page.locator("nav a", has_text="Mail")).to_be_visible()  # a demo link
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    # the product creates a VM with a raw XADD: it appears, installing, without a reload
    await redis.xadd(K.topic("vm"), {"op": "create", "id": "70", "data":
                                     '{"id":70,"name":"zz-web-70","status":"installing"}'})
    row = page.locator('#vms tbody tr[data-id="70"]')
    await expect(row).to_contain_text("zz-web-70")
    await expect(row.locator("[data-status]")).to_have_text("installing")
    await shot(page, "installing")
    await redis.xadd(K.topic("vm"), {"op": "update", "id": "70", "data":
                                     '{"id":70,"name":"zz-web-70","status":"running","cpu":35,'
                                     '"mem":61,"disk":93}'})
    await expect(row.locator("[data-status]")).to_have_text("running")
    await expect(row).to_contain_text("93%")
    await expect(rows).to_have_count(8)
    await expect(rows.first).to_contain_text("aa-db-30")  # sorted by name
    await expect(rows.last).to_contain_text("zz-web-70")
    await shot(page, "running")
    # deletes remove the row; no request was made per event (one stream does it all)
    await redis.xadd(K.topic("vm"), {"op": "delete", "id": "30"})
    await expect(rows).to_have_count(7)
    assert requests == [], requests
    assert not errors, errors


async def test_admin_create_validate_disable_delete(api: Api, context, shot):
    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(f"{api.base}/admin")
    # the service token is asked once; a wrong one is refused
    await page.get_by_role("textbox", name="Service token").fill("nope")
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator("#svc-err")).to_contain_text("not a service token")
    await page.get_by_role("textbox", name="Service token").fill(api.service_token)
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator("#live")).to_have_text("live")

    # create
    await page.get_by_role("button", name="New setting").click()
    await page.get_by_label("Alert name", exact=True).fill("disk-usage")
    await page.get_by_label("Metric (JSON)").fill('{"name": "disk_used_percent", "threshold": 90}')
    await page.get_by_label("Channel (JSON)").fill(
        '{"ui": {"users": ["1", "2"]}, "email": {"users": ["1"]}, "forward_after": 20}')
    await page.get_by_role("button", name="Create").click()
    row = page.locator("#settings tbody tr", has_text="disk-usage")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("v1")
    await expect(row).to_contain_text("email (1)")
    await expect(page.locator("#editor")).to_be_hidden()

    # a bad `channel`: the API's 422 names the field, shown next to it
    await page.get_by_role("button", name="New setting").click()
    await page.get_by_label("Alert name", exact=True).fill("disk-usage")
    await page.get_by_label("Channel (JSON)").fill('{"email": "everyone"}')
    await page.get_by_role("button", name="Create").click()
    err = page.locator("#err-channel")
    await expect(err).to_contain_text("$.channel.email")
    await expect(page.locator('[data-field="channel"]')).to_have_class(re.compile(r"\binvalid\b"))
    await expect(page.get_by_label("Channel (JSON)")).to_be_focused()
    await shot(page, "field-error", full_page=True)
    # and JSON that does not parse never leaves the page
    await page.get_by_label("Metric (JSON)").fill("{oops")
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator("#err-metric")).to_contain_text("Not valid JSON")
    await page.get_by_role("button", name="Cancel").click()

    # disable with the toggle (PATCH with If-Match): version 2, off
    await row.get_by_label("Enable disk-usage").click(force=True)
    await expect(row).to_contain_text("v2")
    await expect(row).to_contain_text("off")
    await expect(row.get_by_label("Enable disk-usage")).not_to_be_checked()
    await shot(page, "disabled")

    # edit (PUT with If-Match)
    await row.get_by_role("button", name="Edit").click()
    await expect(page.get_by_label("Alert name", exact=True)).to_have_value("disk-usage")
    await page.get_by_label("Metric (JSON)").fill('{"name": "disk_used_percent", "threshold": 95}')
    await page.get_by_role("button", name="Save changes").click()
    await expect(row).to_contain_text("v3")
    await expect(row).to_contain_text('"threshold":95')

    # delete asks first; Cancel keeps it, Delete removes it
    await row.get_by_role("button", name="Delete").click()
    dialog = page.locator("#confirm")
    await expect(dialog).to_be_visible()
    await shot(page, "confirm-delete")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(row).to_have_count(1)
    await row.get_by_role("button", name="Delete").click()
    await dialog.get_by_role("button", name="Delete").click()
    await expect(row).to_have_count(0)
    await expect(page.locator("#empty")).to_be_visible()

    # another admin's change (through the API) shows up live, from topic `settings`
    async with api.client() as http:
        r = await http.post("/api/v1/settings", json={"name": "low-balance",
                                                      "channel": {"ui": {"users": ["1"]}}})
        assert r.status_code == 201, r.text
    await expect(page.locator("#settings tbody tr", has_text="low-balance")).to_have_count(1)

    # the delivery log of an unknown notice says so
    await page.get_by_label("Notice id").fill("01NOSUCHNOTICE00000000000")
    await page.get_by_role("button", name="Show").click()
    await expect(page.locator("#dlv-err")).not_to_be_empty()
    assert not errors, errors
