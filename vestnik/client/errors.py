"""The client's errors: one hierarchy a product catches, whatever the transport.

Each carries the api's stable `code`, its `detail` and the JSON path of the field at fault
(`field`, from the error body's `path`). None ever holds the token or a Redis password.
"""

from __future__ import annotations


class VestnikError(Exception):
    """Anything the client could not do; `status` is the HTTP status (0: none)."""

    status = 0

    def __init__(self, detail: str, *, code: str = "error", field: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(detail if not field or field in detail else f"{detail} (at {field})")
        self.detail = detail
        self.code = code
        self.field = field
        if status is not None:
            self.status = status


class BadRequest(VestnikError):
    """The input was refused (400, 413, 422, or checked here before sending); `field` names
    it (`$.severity`, `Idempotency-Key`)."""

    status = 422


class Unauthorized(VestnikError):
    """The token is missing, wrong, or of the wrong kind (401)."""

    status = 401


class Forbidden(Unauthorized):
    """The token is good but may not do this (403)."""

    status = 403


class NotFound(VestnikError):
    status = 404


class Conflict(VestnikError):
    """The id or idempotency key was used for other content, or writers kept colliding
    (409)."""

    status = 409


class PreconditionFailed(Conflict):
    """`If-Match` named a version that is no longer current (412): read it again."""

    status = 412


class Unavailable(VestnikError):
    """The server or Redis cannot take it now (503, 429, connection errors, timeouts), and
    the retries allowed ran out or the call was not safe to repeat."""

    status = 503


class NotSupported(VestnikError):
    """The call does not exist on this transport (settings and deliveries over Redis)."""


BY_STATUS: dict[int, type[VestnikError]] = {
    400: BadRequest, 413: BadRequest, 422: BadRequest, 401: Unauthorized, 403: Forbidden,
    404: NotFound, 409: Conflict, 412: PreconditionFailed, 429: Unavailable, 503: Unavailable,
}
