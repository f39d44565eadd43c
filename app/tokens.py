"""Who calls: user tokens (JWT HS256) issued and checked in one module, so the claims
`vestnik token` and the demo sign are the claims the API requires; and service tokens,
compared in constant time.

It imports no request or app state: the CLI and `vestnik up` issue tokens without
loading the API.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt

from vestnik.streams.config import Config, ConfigError
from vestnik.streams.errors import Unauthorized


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a service (token from config) or a user (JWT `sub`)."""

    kind: Literal["anonymous", "service", "user"]
    user_id: str | None = None
    roles: tuple[str, ...] = ()
    token: str = field(default="", repr=False, compare=False)  # the key of its write rate
    exp: float | None = field(default=None, compare=False)  # a user token's `exp` (cookie life)

    @property
    def is_service(self) -> bool:
        return self.kind == "service"

    @property
    def uid(self) -> str:
        """The user id of a user's call (a route with `auth="user"` has one)."""
        assert self.user_id is not None
        return self.user_id


ANONYMOUS = Principal("anonymous")


def issue_token(config: Config, user: str, ttl: int = 86400, roles: list[str] | None = None
                ) -> str:
    """A user token the API accepts: refused here already if it would be refused there
    (no secret, a lifetime over VESTNIK_JWT_MAX_TTL)."""
    if not config.secret:
        raise ConfigError("VESTNIK_SECRET: required to sign user tokens")
    if ttl > config.jwt_max_ttl:
        raise ConfigError(f"VESTNIK_JWT_MAX_TTL: a token of {ttl} s would be refused "
                          f"(at most {config.jwt_max_ttl} s)")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + ttl}
    if roles:
        claims["roles"] = roles
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    return jwt.encode(claims, config.secret, algorithm="HS256")


def decode_user_token(config: Config, token: str) -> Principal:
    """The user a token names, or Unauthorized saying what is wrong with it."""
    if not config.secret:
        raise Unauthorized("user tokens are not accepted: VESTNIK_SECRET is not set")
    required = ["exp", "sub"] + (["iss"] if config.jwt_issuer is not None else [])
    try:
        claims = jwt.decode(
            token,
            config.secret,
            algorithms=["HS256"],
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway=config.jwt_leeway,
            options={"require": required, "verify_aud": config.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidTokenError as e:
        raise Unauthorized(f"invalid token: {e}") from None
    check_lifetime(claims, config.jwt_max_ttl)
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("invalid token: `sub` must be a non-empty string")
    roles = claims.get("roles") or ()
    if isinstance(roles, str):  # one role as a plain string, not a string of one-letter roles
        roles = (roles,)
    if not isinstance(roles, list | tuple):
        raise Unauthorized("invalid token: `roles` must be a list of strings")
    return Principal("user", user_id=sub, roles=tuple(r for r in roles if isinstance(r, str)),
                     token=token, exp=claims["exp"])


def check_lifetime(claims: dict[str, Any], max_ttl: int) -> None:
    """A stolen token must not work for years: `exp - iat` (or, without `iat`, `exp - now`:
    a token cannot claim to be younger than it is) is at most VESTNIK_JWT_MAX_TTL."""
    exp, iat = claims["exp"], claims.get("iat")
    if not isinstance(exp, int | float) or isinstance(exp, bool):  # PyJWT takes "123" too
        raise Unauthorized("invalid token: `exp` must be a number")
    start = iat if isinstance(iat, int | float) and not isinstance(iat, bool) else time.time()
    if exp - start > max_ttl:
        raise Unauthorized(f"invalid token: lives longer than VESTNIK_JWT_MAX_TTL ({max_ttl} s)")


def is_service_token(config: Config, token: str) -> bool:
    """Compare against every configured token in constant time (no early exit)."""
    given = token.encode()
    found = False
    for known in config.service_tokens:
        found |= hmac.compare_digest(given, known.encode())
    return found
