"""The ASGI application: `create_app(config)` builds routes and a lifespan that opens
Redis and starts this process's long-lived parts (the topic hub, the live user hub)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import OutOfMemoryError, ResponseError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vestnik.app import ops, topics
from vestnik.app.alert_settings import router as alert_settings_router
from vestnik.app.context import Ctx
from vestnik.app.deliveries import router as deliveries_router
from vestnik.app.errors import HANDLERS
from vestnik.app.http import Router, json_response, openapi
from vestnik.app.notices import router as notices_router
from vestnik.app.session import router as session_router
from vestnik.app.silences import router as silences_router
from vestnik.app.snooze import router as snooze_router
from vestnik.app.sources import router as sources_router
from vestnik.streams.center import UserHub
from vestnik.streams.config import Config
from vestnik.streams.gc_tuning import settle_gc
from vestnik.streams.keys import CENTER_GROUP, Keys
from vestnik.streams.notifier import Hydrator, TopicHub
from vestnik.streams.redis import connect, wait_ready

log = logging.getLogger("vestnik.api")
VERSION = "0.1.0"


def routers() -> list[Router]:
    return [ops.router, topics.router, alert_settings_router, deliveries_router, notices_router,
            sources_router, session_router, silences_router, snooze_router]


async def ensure_group(ctx: Ctx) -> None:
    """The `center` group on every ingest stream (VESTNIK_INGEST_PARTITIONS), so what the
    api adds before a center first starts is read from the start."""
    for stream in ctx.keys.ingest_streams:
        try:
            await ctx.redis.xgroup_create(stream, CENTER_GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" in str(e):
                continue
            # Redis full (OOM) refuses XGROUP CREATE even for an existing group: start
            # anyway (reads work; writes answer 503 until memory frees, /readyz tells the
            # group state)
            if not isinstance(e, OutOfMemoryError):
                raise
            log.warning("redis is full (%s): consumer group on %s not checked", e, stream)


def describe_plain_routes(spec: dict, routes: list) -> None:
    """Routes added outside a Router (the web pages) still appear in /openapi.json, as pages.

    A route that is not meant to be described says so with include_in_schema=False.
    """
    for r in routes:
        if not isinstance(r, Route) or not r.include_in_schema:
            continue
        media, schema = (("application/json", {}) if r.path.endswith(".json")
                         else ("text/html", {"type": "string"}))
        doc = (getattr(r.endpoint, "__doc__", None) or f"The {r.path} page").strip()
        for method in sorted((r.methods or set()) - {"HEAD"}):
            spec["paths"].setdefault(r.path, {}).setdefault(method.lower(), {
                "summary": doc.splitlines()[0], "tags": ["pages"],
                "operationId": f"{method.lower()}_{r.name}_{r.path}".replace("/", "_")
                .replace(".", "_").replace("-", "_"),
                "responses": {"200": {"description": "OK",
                                      "content": {media: {"schema": schema}}}},
            })


def create_app(config: Config, *, demo: bool = False) -> Starlette:
    """The api; `demo` (only `vestnik up --demo`) adds the `/demo/*` pages and data."""
    if not config.redis_url:
        raise ValueError("redis_url is required (vestnik up starts a private Redis)")
    all_routers = routers()
    spec = openapi(all_routers, VERSION)
    spec["paths"]["/openapi.json"] = {"get": {
        "summary": "This OpenAPI document", "tags": ["ops"], "operationId": "get_openapi_json",
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = connect(config.redis_url, name="vestnik-api", timeout=config.redis_timeout)
        await wait_ready(redis)
        ctx = Ctx(config, Keys.of(config), redis)
        await ensure_group(ctx)
        hydrator = Hydrator(redis, config.hydrate, config.hydrate_hosts)
        hub = TopicHub(config.redis_url, redis, ctx.keys, hydrator, maxlen=config.topic_maxlen)
        ctx.parts["topics"] = hub
        await hub.start()
        users = UserHub(config.redis_url, ctx.keys)
        ctx.parts["users"] = users
        await users.start()
        app.state.ctx = ctx
        settle_gc()
        try:
            yield
        finally:
            await users.stop()
            await hub.stop()
            await hydrator.aclose()
            await redis.aclose()

    async def openapi_json(request: Request) -> Response:
        return json_response(spec)

    routes = [r for router in all_routers for r in router.routes]
    routes.append(Route("/openapi.json", openapi_json, methods=["GET"]))
    from vestnik.app.pages import routes as page_routes  # the inbox, admin and demo pages

    routes += page_routes(demo)
    describe_plain_routes(spec, routes)
    middleware = []
    if config.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=config.cors_origins, allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "Idempotency-Key",
                           "Last-Event-ID"],
            expose_headers=["ETag"],
        ))
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers=HANDLERS)
