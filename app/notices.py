"""Notice routes: ingest (`POST /notices`, `POST /notices/resolve`, service token) and the
user's inbox (`/me/*`, user token): the feed, the unread count, read / unread / archive,
and the live stream (SSE).

`GET /me/stream` events:
- `count` `{count, seq}` first: the unread count and the user's last feed seq;
- `notice` (SSE id = the user's feed seq) with the feed item: the notice's fields plus
  `seq`, `read`, `archived`;
- `read` `{ids, read, count, archived?}` when read state changes (in any tab);
- `notice-update` with the notice, when a dedup repeat folded into it (`repeat`,
  `last_seen`) or its incident was resolved (`status`, `resolved_at`);
- `reset` `{seq}` when Last-Event-ID is ahead of the feed (the store was reset).
A reconnect with Last-Event-ID (or `?last_event_id=`) replays exactly the missed
feed entries; live entries at or below the last sent seq are dropped, a jump in seq
is filled from the feed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from vestnik.app.context import Ctx
from vestnik.app.http import Router, json_response, read_body
from vestnik.app.query import query_of
from vestnik.app.sse import LAST_EVENT_ID, QueryToken, frame, sse_response
from vestnik.app.tokens import Principal
from vestnik.streams.center import (
    FEED_LIMIT,
    RESYNC,
    Count,
    FeedPage,
    Inbox,
    Marked,
    MarkedAll,
    UserHub,
    UserSub,
)
from vestnik.streams.errors import BadRequest
from vestnik.streams.fanout import LiveItem
from vestnik.streams.metrics import EVENTS_DELIVERED, SSE_CLIENTS
from vestnik.streams.schemas import (
    Accepted,
    NoticeIn,
    Queued,
    ResolveIn,
    check_recipients,
    json_encode,
)

router = Router("notices")

BACKLOG_PAGE = 500
MAX_BACKLOG_PAGES = 1000  # bounded replay: at most 500,000 entries per resume


class Head(msgspec.Struct):
    count: int
    seq: int


FeedSeq = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


class FeedQuery(msgspec.Struct):
    """Query of `GET /api/v1/me/notices`."""

    unread: Annotated[bool, msgspec.Meta(description="only unread ones")] = False
    cursor: Annotated[FeedSeq, msgspec.Meta(
        description="the `next` of the previous page")] | None = None
    limit: Annotated[int, msgspec.Meta(
        ge=1, le=FEED_LIMIT, description="items per page (default 50)")] = 50


class StreamQuery(msgspec.Struct):
    """Query of `GET /api/v1/me/stream`."""

    last_event_id: Annotated[FeedSeq, msgspec.Meta(
        description="resume after this feed seq (the Last-Event-ID header wins)")] | None = None
    token: QueryToken | None = None


def inbox_of(ctx: Ctx) -> Inbox:
    return ctx.part("inbox", lambda: Inbox(ctx.redis, ctx.keys))


@router.route("POST", "/api/v1/notices", summary="Send a notice (to the ingest stream)",
              auth="service", body=NoticeIn, response=Accepted, status=202, errors=(409,),
              headers={"Idempotency-Key": "1-200 characters: a repeat with the same key "
                                          "answers the first notice's id"})
async def send_notice(request: Request, ctx: Ctx, principal: Principal) -> Response:
    body = await read_body(request, NoticeIn, ctx)
    check_recipients(body, ctx.config.max_recipients)
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        raise BadRequest("Idempotency-Key must be 1-200 characters", field="Idempotency-Key")
    nid = await ctx.ingest.send(body, via="http", idempotency_key=key)
    return json_response(Accepted(nid), 202)


@router.route("POST", "/api/v1/notices/resolve",
              summary="Resolve an incident (the firing notice of an alert's dedup_key)",
              auth="service", body=ResolveIn, response=Queued, status=202)
async def resolve_incident(request: Request, ctx: Ctx, principal: Principal) -> Response:
    """Queued behind the notices sent before it: the center applies it in stream order."""
    body = await read_body(request, ResolveIn, ctx)
    return json_response(Queued(await ctx.ingest.resolve(body)), 202)


@router.route("GET", "/api/v1/me/notices", summary="My notices, newest first, paged",
              auth="user", response=FeedPage, query=FeedQuery)
async def my_notices(request: Request, ctx: Ctx, principal: Principal) -> Response:
    q = query_of(request, FeedQuery)
    page = await inbox_of(ctx).page(principal.uid, unread=q.unread, cursor=q.cursor,
                                    limit=q.limit)
    return json_response(page)


@router.route("GET", "/api/v1/me/unread-count", summary="My unread count", auth="user",
              response=Count)
async def unread_count(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return json_response(Count(await inbox_of(ctx).count(principal.uid)))


async def _mark(request: Request, ctx: Ctx, principal: Principal, action: str) -> Response:
    nid = request.path_params["id"]
    return json_response(await inbox_of(ctx).mark(principal.uid, nid, action))


@router.route("POST", "/api/v1/me/notices/{id}/read", summary="Mark one notice read",
              auth="user", response=Marked)
async def mark_read(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return await _mark(request, ctx, principal, "read")


@router.route("POST", "/api/v1/me/notices/{id}/unread", summary="Mark one notice unread",
              auth="user", response=Marked)
async def mark_unread(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return await _mark(request, ctx, principal, "unread")


@router.route("POST", "/api/v1/me/notices/{id}/archive",
              summary="Archive one notice (also marks it read)", auth="user", response=Marked)
async def archive(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return await _mark(request, ctx, principal, "archive")


@router.route("POST", "/api/v1/me/notices/read-all", summary="Mark all my notices read",
              auth="user", response=MarkedAll)
async def read_all(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return json_response(await inbox_of(ctx).read_all(principal.uid))


@router.route("GET", "/api/v1/me/stream", summary="My live notices (SSE)", auth="user",
              stream=True, query=StreamQuery, headers=LAST_EVENT_ID)
async def my_stream(request: Request, ctx: Ctx, principal: Principal) -> Response:
    uid = principal.uid
    raw = request.headers.get("last-event-id")
    after = query_of(request, StreamQuery).last_event_id
    if raw:
        try:
            after = int(raw)
        except ValueError:
            raise BadRequest("Last-Event-ID must be a feed seq (an integer)",
                             field="Last-Event-ID") from None
        if after < 0:
            raise BadRequest("Last-Event-ID must be >= 0", field="Last-Event-ID")
    hub: UserHub = ctx.parts["users"]
    inbox = inbox_of(ctx)
    # subscribe before reading anything: from here on nothing published can be missed
    sub = await hub.subscribe(uid)
    try:
        count, tip = await inbox.head(uid)
    except BaseException:
        await hub.unsubscribe(sub)
        raise
    return sse_response(ctx.config, _frames(hub, inbox, sub, count, tip, after))


def _notice_frame(item: LiveItem) -> bytes:
    if item.frame is None:
        item.frame = frame(item.payload, event=item.event, id=str(item.seq))
    return item.frame


async def _frames(hub: UserHub, inbox: Inbox, sub: UserSub, count: int, tip: int,
                  after: int | None) -> AsyncIterator[bytes]:
    uid = sub.uid
    SSE_CLIENTS.labels("user").inc()
    delivered = EVENTS_DELIVERED.labels("user")
    try:
        yield frame(json_encode(Head(count, tip)), event="count")
        if after is not None and after > tip:  # the feed was reset (e.g. Redis flushed)
            yield frame(json_encode({"seq": tip}), event="reset")
            after = tip
        last = tip if after is None else after
        if after is not None:
            async for f, seq in _backlog(inbox, uid, last):
                last = seq
                delivered.inc()
                yield f
        while True:
            item = await sub.get()
            if item is None:  # fell behind or the server stops: the client resumes
                return
            if item is RESYNC:
                # the count and its seq as of one moment first, then the feed up to that
                # seq: a notice stored after it comes live (seq > the count's) and is
                # counted once. (Counting after the backlog counted the notices stored in
                # between in the count and again as live items: a badge at twice the truth.)
                count, tip = await inbox.head(uid)
                async for f, seq in _backlog(inbox, uid, last, upto=tip):
                    last = seq
                    delivered.inc()
                    yield f
                last = max(last, tip)
                yield frame(json_encode(Head(count, last)), event="count")
                continue
            if item.seq:
                if item.seq <= last:
                    continue
                if item.seq > last + 1:  # a jump: fill the gap from the feed
                    async for f, seq in _backlog(inbox, uid, last, upto=item.seq - 1):
                        last = seq
                        delivered.inc()
                        yield f
                last = item.seq
                delivered.inc()
                yield _notice_frame(item)
            else:
                if item.frame is None:
                    item.frame = frame(item.payload, event=item.event)
                delivered.inc()
                yield item.frame
    finally:
        await hub.unsubscribe(sub)
        SSE_CLIENTS.labels("user").dec()


async def _backlog(inbox: Inbox, uid: str, last: int, upto: int | None = None
                   ) -> AsyncIterator[tuple[bytes, int]]:
    """Feed items after `last` (up to `upto`), oldest first, with the new last seq. A
    silenced notice (no payload) is passed over: it is history, never pushed live."""
    for _ in range(MAX_BACKLOG_PAGES):
        items = await inbox.after(uid, last, BACKLOG_PAGE)
        for seq, payload in items:
            if upto is not None and seq > upto:
                return
            last = seq
            if payload is not None:
                yield frame(payload, event="notice", id=str(seq)), last
        if len(items) < BACKLOG_PAGE:
            return
