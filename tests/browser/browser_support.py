"""Helpers of the browser tests: users in the `user` state, console error capture."""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from support import run_keys
from vestnik.streams.keys import USER_TOPIC

K = run_keys()


async def add_users(redis: Redis, *users: tuple[str, str]) -> None:
    """Users as the topic hub materializes them (HSET of the `user` state)."""
    await redis.hset(K.state(USER_TOPIC), mapping={
        uid: msgspec.json.encode({"id": uid, "name": name, "email": f"{name.lower()}@example.test"})
        for uid, name in users})


def console_errors(page) -> list[str]:
    """Collect the page's console errors and uncaught exceptions (asserted empty at the end)."""
    errors: list[str] = []
    # a 4xx the test provokes is logged by Chromium as "Failed to load resource": not a bug
    page.on("console", lambda m: errors.append(m.text) if m.type == "error"
            and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors
