"""HTTP plumbing shared by every route module: routing with OpenAPI metadata, auth, bodies.

A route is a plain `async def handler(request, ctx, principal) -> Response`;
`Router` wraps it with authentication and the error contract, and keeps the
request/response types so `/openapi.json` is generated from the msgspec Structs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vestnik.app.context import Ctx
from vestnik.app.errors import error_response
from vestnik.app.sse import SSEResponse
from vestnik.app.tokens import ANONYMOUS, Principal, decode_user_token, is_service_token
from vestnik.streams.errors import BadInput, Forbidden, TooLarge, Unauthorized
from vestnik.streams.keys import SETTINGS_TOPIC, USER_TOPIC
from vestnik.streams.schemas import decode_json, json_encode

T = TypeVar("T")
Auth = Literal["none", "service", "user", "any"]
Handler = Callable[[Request, Ctx, Principal], Awaitable[Response]]


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_encode(obj), status, headers=headers, media_type="application/json")


async def read_body(request: Request, typ: type[T], ctx: Ctx) -> T:
    """Read at most `max_body` bytes and decode them into `typ` (422 names the field)."""
    limit = ctx.config.max_body
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    try:
        return decode_json(b"".join(chunks) or b"null", typ)
    except RecursionError:  # msgspec's answer to a body nested ~1,000 levels deep
        raise BadInput("body is nested too deeply", field="$") from None


UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
Source = Literal["header", "cookie", "query", ""]


def _token_from(request: Request, allow_query: bool, allow_cookie: bool = True
                ) -> tuple[str | None, Source]:
    """The token and where it came from: a cookie or a URL carry it without the caller's
    script asking, so those two are limited (same-origin writes; SSE GETs only)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip(), "header"
    cookie = request.cookies.get("vestnik_token") if allow_cookie else None
    if cookie:
        return cookie, "cookie"
    if allow_query:
        return request.query_params.get("token"), "query"
    return None, ""


def _origin(scheme: str, netloc: str) -> str:
    """`scheme://host[:port]`, lower-case, without the scheme's default port."""
    scheme, netloc = scheme.lower(), netloc.rpartition("@")[2].lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return f"{scheme}://{netloc}"


def request_scheme(request: Request) -> str:
    """`http` or `https` as the browser sees it: X-Forwarded-Proto when a TLS proxy in front
    sets it (a cross-site page cannot set that header), else the request's own scheme."""
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    return proto.split(",")[0].strip().lower()  # schemes are case-insensitive


def check_same_origin(request: Request, ctx: Ctx) -> None:
    """A cookie rides along on a form or fetch from any site (CSRF): a write authenticated by
    the cookie alone must come from this API's origin or one in VESTNIK_CORS_ORIGINS.

    Browsers send Origin on every cross-site POST; without Origin, Referer is used; without
    either the request is refused (a script of ours can always send a Bearer header).
    Our own origin is the Host header with the request's scheme, or X-Forwarded-Proto when
    a TLS proxy in front sets it (a cross-site page cannot set that header)."""
    name, raw = "Origin", request.headers.get("origin")
    if raw is None:
        name, raw = "Referer", request.headers.get("referer")
    if raw is None:
        raise Forbidden("a write authenticated by the vestnik_token cookie needs an Origin "
                        "or Referer header (or send Authorization: Bearer)", field="Origin")
    parts = urlsplit(raw)
    given = _origin(parts.scheme, parts.netloc) if parts.scheme and parts.netloc else raw
    own = _origin(request_scheme(request), request.headers.get("host", ""))
    allowed = {own, *(_origin(*o.split("://", 1)) for o in ctx.config.cors_origins
                      if "://" in o)}
    if given not in allowed:
        raise Forbidden(f"{name} {given} is neither this API's origin nor listed in "
                        "VESTNIK_CORS_ORIGINS (a cookie-authenticated write)", field=name)


def authenticate(request: Request, ctx: Ctx, auth: Auth, allow_query: bool = False,
                 allow_cookie: bool = True) -> Principal:
    """Who calls; `allow_query`: the route is an SSE GET (EventSource cannot send headers),
    the only place a `?token=` is read (elsewhere it would end up in logs and Referers);
    `allow_cookie` False: only the Authorization header counts (the route sets the cookie)."""
    if auth == "none":
        return ANONYMOUS
    token, source = _token_from(request, allow_query, allow_cookie)
    if not token:
        raise Unauthorized("missing token: send `Authorization: Bearer <token>`")
    principal = _principal(ctx, auth, token)
    if source == "cookie" and request.method in UNSAFE:  # a valid cookie: may be CSRF
        check_same_origin(request, ctx)
    return principal


def _principal(ctx: Ctx, auth: Auth, token: str) -> Principal:
    config = ctx.config
    if auth in ("service", "any") and is_service_token(config, token):
        return Principal("service", token=token)
    if auth == "service":
        raise Unauthorized("a service token is required")
    if auth == "user" and is_service_token(config, token):
        raise Unauthorized("a user token is required (this is a service token)")
    return decode_user_token(config, token)


def rate_limited(wait: int) -> Response:
    """429: this token's writes exceed VESTNIK_RATE in this api process."""
    return error_response(429, "rate_limited", "too many write requests for this token "
                          f"(VESTNIK_RATE); retry in {wait} s", None, {"Retry-After": str(wait)})


PRIVATE_TOPICS = frozenset({SETTINGS_TOPIC, USER_TOPIC})


def check_topic_read(ctx: Ctx, principal: Principal, topic: str) -> None:
    """Per-topic read ACL: `topic_acl = {topic = ["role", "user:<id>", "*"]}`; default open,
    except Vestnik's own topics (settings, users: other users' ids, emails, chat ids), which
    only services read unless the ACL names them."""
    if principal.is_service:
        return
    allowed = ctx.config.topic_acl.get(topic)
    if allowed is None and topic in PRIVATE_TOPICS:
        raise Forbidden(f"topic `{topic}` is readable with a service token only, unless "
                        f"VESTNIK_TOPIC_ACL names it (e.g. `{topic}=admin`)")
    if allowed is None or "*" in allowed:
        return
    if f"user:{principal.user_id}" in allowed or any(r in allowed for r in principal.roles):
        return
    raise Forbidden(f"not allowed to read topic `{topic}`")


@dataclass
class Operation:
    """OpenAPI metadata of one route."""

    method: str
    path: str
    summary: str
    auth: Auth
    body: type | None = None
    response: Any = None
    status: int = 200
    query: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    tag: str = ""
    # extra error statuses the route may answer (e.g. 409, 412), and a non-JSON response type
    errors: tuple[int, ...] = ()
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)  # request headers it reads


class Router:
    """Collects routes and their operation metadata for one area of the API."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[Route] = []
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        auth: Auth,
        body: type | None = None,
        response: Any = None,
        status: int = 200,
        query: dict[str, str] | None = None,
        stream: bool = False,
        errors: tuple[int, ...] = (),
        media_type: str = "application/json",
        headers: dict[str, str] | None = None,
        cookie: bool = True,
    ) -> Callable[[Handler], Handler]:
        """`cookie` False: the `vestnik_token` cookie does not authenticate this route."""

        def register(handler: Handler) -> Handler:
            allow_query = stream and method == "GET"
            write = method in UNSAFE and auth != "none"

            async def endpoint(request: Request) -> Response:
                ctx: Ctx = request.app.state.ctx
                principal = authenticate(request, ctx, auth, allow_query, cookie)
                if write and ctx.limiter is not None:
                    wait = ctx.limiter.retry_after(principal.token)
                    if wait:
                        return rate_limited(wait)
                response = await handler(request, ctx, principal)
                if principal.user_id is not None and isinstance(response, SSEResponse):
                    response.owner = (ctx.sse_users, principal.user_id)
                return response

            endpoint.__name__ = handler.__name__
            self.routes.append(Route(path, endpoint, methods=[method]))
            self.operations.append(
                Operation(method, path, summary, auth, body, response, status,
                          query or {}, stream, self.tag, errors, media_type, headers or {})
            )
            return handler

        return register


def openapi(routers: list[Router], version: str) -> dict[str, Any]:
    """OpenAPI 3.1 document built from the routers' operations and msgspec schemas."""
    types: list[Any] = []
    for r in routers:
        for op in r.operations:
            types += [t for t in (op.body, op.response) if t is not None]
    from vestnik.streams.schemas import ErrorBody, schema_hook

    types.append(ErrorBody)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}", schema_hook=schema_hook
    )
    by_type = dict(zip(types, schemas, strict=True))
    error_ref = by_type[ErrorBody]
    paths: dict[str, dict[str, Any]] = {}
    for r in routers:
        for op in r.operations:
            item: dict[str, Any] = {
                "summary": op.summary,
                "tags": [op.tag],
                "operationId": f"{op.method.lower()}_{op.path}".replace("/", "_").replace("{", "")
                .replace("}", "").replace("-", "_"),
            }
            params = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in _path_params(op.path)
            ] + [
                {"name": n, "in": "query", "required": False, "schema": {"type": "string"},
                 "description": d}
                for n, d in op.query.items()
            ] + [
                {"name": n, "in": "header", "required": False, "schema": {"type": "string"},
                 "description": d}
                for n, d in op.headers.items()
            ]
            if params:
                item["parameters"] = params
            if op.body is not None:
                item["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": by_type[op.body]}},
                }
            responses: dict[str, Any] = {}
            if op.stream:
                responses[str(op.status)] = {
                    "description": "Server-sent events",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                }
            elif op.response is not None:
                responses[str(op.status)] = {
                    "description": "OK",
                    "content": {"application/json": {"schema": by_type[op.response]}},
                }
            elif op.media_type != "application/json":
                responses[str(op.status)] = {
                    "description": "OK",
                    "content": {op.media_type: {"schema": {"type": "string"}}},
                }
            else:
                responses[str(op.status)] = {
                    "description": "No content" if op.status == 204 else "OK"}
            for code in _error_codes(op):
                responses[str(code)] = {
                    "description": "Error",
                    "content": {"application/json": {"schema": error_ref}},
                }
            item["responses"] = responses
            if op.auth != "none":
                item["security"] = [{"bearer": []}]
            paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "Vestnik", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _path_params(path: str) -> list[str]:
    import re

    return [p.split(":")[0] for p in re.findall(r"{([^}]+)}", path)]


def _error_codes(op: Operation) -> list[int]:
    codes = [503]
    if op.auth != "none":
        codes += [401, 403]
        if op.method in UNSAFE:
            codes.append(429)
    if op.body is not None:
        codes += [400, 413, 422]
    if "{" in op.path:
        codes.append(404)
    codes += op.errors
    return sorted(set(codes))
