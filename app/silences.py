"""Admin silences (`/api/v1/silences`, service token): while one is active, the notices it
matches are stored (marked `silenced`) but neither pushed live nor forwarded. Storage,
validation and matching live in streams.center.silences."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from vestnik.app.context import Ctx
from vestnik.app.http import Router, json_response, read_body
from vestnik.app.tokens import Principal
from vestnik.streams.center import SilenceStore
from vestnik.streams.schemas import Silence, SilenceIn, SilenceList

router = Router("silences")

ITEM = "/api/v1/silences/{id}"


def store_of(ctx: Ctx) -> SilenceStore:
    return ctx.part("silences", lambda: SilenceStore(ctx.redis, ctx.keys))


@router.route("POST", "/api/v1/silences", summary="Create a silence", auth="service",
              body=SilenceIn, response=Silence, status=201)
async def create_silence(request: Request, ctx: Ctx, principal: Principal) -> Response:
    body = await read_body(request, SilenceIn, ctx)
    return json_response(await store_of(ctx).create(body), 201)


@router.route("GET", "/api/v1/silences",
              summary="Every silence: active, then pending, then expired (kept 7 days)",
              auth="service", response=SilenceList)
async def list_silences(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return json_response(await store_of(ctx).list())


@router.route("GET", ITEM, summary="One silence", auth="service", response=Silence)
async def get_silence(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return json_response(await store_of(ctx).get(request.path_params["id"]))


@router.route("DELETE", ITEM, summary="Expire a silence now (it is kept, expired, 7 days)",
              auth="service", response=Silence, errors=(409,))
async def expire_silence(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return json_response(await store_of(ctx).expire(request.path_params["id"]))
