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
from vestnik.app.query import decode_query, query_parameters
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
    query: type[msgspec.Struct] | None = None  # decoded by the router: see app/query.py
    stream: bool = False
    tag: str = ""
    # extra error statuses the route may answer (e.g. 409, 412), and a non-JSON response type
    errors: tuple[int, ...] = ()
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)  # request headers it reads
    # error statuses answered with another body than ErrorBody (readyz: 503 with Health)
    bodies: dict[int, type] = field(default_factory=dict)


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
        query: type[msgspec.Struct] | None = None,
        stream: bool = False,
        errors: tuple[int, ...] = (),
        media_type: str = "application/json",
        headers: dict[str, str] | None = None,
        cookie: bool = True,
        bodies: dict[int, type] | None = None,
    ) -> Callable[[Handler], Handler]:
        """`cookie` False: the `vestnik_token` cookie does not authenticate this route;
        `query`: the Struct every request's query is decoded into (`query_of` reads it)."""

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
                if query is not None:
                    request.state.query = decode_query(request, query)
                response = await handler(request, ctx, principal)
                if principal.user_id is not None and isinstance(response, SSEResponse):
                    response.owner = (ctx.sse_users, principal.user_id)
                return response

            endpoint.__name__ = handler.__name__
            self.routes.append(Route(path, endpoint, methods=[method]))
            self.operations.append(
                Operation(method, path, summary, auth, body, response, status,
                          query, stream, self.tag, errors, media_type, headers or {},
                          bodies or {})
            )
            return handler

        return register


# what each error status means to a caller, and the headers it always carries
ERROR_MEANING = {
    400: "a query parameter or header is invalid (`path` names it)",
    401: "no token, or a bad or expired one",
    403: "the token may not do this",
    404: "no such item",
    409: "conflicts with a concurrent write or an earlier request; try again",
    412: "If-Match names another version than the current one",
    413: "the body is larger than VESTNIK_MAX_BODY",
    422: "the body or a path parameter is invalid (`path` names the field)",
    429: "too many writes for this token (VESTNIK_RATE); retry after Retry-After seconds",
    503: "Redis is unreachable or full; retry after Retry-After seconds",
}
_RETRY_AFTER = {"Retry-After": {"required": True, "description": "seconds to wait",
                                "schema": {"type": "integer", "minimum": 0}}}
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def openapi(routers: list[Router], version: str) -> dict[str, Any]:
    """OpenAPI 3.1 document built from the routers' operations and msgspec schemas."""
    from vestnik.streams.schemas import ErrorBody, schema_hook

    ops = [op for r in routers for op in r.operations]
    types: list[Any] = [ErrorBody]
    for op in ops:
        types += [t for t in (op.body, op.response, *op.bodies.values()) if t is not None]
    types = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}", schema_hook=schema_hook
    )
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        item: dict[str, Any] = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": f"{op.method.lower()}_{op.path}".replace("/", "_").replace("{", "")
            .replace("}", "").replace("-", "_"),
        }
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in _path_params(op.path)
        ] + (query_parameters(op.query, schema_hook) if op.query is not None else []) + [
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
        responses: dict[str, Any] = {str(op.status): _success(op, by_type)}
        for code in _error_codes(op):
            answer: dict[str, Any] = {
                "description": ERROR_MEANING.get(code, "error"),
                "content": {"application/json": {
                    "schema": by_type[op.bodies.get(code, ErrorBody)]}},
            }
            if code in ERROR_HEADERS and code not in op.bodies:
                answer["headers"] = ERROR_HEADERS[code]
            responses[str(code)] = answer
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


def _success(op: Operation, by_type: dict[Any, Any]) -> dict[str, Any]:
    if op.stream:
        return {"description": "Server-sent events",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    if op.response is not None:
        return {"description": "OK",
                "content": {"application/json": {"schema": by_type[op.response]}}}
    if op.media_type != "application/json":
        return {"description": "OK", "content": {op.media_type: {"schema": {"type": "string"}}}}
    return {"description": "No content" if op.status == 204 else "OK"}


def _path_params(path: str) -> list[str]:
    import re

    return [p.split(":")[0] for p in re.findall(r"{([^}]+)}", path)]


def _error_codes(op: Operation) -> list[int]:
    codes = [503, *op.bodies]
    if op.auth != "none":
        codes += [401, 403]
        if op.method in UNSAFE:
            codes.append(429)
    if op.body is not None:
        codes += [400, 413, 422]
    if op.query is not None:
        codes.append(400)
    if "{" in op.path:
        codes += [404, 422]
    codes += op.errors
    return sorted(set(codes))
