"""A page trades its user token for the cookie `POST /api/v1/me/session` sets, in real Chromium:
the browser keeps it HttpOnly (no script reads it), sends it on an EventSource opened with
no token in the URL, and drops it after `DELETE /api/v1/me/session`."""

from __future__ import annotations

import time

import pytest
from browser_support import K, add_users

pytestmark = pytest.mark.browser

OPEN = """async (token) => (await fetch("/api/v1/me/session", {method: "POST",
    headers: {Authorization: `Bearer ${token}`}})).status"""
LISTEN = """() => { window.titles = []; window.counted = false;
    const es = new EventSource("/api/v1/me/stream");
    es.addEventListener("count", () => { window.counted = true; });
    es.addEventListener("notice", (e) => window.titles.push(JSON.parse(e.data).title)); }"""
CLOSE = """async () => (await fetch("/api/v1/me/session", {method: "DELETE"})).status"""


async def _session_cookies(context, base: str) -> list[dict]:
    return [c for c in await context.cookies(base) if c["name"] == "vestnik_token"]


async def test_page_streams_with_the_httponly_cookie_and_logs_out(api, redis, start_proc,
                                                                  user_token, context):
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    page = await context.new_page()
    await page.goto(f"{api.base}/healthz")  # any page of the api's origin
    assert await page.evaluate(OPEN, user_token("1", ttl=600)) == 204
    (cookie,) = await _session_cookies(context, api.base)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    assert not cookie["secure"]  # served over plain http here
    assert abs(cookie["expires"] - (time.time() + 600)) < 60, cookie  # lives as the token
    assert "vestnik_token" not in await page.evaluate("document.cookie")  # no script reads it

    await page.evaluate(LISTEN)
    await page.wait_for_function("window.counted")
    await redis.xadd(K.notices, {"alert": "disk", "title": "Disk full on db-1",
                                 "severity": "warning", "recipients": "1"})
    await page.wait_for_function("window.titles.length === 1")
    assert await page.evaluate("window.titles") == ["Disk full on db-1"]

    assert await page.evaluate(CLOSE) == 204  # the cookie alone, from our own origin
    assert await _session_cookies(context, api.base) == []
