"""Topic routes: publish over HTTP, read the snapshot, follow the live stream (SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from vestnik.app.context import Ctx
from vestnik.app.http import Router, check_topic_read, json_response, read_body
from vestnik.app.query import query_of
from vestnik.app.sse import LAST_EVENT_ID, QueryToken, frame, item_frame, sse_response
from vestnik.app.tokens import Principal
from vestnik.streams.errors import BadRequest
from vestnik.streams.ids import is_stream_id, parse_stream_id
from vestnik.streams.metrics import EVENTS_DELIVERED, SSE_CLIENTS
from vestnik.streams.notifier import Subscription, TopicHub, check_topic, publish, read_snapshot
from vestnik.streams.schemas import EventIn, Published, Snapshot, TopicEvent

router = Router("topics")


class StreamQuery(msgspec.Struct):
    """Query of `GET /api/v1/topics/{topic}/stream`."""

    last_event_id: Annotated[str, msgspec.Meta(
        pattern=r"^[0-9]{1,20}-[0-9]{1,20}(?!\n)$",
        description="resume after this stream id, e.g. `1700000000000-0` "
                    "(the Last-Event-ID header wins)")] | None = None
    token: QueryToken | None = None


def hub_of(ctx: Ctx) -> TopicHub:
    return ctx.parts["topics"]


@router.route("POST", "/api/v1/topics/{topic}/events", summary="Publish an entity event",
              auth="service", body=EventIn, response=Published, status=201)
async def publish_event(request: Request, ctx: Ctx, principal: Principal) -> Response:
    topic = check_topic(request.path_params["topic"])
    body = await read_body(request, EventIn, ctx)
    event = TopicEvent(op=body.op, id=body.id, data=body.data, src=body.src)
    sid = await publish(ctx.appends, ctx.keys, topic, event,
                        maxlen=ctx.config.topic_maxlen, via="http")
    return json_response(Published(sid), 201)


@router.route("GET", "/api/v1/topics/{topic}", summary="Current state of every entity",
              auth="any", response=Snapshot)
async def snapshot(request: Request, ctx: Ctx, principal: Principal) -> Response:
    topic = check_topic(request.path_params["topic"])
    check_topic_read(ctx, principal, topic)
    await hub_of(ctx).catch_up(topic)
    return json_response(await read_snapshot(ctx.redis, ctx.keys, topic))


@router.route("GET", "/api/v1/topics/{topic}/stream", summary="Live entity events (SSE)",
              auth="any", stream=True, query=StreamQuery, headers=LAST_EVENT_ID)
async def stream(request: Request, ctx: Ctx, principal: Principal) -> Response:
    topic = check_topic(request.path_params["topic"])
    check_topic_read(ctx, principal, topic)
    after = request.headers.get("last-event-id") or query_of(request, StreamQuery).last_event_id
    if after is not None and not is_stream_id(after):
        raise BadRequest("Last-Event-ID must be a stream id such as 1700000000000-0",
                         field="Last-Event-ID")
    hub = hub_of(ctx)
    # subscribe before the response starts: once the client sees the headers, nothing
    # published from then on can be missed
    sub = await hub.subscribe(topic)
    try:
        start = await hub.tip(topic) if after is None else after
    except BaseException:
        hub.unsubscribe(sub)
        raise
    return sse_response(ctx.config, _topic_frames(hub, sub, start, resume=after is not None))


async def _topic_frames(hub: TopicHub, sub: Subscription, after: str, *, resume: bool
                        ) -> AsyncIterator[bytes]:
    topic = sub.topic
    SSE_CLIENTS.labels("topic").inc()
    delivered = EVENTS_DELIVERED.labels("topic")
    try:
        if resume:
            for _ in range(10_000):  # pages of 1,000: a backlog of at most 10M events
                items, gap = await hub.backlog(topic, after)
                if gap:
                    yield frame(b'{"reason":"trimmed"}', event="reset")
                for item in items:
                    yield item_frame(item, "entity")
                if not items:
                    break
                after = items[-1].sid
                delivered.inc(len(items))
        last = parse_stream_id(after)
        while True:
            item = await sub.get()
            if item is None:  # fell behind or the server stops: the client resumes
                return
            if item.key <= last:
                continue
            last = item.key
            delivered.inc()
            yield item_frame(item, "entity")
    finally:
        hub.unsubscribe(sub)
        SSE_CLIENTS.labels("topic").dec()
