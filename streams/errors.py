"""The error catalogue: one class per kind, each with a stable code and HTTP status.

Code that catches errors sorts them into three kinds: bad input (`VestnikError`
subclasses with status 4xx: reject, dead-letter, name the field), retryable
(`streams.redis.RETRYABLE`, Redis down or slow: back off, keep pending, HTTP 503) and
bugs (anything else: let it surface).
"""

from __future__ import annotations

import re

import msgspec


class VestnikError(Exception):
    code = "error"
    status = 500

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class BadInput(VestnikError):
    """The input cannot be accepted as it is; `field` is its JSON path (`$.title`)."""

    code = "invalid"
    status = 422


class BadRequest(VestnikError):
    code = "bad_request"
    status = 400


class Unauthorized(VestnikError):
    code = "unauthorized"
    status = 401


class Forbidden(VestnikError):
    code = "forbidden"
    status = 403


class NotFound(VestnikError):
    code = "not_found"
    status = 404


class Conflict(VestnikError):
    code = "conflict"
    status = 409


class PreconditionFailed(VestnikError):
    code = "precondition_failed"
    status = 412


class TooLarge(VestnikError):
    code = "too_large"
    status = 413


class NotReplicated(VestnikError):
    """Fewer replicas than `VESTNIK_REDIS_WAIT_REPLICAS` confirmed a write in time: it may
    not survive the primary's loss, so it is not reported accepted (retryable, 503)."""

    code = "unavailable"
    status = 503


_PATH = re.compile(r" - at `(\$[^`]*)`$")
_KEY = re.compile(r" - at `key` in `(\$[^`]*)`$")  # a bad key of an object (dict[Key, ...])
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`")


def from_validation(err: msgspec.ValidationError | msgspec.DecodeError) -> BadInput:
    """Turn msgspec's message ('Expected `str`, got `int` - at `$.title`') into BadInput.

    A missing or unknown field is named by its own path (`$.title`, not the object holding
    it), and only a real syntax error is called invalid JSON (ValidationError is a
    DecodeError)."""
    text = str(err)
    if (k := _KEY.search(text)) is not None:  # the object's path: the key itself has none
        text = f"{text[:k.start()]} (a key) - at `{k.group(1)}`"
    m = _PATH.search(text)
    located = m is not None
    field = m.group(1) if m else "$"
    detail = text[:m.start()] if m else text
    # a decode hook's own path (ChannelMap: `... - at `$.email.users[0]` - at `$.channel``)
    # is under the one msgspec gave it
    while (m := _PATH.search(detail)) is not None:  # each turn cuts a suffix off: bounded
        field, detail = field + m.group(1)[1:], detail[:m.start()]
    missing, unknown = _MISSING.match(detail), _UNKNOWN.match(detail)
    if missing:
        field = f"{field}.{missing.group(1)}"
        detail = f"missing required field `{missing.group(1)}`"
    elif unknown:
        field = f"{field}.{unknown.group(1)}"
        detail = f"unknown field `{unknown.group(1)}`"
    elif not isinstance(err, msgspec.ValidationError) and not located:
        detail = f"body is not valid JSON: {text}"
    return BadInput(f"{detail} (at {field})" if field != "$" else detail, field=field)
