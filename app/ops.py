"""Operations routes: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response

from vestnik.app.context import Ctx
from vestnik.app.http import Router, json_response
from vestnik.app.tokens import Principal
from vestnik.streams.keys import CENTER_GROUP
from vestnik.streams.ops_http import Health
from vestnik.streams.redis import RETRYABLE

router = Router("ops")


@router.route("GET", "/healthz", summary="The process is alive", auth="none", response=Health)
async def healthz(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return json_response(Health("ok"))


@router.route("GET", "/readyz", summary="Redis reachable and consumer groups exist",
              auth="none", response=Health, bodies={503: Health})
async def readyz(request: Request, ctx: Ctx, principal: Principal) -> Response:
    checks: dict[str, str] = {}
    try:
        await ctx.redis.ping()
        checks["redis"] = "ok"
        missing = []
        for stream in ctx.keys.ingest_streams:  # every ingest partition
            groups = await ctx.redis.xinfo_groups(stream)
            names = {(g.get("name") or b"").decode() if isinstance(g.get("name"), bytes)
                     else g.get("name") for g in groups}
            if CENTER_GROUP not in names:
                missing.append(stream)
        checks["group:center"] = f"missing on {', '.join(missing)}" if missing else "ok"
    except ResponseError as e:
        checks.setdefault("redis", "ok")
        checks["group:center"] = f"missing ({e})"
    except RETRYABLE as e:
        checks["redis"] = f"unreachable ({e})"
    hub = ctx.parts.get("topics")
    checks["topic-hub"] = "ok" if hub is not None and hub.ready.is_set() else "starting"
    ok = all(v == "ok" for v in checks.values())
    return json_response(Health("ok" if ok else "unavailable", checks), 200 if ok else 503)


@router.route("GET", "/metrics", summary="Prometheus metrics", auth="none",
              media_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
