"""Server-sent events: frames encoded once per event, one response per client.

sse-starlette does the protocol work (pings, disconnect detection, shutdown);
we hand it pre-encoded frames. A frame built for the first client of an event
is cached on the shared `Item`, so N clients cost one encoding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.requests import Request

from streams.hub import Item

from .context import Ctx


def frame(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE frame; `data` is single-line JSON (msgspec never emits raw newlines)."""
    head = b""
    if id is not None:
        head += b"id: " + id.encode() + b"\n"
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


def item_frame(item: Item, event: str) -> bytes:
    if item.frame is None:
        item.frame = frame(item.payload, event=event, id=item.sid)
    return item.frame


def last_event_id(request: Request) -> str | None:
    """`Last-Event-ID` header (browser reconnects) or `last_event_id` query (first connect)."""
    return request.headers.get("last-event-id") or request.query_params.get("last_event_id")


def sse_response(ctx: Ctx, frames: AsyncIterator[bytes]) -> EventSourceResponse:
    return EventSourceResponse(
        frames,
        ping=ctx.settings.sse_ping,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        send_timeout=30,
    )
