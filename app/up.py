"""`vestnik up`: every part in one process, with a private Redis when none is configured.

The private `redis-server` keeps its data (AOF) under `<data_dir>/redis`, listens
on a free loopback port and is stopped when we exit; it also gets SIGTERM from
the kernel if we die (PR_SET_PDEATHSIG), so no server is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from vestnik.app.api import create_app
from vestnik.app.server import make_server, run
from vestnik.app.tokens import issue_token
from vestnik.streams.config import Config
from vestnik.streams.redis_server import RedisServer

log = logging.getLogger("vestnik.up")

# extra parts run beside the api: async functions of the settings that run until cancelled
Part = Callable[[Config], Awaitable[None]]


def _persisted(path: Path, make: Callable[[], str]) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def with_generated_secrets(settings: Config) -> Config:
    """Fill in a secret and a service token (kept in data_dir so they survive restarts)."""
    data = Path(settings.data_dir)
    changes: dict[str, object] = {}
    if not settings.secret:
        changes["secret"] = _persisted(data / "secret", lambda: secrets.token_urlsafe(32))
    if not settings.service_tokens:
        changes["service_tokens"] = [
            _persisted(data / "service_token", lambda: "svc_" + secrets.token_urlsafe(24))
        ]
    return msgspec.structs.replace(settings, **changes) if changes else settings


def parts_for(settings: Config, demo: bool) -> list[Part]:
    parts: list[Part] = [run_notice_center]
    if settings.keyspace_patterns:
        parts.append(run_bridge)
    if demo:
        from vestnik.app.demo import run_demo  # demo users, VMs, alert, simulator, SMTP sink

        parts.append(run_demo)
    return parts


async def run_notice_center(settings: Config) -> None:
    """The notice center (one consumer of group `center`) and its forward worker."""
    from vestnik.streams.center import run_center

    await run_center(settings, consumer="up")


async def run_bridge(settings: Config) -> None:
    from vestnik.streams.keys import Keys
    from vestnik.streams.notifier import Bridge
    from vestnik.streams.redis import connect

    assert settings.redis_url
    redis = connect(settings.redis_url, name="vestnik-bridge", timeout=settings.redis_timeout)
    try:
        await Bridge(settings.redis_url, redis, Keys(settings.prefix),
                     settings.keyspace_patterns, maxlen=settings.topic_maxlen).run()
    finally:
        await redis.aclose()


async def serve_all(settings: Config, parts: list[Part], *, demo: bool = False) -> None:
    server = make_server(create_app(settings, demo=demo), settings)
    tasks = [asyncio.create_task(part(settings), name=part.__name__) for part in parts]
    try:
        await server.serve()
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for t, r in zip(tasks, results, strict=True):
            if isinstance(r, Exception):
                log.error("part %s failed: %r", t.get_name(), r)


def banner(settings: Config, private: RedisServer | None) -> str:
    base = f"http://{settings.host}:{settings.port}"
    lines = [
        "Vestnik is up",
        f"  api        {base}/api/v1  (OpenAPI: {base}/openapi.json)",
        f"  redis      {settings.redis_url}" + ("  (private, data in "
                                                  f"{private.data_dir})" if private else ""),
        f"  service    token: {settings.service_tokens[0]}",
        f"  user 1     token: {issue_token(settings, '1', 7 * 86400)}",
        f"  secret     VESTNIK_SECRET={settings.secret}",
    ]
    return "\n".join(lines)


def run_up(settings: Config, *, demo: bool = False) -> int:
    settings = with_generated_secrets(settings)
    private: RedisServer | None = None
    if not settings.redis_url:
        private = RedisServer(Path(settings.data_dir) / "redis").start()
        settings = msgspec.structs.replace(settings, redis_url=private.url)
    try:
        if demo:
            from vestnik.app.demo import (
                prepare,  # mail to the demo's SMTP sink, a short forward_after
            )

            settings = prepare(settings)
        print(banner(settings, private), file=sys.stderr, flush=True)
        run(serve_all(settings, parts_for(settings, demo), demo=demo))
    finally:
        if private is not None:
            private.stop()
    return 0
