"""What the CLI asks Redis before it acts: is it there at all (a long-running process checks
once at start, so an unreachable Redis is one line and exit 3 instead of a traceback from
deep inside a part), and is a user known (`vestnik token`)."""

from __future__ import annotations

from vestnik.streams.config import Config
from vestnik.streams.errors import BadInput
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.redis import connect, redacted, wait_ready

USER_SCAN = 10_000  # topic entries `check_user` reads when the snapshot is still empty


async def ready(config: Config, name: str) -> None:
    """Wait until Redis answers (within wait_ready's bound); raise RETRYABLE if it never does."""
    redis = connect(config.redis_url or "", name=f"vestnik-{name}", timeout=config.redis_timeout)
    try:
        await wait_ready(redis)
    finally:
        await redis.aclose()


async def check_user(config: Config, user: str) -> None:
    """BadInput unless `user` is in the `user` topic, when that topic has any record.

    An empty or absent topic is no evidence either way (run.sh, `vestnik up` and the
    README's tour issue tokens before any user is published), so it passes."""
    keys = Keys.of(config)
    redis = connect(config.redis_url or "", name="vestnik-token", timeout=config.redis_timeout)
    try:
        state = keys.state(USER_TOPIC)
        if await redis.hlen(state):
            if await redis.hexists(state, user):
                return
        else:
            entries = await redis.xrevrange(keys.topic(USER_TOPIC), count=USER_SCAN)
            if not entries:
                return
            if any(fields.get(b"id") == user.encode() for _, fields in entries):
                return
    finally:
        await redis.aclose()
    where = f"{state} and {keys.topic(USER_TOPIC)} at {redacted(config.redis_url or '')}"
    raise BadInput(f"--user {user!r}: no such user in the `user` topic ({where}); "
                   "pass --any-user to issue the token anyway", field="user")
