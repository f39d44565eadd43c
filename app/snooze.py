"""The caller's snoozes (`/api/v1/me/snooze`, user token): hold their external forwards
of one alert, or of every alert, until a time. In-app notices are never held. Storage in
streams.center.snooze; the forwarder honours them (`User.snooze`, `streams.snoozes`)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from vestnik.app.context import Ctx
from vestnik.app.http import Router, json_response, read_body
from vestnik.app.query import query_of
from vestnik.app.tokens import Principal
from vestnik.streams.center import Snoozes
from vestnik.streams.schemas import NonEmpty, SnoozeIn, SnoozeList

router = Router("snooze")

PATH = "/api/v1/me/snooze"


class EndQuery(msgspec.Struct):
    """Query of `DELETE /api/v1/me/snooze`."""

    alert: Annotated[NonEmpty, msgspec.Meta(
        description="the alert whose snooze ends (`*`: the snooze of every alert); "
                    "absent: every snooze")] | None = None


def snoozes_of(ctx: Ctx) -> Snoozes:
    return ctx.part("snoozes", lambda: Snoozes(ctx.redis, ctx.keys))



@router.route("POST", PATH, summary="Snooze my forwards of one alert (or all) until `until`",
              auth="user", body=SnoozeIn, response=SnoozeList, errors=(409,))
async def snooze(request: Request, ctx: Ctx, principal: Principal) -> Response:
    body = await read_body(request, SnoozeIn, ctx)
    return json_response(await snoozes_of(ctx).add(principal.uid, body))


@router.route("GET", PATH, summary="My running snoozes (alert or `*` -> until, ms)",
              auth="user", response=SnoozeList)
async def my_snoozes(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return json_response(await snoozes_of(ctx).get(principal.uid))


@router.route("DELETE", PATH, summary="End my snooze of `alert`, or all of them",
              auth="user", response=SnoozeList, errors=(409,), query=EndQuery)
async def end_snooze(request: Request, ctx: Ctx, principal: Principal) -> Response:
    alert = query_of(request, EndQuery).alert
    return json_response(await snoozes_of(ctx).end(principal.uid, alert))
