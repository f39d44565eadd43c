"""The browser session: trade a user token for the HttpOnly `vestnik_token` cookie, so a page
opens its SSE streams without putting the token in a URL (logs, Referers, history), and
page scripts (or an injected one) never read it.

`POST /me/session` takes the token from the Authorization header only: a cookie or a URL
cannot renew or replace itself. The cookie lives exactly as long as the token (`Max-Age` =
seconds until `exp`), is `SameSite=Lax` (not sent on cross-site POSTs), and `Secure` when
the browser reached us over https (directly or through a proxy's X-Forwarded-Proto).
`DELETE /me/session` clears it; a cookie-only DELETE is a write, so it needs a same origin.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from vestnik.app.context import Ctx
from vestnik.app.http import Router, request_scheme
from vestnik.app.tokens import Principal

router = Router("session")

COOKIE = "vestnik_token"


def _with_cookie(request: Request, value: str, max_age: int) -> Response:
    """204 setting the cookie with the attributes every answer of this module uses."""
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.set_cookie(COOKIE, value, max_age=max_age, path="/", httponly=True,
                        samesite="Lax", secure=request_scheme(request) == "https")
    return response


@router.route("POST", "/api/v1/me/session", summary="Set the vestnik_token cookie "
              "(HttpOnly, SameSite=Lax, Secure over https) to this Bearer token, until its exp",
              auth="user", status=204, cookie=False)
async def open_session(request: Request, ctx: Ctx, principal: Principal) -> Response:
    assert principal.exp is not None  # a user token always has one
    return _with_cookie(request, principal.token, max(0, int(principal.exp - time.time())))


@router.route("DELETE", "/api/v1/me/session", summary="Clear the vestnik_token cookie",
              auth="user", status=204)
async def close_session(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return _with_cookie(request, "", 0)
