"""The web pages `vestnik api` serves: the inbox (`/`), the admin page (`/admin`), the API
reference (`/docs`, Swagger UI from app/static/vendor/) and the static files behind them,
including the embeddable widget `/static/vestnik-inbox.js`; under `vestnik up --demo` also
the live entity demo (`/demo/vms`) and the demo mailbox (`/demo/mail`).

The pages are plain HTML and ES modules (no build step); they talk to the same JSON API
and SSE streams as any product would. Tokens travel in the URL only once (`?token=`): the
page moves them to sessionStorage and removes them from the address bar, and every page
answers with `Referrer-Policy: no-referrer` so a token never leaks to a linked site.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from vestnik.app.context import Ctx
from vestnik.app.http import json_response
from vestnik.streams.keys import Keys

STATIC = Path(__file__).resolve().parent / "static"

PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # the pages load only their own files and talk only to this origin; notice text is
    # always set as text, and this makes an injected script inert all the same
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'self'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
}

# the demo's mailbox (written by app.demo's SMTP sink, read by /demo/mail.json)
MAILBOX_MAX = 200


def _page(name: str, doc: str):
    path = STATIC / name

    async def page(request: Request) -> Response:
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    page.__name__ = f"page_{path.stem}"
    page.__doc__ = doc  # the summary of the page in /openapi.json
    return page


async def demo_mail(request: Request) -> Response:
    """Mail received by the demo SMTP sink, newest first (`on`: `up --demo` runs)."""
    ctx: Ctx = request.app.state.ctx
    key = Keys(ctx.config.prefix).demo_mail
    raw = request.query_params.get("limit", "")
    limit = max(1, min(MAILBOX_MAX, int(raw))) if raw.isascii() and raw.isdigit() else MAILBOX_MAX
    async with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.exists(key + ":on")
        pipe.lrange(key, 0, limit - 1)
        on, raw = await pipe.execute()
    # `on`: whether the sink runs now (it may still be starting)
    return json_response({"on": bool(on), "items": [msgspec.json.decode(m) for m in raw]},
                         headers={"Cache-Control": "no-store"})


class Static(StaticFiles):
    """Static files, readable from any origin: the widget script is loaded by other sites
    (a module script is fetched in CORS mode), and nothing here is private."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"access-control-allow-origin" not in names:
                    headers.append((b"access-control-allow-origin", b"*"))
                headers.append((b"cache-control", b"no-cache"))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def _site(demo: bool):
    body = msgspec.json.encode({"demo": demo})

    async def site(request: Request) -> Response:
        """What the pages show: `demo` is true under `vestnik up --demo` (its links)"""
        return Response(body, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    return site


def routes(demo: bool = False) -> list[BaseRoute]:
    """The pages; `/demo/*` only under `vestnik up --demo` (elsewhere they answer 404: a
    production api shows no demo data, nor the demo mailbox of a shared Redis)."""
    pages: list[BaseRoute] = [
        Route("/", _page("index.html", "The user's inbox (HTML; takes ?token= once)"),
              methods=["GET", "HEAD"]),
        Route("/admin", _page("admin.html", "Alert settings and delivery logs (HTML)"),
              methods=["GET", "HEAD"]),
        Route("/docs", _page("docs.html", "Interactive API reference (Swagger UI, no CDN)"),
              methods=["GET", "HEAD"]),
        Route("/site.json", _site(demo), methods=["GET"]),
        Mount("/static", app=Static(directory=STATIC), name="static"),
    ]
    if demo:
        pages[3:3] = [
            Route("/demo/vms", _page("vms.html", "Live table of topic `vm` (HTML)"),
                  methods=["GET", "HEAD"]),
            Route("/demo/mail", _page("mail.html", "Mail received by the demo SMTP sink (HTML)"),
                  methods=["GET", "HEAD"]),
            Route("/demo/mail.json", demo_mail, methods=["GET"]),
        ]
    return pages
