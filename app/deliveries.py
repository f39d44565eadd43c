"""`GET /api/v1/notices/{id}/deliveries`: every forward attempt of a notice (service token)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from vestnik.app.context import Ctx
from vestnik.app.http import Router, json_response
from vestnik.app.tokens import Principal
from vestnik.streams.errors import NotFound
from vestnik.streams.forward import DeliveryList, decode_delivery

router = Router("deliveries")


@router.route("GET", "/api/v1/notices/{id}/deliveries",
              summary="Forward attempts of a notice: channel, attempt, status, detail, time",
              auth="service", response=DeliveryList)
async def list_deliveries(request: Request, ctx: Ctx, principal: Principal) -> Response:
    nid = request.path_params["id"]
    async with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.lrange(ctx.keys.deliveries(nid), 0, -1)
        pipe.exists(ctx.keys.notice(nid))
        raw, exists = await pipe.execute()
    if not raw and not exists:
        raise NotFound(f"notice {nid} not found", field="$.id")
    return json_response(DeliveryList([decode_delivery(r) for r in raw]))
