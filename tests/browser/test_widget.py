"""The widget embedded in a product's page served from another origin: one script tag and
the element, CORS for the configured origins (and nothing for the others)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from browser_support import K, add_users, console_errors
from playwright.async_api import expect

from support import ROOT, eventually
from vestnik.streams.redis_server import free_port

pytestmark = pytest.mark.browser

def guide_snippet() -> str:
    """The guide's embed snippet, so the documented lines are the tested ones."""
    text = (ROOT / "docs" / "guide.md").read_text()
    block = text.split("**Embed the inbox in your app**", 1)[1].split("```html\n", 1)[1]
    return block.split("```", 1)[0]


SNIPPET = (guide_snippet().replace("https://vestnik.example.com", "{api}")
           .replace("USER_JWT", "{token}"))
PRODUCT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Acme Cloud</title>
<style>
  body {{ margin: 0; font: 14px/1.5 system-ui, sans-serif; background: #fafafa; color: #222; }}
  header {{ display: flex; align-items: center; gap: 16px; padding: 10px 24px; background: #fff;
           border-bottom: 1px solid #e5e5e5; }}
  header b {{ font-size: 16px; }} header .sp {{ flex: 1; }}
  main {{ padding: 24px; color: #666; }}
</style></head>
<body>
  <header><b>Acme Cloud</b><span>Servers</span><span>Billing</span><span class="sp"></span>
    SNIPPET</header>
  <main>The product's own single-page app.</main>
</body></html>""".replace("SNIPPET", SNIPPET)


def _serve(port: int, html: str) -> ThreadingHTTPServer:
    body = html.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def product_site() -> Iterator[Callable[..., str]]:
    """Factory: serve one HTML page from a local port (another origin); its base URL."""
    servers: list[ThreadingHTTPServer] = []

    def serve(html: str, port: int | None = None) -> str:
        server = _serve(port or free_port(), html)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


async def test_widget_from_another_origin_with_cors(start_api, redis, start_proc, user_token,
                                                    product_site, context, shot):
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    # the product's origin must be configured before the api starts: reserve its port
    port = free_port()
    api = start_api(VESTNIK_CORS_ORIGINS=f"http://127.0.0.1:{port}")
    html = PRODUCT_PAGE.format(api=api.base, token=user_token("1"))
    site = product_site(html, port)

    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(site + "/")
    widget = page.locator("vestnik-inbox")
    await expect(widget).to_have_attribute("state", "empty")
    await redis.xadd(K.notices, {"alert": "disk", "title": "Disk 95% on web-1",
                                 "severity": "warning", "recipients": "1",
                                 "body": "/var is 95% full."})
    badge = widget.locator(".bell .badge")
    await eventually(lambda: _unread_is(redis, "1", 1), what="stored for the user")
    await expect(badge).to_have_text("1")
    await expect(widget.get_by_role("button", name="Notifications, 1 unread")).to_be_visible()
    await shot(page, "badge")
    # the bell opens the panel; Escape closes it and gives focus back to the bell
    await widget.locator(".bell").click()
    item = widget.locator("li", has_text="Disk 95% on web-1")
    await expect(item).to_be_visible()
    await expect(item.locator(".hit")).to_be_focused()
    await shot(page, "open")
    await page.keyboard.press("Escape")
    await expect(widget.locator(".panel")).to_be_hidden()
    await expect(widget.locator(".bell")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(item).to_be_visible()
    # reading it crosses origins too (POST with a bearer token: a preflighted request)
    await item.locator(".hit").click()
    await expect(badge).to_be_hidden()
    await expect(item).not_to_have_class("unread")
    await eventually(lambda: _unread_is(redis, "1", 0), what="read on the server")

    # a linked notice: the SPA cancels `vestnik-open` and routes itself (no page load)
    await page.evaluate("""document.querySelector("vestnik-inbox").addEventListener(
        "vestnik-open", (e) => { e.preventDefault(); window.routed = e.detail.notice.link; })""")
    await redis.xadd(K.notices, {"alert": "vm", "title": "web-7 is running", "recipients": "1",
                                 "link": site + "/servers/7"})
    linked = widget.locator("li", has_text="web-7 is running")
    await linked.locator(".hit").click()
    await expect(badge).to_be_hidden()
    assert await page.evaluate("window.routed") == site + "/servers/7"
    assert page.url == site + "/"
    assert not errors, errors

    # an origin that is not configured gets nothing: the widget shows its error state
    other = await context.new_page()
    await other.goto(product_site(html) + "/")
    await expect(other.locator("vestnik-inbox")).to_have_attribute("state", "error")
    await other.locator("vestnik-inbox .bell").click()
    await expect(other.locator("vestnik-inbox .state")).to_contain_text(
        "Could not load notifications")
    await shot(other, "origin-refused")


async def test_widget_with_cookie_credentials_cross_origin(start_api, redis, start_proc,
                                                           user_token, product_site, context,
                                                           shot):
    """A product that logs users in with the `vestnik_token` cookie of the Vestnik host:
    `with-credentials` sends it cross-origin (fetch and EventSource), no token attribute."""
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    port = free_port()
    api = start_api(VESTNIK_CORS_ORIGINS=f"http://127.0.0.1:{port}")
    await context.add_cookies([{"name": "vestnik_token", "value": user_token("1"),
                                "url": api.base}])
    html = PRODUCT_PAGE.replace(' token="{token}"', " with-credentials").format(api=api.base)
    site = product_site(html, port)
    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(site + "/")
    widget = page.locator("vestnik-inbox")
    await expect(widget).to_have_attribute("state", "empty")
    await redis.xadd(K.notices, {"alert": "disk", "title": "Cookie-borne notice",
                                 "severity": "info", "recipients": "1"})
    await expect(widget.locator(".bell .badge")).to_have_text("1")
    await widget.locator(".bell").click()
    await widget.locator("li", has_text="Cookie-borne notice").locator(".hit").click()
    await expect(widget.locator(".bell .badge")).to_be_hidden()
    await eventually(lambda: _unread_is(redis, "1", 0), what="read on the server")
    await shot(page, "read")
    assert not errors, errors


async def test_cookie_write_from_an_unlisted_origin_is_refused(start_api, redis, start_proc,
                                                               user_token, product_site,
                                                               context):
    """CSRF: another port of the same host is the same site, so the browser sends the
    `vestnik_token` cookie with a form POST from it; the api refuses it (403 naming Origin)
    and the notice stays unread."""
    await add_users(redis, ("1", "Alice"))
    start_proc("center", "--no-forward")
    api = start_api(VESTNIK_CORS_ORIGINS=f"http://127.0.0.1:{free_port()}")
    await context.add_cookies([{"name": "vestnik_token", "value": user_token("1"),
                                "url": api.base}])
    await redis.xadd(K.notices, {"alert": "disk", "title": "Keep me unread",
                                 "severity": "info", "recipients": "1"})
    await eventually(lambda: _unread_is(redis, "1", 1), what="the notice stored")
    evil = product_site(f"""<!doctype html><form method="post"
        action="{api.base}/api/v1/me/notices/read-all"></form>
        <script>document.forms[0].submit()</script>""")
    page = await context.new_page()
    async with page.expect_response(lambda r: r.url.endswith("/read-all")) as answer:
        await page.goto(evil + "/")
    response = await answer.value
    assert response.status == 403, await response.text()
    assert (await response.json())["path"] == "Origin"
    assert await _unread_is(redis, "1", 1)


async def _unread_is(redis, uid: str, n: int) -> bool:
    return await redis.zcard(K.feed(uid)) - await redis.zcard(K.read(uid)) == n


async def test_widget_popover_pages_as_it_scrolls(start_api, redis, start_proc, user_token,
                                                  product_site, context, shot):
    """In the popover the panel itself scrolls: its bottom loads the next page."""
    await add_users(redis, ("1", "Alice"))
    for i in range(25):
        await redis.xadd(K.notices, {"alert": "disk", "title": f"Notice {i:02d}",
                                     "severity": "info", "recipients": "1"})
    start_proc("center", "--no-forward")
    await eventually(lambda: _feed_is(redis, "1", 25), what="stored")
    port = free_port()
    api = start_api(VESTNIK_CORS_ORIGINS=f"http://127.0.0.1:{port}")
    site = product_site(PRODUCT_PAGE.format(api=api.base, token=user_token("1")), port)
    page = await context.new_page()
    errors = console_errors(page)
    await page.goto(site + "/")
    widget = page.locator("vestnik-inbox")
    await expect(widget.locator(".bell .badge")).to_have_text("25")
    await widget.locator(".bell").click()
    items = widget.locator("li")
    await expect(items).to_have_count(20)
    await widget.locator(".scroll").evaluate("el => el.scrollTo(0, el.scrollHeight)")
    await expect(items).to_have_count(25)
    # keyboard: End goes to the oldest, Home back to the newest
    await page.keyboard.press("End")
    await expect(items.last.locator(".hit")).to_be_focused()
    await page.keyboard.press("Home")
    await expect(items.first.locator(".hit")).to_be_focused()
    await shot(page, "popover")
    assert not errors, errors


async def _feed_is(redis, uid: str, n: int) -> bool:
    return await redis.zcard(K.feed(uid)) == n
