"""/docs: Swagger UI from the api's own files, under the pages' CSP. An operator lists the
operations, authorizes with a service token and tries GET /api/v1/settings; nothing the
page asks for leaves 127.0.0.1 (every other request is aborted and recorded)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from browser_support import console_errors
from playwright.async_api import expect

from support import Api

pytestmark = pytest.mark.browser


async def test_docs_lists_operations_and_tries_settings_with_a_token(api: Api, context, shot):
    async with api.client() as c:
        created = await c.post("/api/v1/settings", json={"name": "docs-try-it"})
        assert created.status_code == 201, created.text
    outside: list[str] = []
    asked: list[str] = []

    async def only_local(route) -> None:
        url = route.request.url
        asked.append(url)
        if urlsplit(url).hostname != "127.0.0.1":
            outside.append(url)
            await route.abort()
        else:
            await route.continue_()

    await context.route("**/*", only_local)
    page = await context.new_page()
    errors = console_errors(page)  # a CSP violation is a console error too
    response = await page.goto(f"{api.base}/docs")
    assert response is not None and response.ok
    assert "script-src 'self'" in response.headers["content-security-policy"]

    settings_op = page.locator("#operations-settings-get__api_v1_settings")
    await expect(settings_op).to_be_visible()
    await expect(page.locator("#operations-notices-post__api_v1_notices")).to_be_visible()
    await expect(page.locator("#operations-topics-get__api_v1_topics_topic_stream")
                 ).to_be_visible()
    await shot(page, "listed")

    await page.locator("button.authorize").first.click()
    dialog = page.locator(".dialog-ux")
    await dialog.locator("input").first.fill(api.service_token)
    await dialog.locator("button.modal-btn.authorize").click()
    await expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
    await dialog.locator("button.btn-done").click()

    await settings_op.locator(".opblock-summary").first.click()
    # the query parameters carry their types: the limit's bounds are shown
    await expect(settings_op.locator(".parameters")).to_contain_text("maximum: 500")
    await settings_op.get_by_role("button", name="Try it out").click()
    await settings_op.get_by_role("button", name="Execute").click()
    live = settings_op.locator(".live-responses-table")
    await expect(live.locator("tbody .response-col_status")).to_have_text("200")
    await expect(live).to_contain_text("docs-try-it")
    await shot(page, "tried", full_page=True)

    assert any(u.endswith("/openapi.json") for u in asked), asked
    assert any("/api/v1/settings" in u for u in asked), asked
    assert outside == [], outside
    assert not errors, errors
