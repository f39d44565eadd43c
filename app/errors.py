"""The JSON error contract: `{"error", "detail", "path"}` with the right status, never a 500
for bad input."""

from __future__ import annotations

import logging

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from vestnik.streams.errors import VestnikError
from vestnik.streams.redis import RETRYABLE
from vestnik.streams.schemas import ErrorBody, json_encode

log = logging.getLogger("vestnik.api")

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 412: "precondition_failed",
    413: "too_large", 422: "invalid", 503: "unavailable",
}


def error_response(status: int, code: str, detail: str, path: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    return Response(json_encode(ErrorBody(code, detail, path)), status, headers=headers,
                    media_type="application/json")


async def vestnik_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VestnikError)
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.status, exc.code, exc.detail, exc.field, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)


async def redis_down(request: Request, exc: Exception) -> Response:
    """Redis unreachable or out of memory: retryable, tell the client when to come back."""
    text = str(exc)
    # redis-py turns an `OOM ...` answer into OutOfMemoryError and drops the `OOM` prefix
    if isinstance(exc, ResponseError) and not (isinstance(exc, (OutOfMemoryError, *RETRYABLE))
                                               or text.startswith("OOM")):
        raise exc
    log.warning("redis unavailable for %s %s: %s", request.method, request.url.path, text)
    return error_response(503, "unavailable", f"storage unavailable: {text}", None,
                          {"Retry-After": "1"})


HANDLERS = {
    VestnikError: vestnik_error,
    HTTPException: http_error,
    RedisConnectionError: redis_down,
    RedisTimeoutError: redis_down,
    ResponseError: redis_down,
    # a socket error redis-py let through unwrapped (RETRYABLE names it): a 503 with
    # Retry-After like the others, never a bare 500 during a failover
    OSError: redis_down,
}
