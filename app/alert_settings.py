"""Alert settings routes (the alert configurator): CRUD with ETag / If-Match.

The body is read and validated before the setting is looked up, so a bad body is
always 413/422 whatever the id. Storage and its atomicity live in streams.configurator.store.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from vestnik.app.context import Ctx
from vestnik.app.http import Router, json_response, read_body
from vestnik.app.query import query_of
from vestnik.app.tokens import Principal
from vestnik.streams.configurator import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    SettingsStore,
    etag,
    parse_if_match,
)
from vestnik.streams.egress import Egress
from vestnik.streams.schemas import AlertName, AlertSetting, SettingIn, SettingList, SettingPatch

router = Router("settings")

ITEM = "/api/v1/settings/{id}"
WRITE_ERRORS = (409, 412)  # 409: kept losing to concurrent writers; 412: stale If-Match
IF_MATCH = {"If-Match": 'the ETag read (`"<version>"`): change only that version, else 412'}


class ListQuery(msgspec.Struct):
    """Query of `GET /api/v1/settings`."""

    name: Annotated[AlertName, msgspec.Meta(
        description="only the settings of this alert name (empty: every name)")] | None = None
    cursor: Annotated[str, msgspec.Meta(
        max_length=200, pattern=r"^[A-Za-z0-9_=-]+(?!\n)$",
        description="the `next` of the previous page")] | None = None
    limit: Annotated[int, msgspec.Meta(
        ge=1, le=MAX_LIMIT, description=f"items per page (default {DEFAULT_LIMIT})")
    ] = DEFAULT_LIMIT


def store_of(ctx: Ctx) -> SettingsStore:
    return ctx.part("settings", lambda: SettingsStore(
        ctx.redis, ctx.keys, topic_maxlen=ctx.config.topic_maxlen,
        egress=Egress.from_settings(ctx.config)))


def _one(setting: AlertSetting, status: int = 200) -> Response:
    return json_response(setting, status, headers={"ETag": etag(setting)})


def _if_match(request: Request) -> frozenset[int] | None:
    return parse_if_match(request.headers.get("if-match"))


@router.route("POST", "/api/v1/settings", summary="Create an alert setting", auth="service",
              body=SettingIn, response=AlertSetting, status=201)
async def create_setting(request: Request, ctx: Ctx, principal: Principal) -> Response:
    body = await read_body(request, SettingIn, ctx)
    return _one(await store_of(ctx).create(body), 201)


@router.route("GET", "/api/v1/settings", summary="List alert settings (by alert name), paged",
              auth="service", response=SettingList, query=ListQuery)
async def list_settings(request: Request, ctx: Ctx, principal: Principal) -> Response:
    q = query_of(request, ListQuery)
    page = await store_of(ctx).list(q.name, q.cursor, q.limit)
    return json_response(page)


@router.route("GET", ITEM, summary="One alert setting (ETag = its version)", auth="service",
              response=AlertSetting)
async def get_setting(request: Request, ctx: Ctx, principal: Principal) -> Response:
    return _one(await store_of(ctx).get(request.path_params["id"]))


@router.route("PUT", ITEM, summary="Replace an alert setting (honours If-Match)",
              auth="service", body=SettingIn, response=AlertSetting, errors=WRITE_ERRORS,
              headers=IF_MATCH)
async def put_setting(request: Request, ctx: Ctx, principal: Principal) -> Response:
    body = await read_body(request, SettingIn, ctx)
    return _one(await store_of(ctx).replace(request.path_params["id"], body, _if_match(request)))


@router.route("PATCH", ITEM, summary="Change some fields of an alert setting (honours If-Match)",
              auth="service", body=SettingPatch, response=AlertSetting, errors=WRITE_ERRORS,
              headers=IF_MATCH)
async def patch_setting(request: Request, ctx: Ctx, principal: Principal) -> Response:
    body = await read_body(request, SettingPatch, ctx)
    return _one(await store_of(ctx).patch(request.path_params["id"], body, _if_match(request)))


@router.route("DELETE", ITEM, summary="Delete an alert setting (honours If-Match)",
              auth="service", status=204, errors=WRITE_ERRORS,
              headers=IF_MATCH)
async def delete_setting(request: Request, ctx: Ctx, principal: Principal) -> Response:
    await store_of(ctx).delete(request.path_params["id"], _if_match(request))
    return Response(status_code=204)
