"""What the api answers when Redis fails mid-request in a way redis-py does not wrap: a
socket error (OSError) is retryable like a ConnectionError, so the product sees 503 with
Retry-After and its JSON error body, not a bare 500 (seen once during a Sentinel failover)."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from vestnik.app.errors import HANDLERS


def _app(exc: Exception) -> Starlette:
    async def boom(request):  # type: ignore[no-untyped-def]
        raise exc

    return Starlette(routes=[Route("/x", boom)], exception_handlers=HANDLERS)


@pytest.mark.parametrize("exc", [ConnectionResetError(104, "Connection reset by peer"),
                                 TimeoutError("timed out"), OSError(113, "No route to host")])
async def test_a_raw_socket_error_is_503_with_retry_after(exc: Exception) -> None:
    transport = httpx.ASGITransport(app=_app(exc))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/x")
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"] == "unavailable"


async def test_a_bug_is_still_a_500() -> None:
    transport = httpx.ASGITransport(app=_app(ValueError("a bug")), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/x")
    assert r.status_code == 500
