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
from vestnik.streams import logs
from vestnik.streams.config import Config
from vestnik.streams.redis_server import RedisServer

log = logging.getLogger("vestnik.up")

# extra parts run beside the api: async functions of the config that run until cancelled
Part = Callable[[Config], Awaitable[None]]


def _persisted(path: Path, make: Callable[[], str]) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def with_generated_secrets(config: Config) -> Config:
    """Fill in a secret and a service token (kept in data_dir so they survive restarts)."""
    data = Path(config.data_dir)
    changes: dict[str, object] = {}
    if not config.secret:
        changes["secret"] = _persisted(data / "secret", lambda: secrets.token_urlsafe(32))
    if not config.service_tokens:
        changes["service_tokens"] = [
            _persisted(data / "service_token", lambda: "svc_" + secrets.token_urlsafe(24))
        ]
    return msgspec.structs.replace(config, **changes) if changes else config


def parts_for(config: Config, demo: bool) -> list[Part]:
    parts: list[Part] = [run_notice_center]
    if config.keyspace_patterns:
        parts.append(run_bridge)
    if demo:
        from vestnik.app.demo import run_demo  # demo users, VMs, alert, simulator, SMTP sink

        parts.append(run_demo)
    return parts


async def run_notice_center(config: Config) -> None:
    """The notice center (one consumer of group `center`) and its forward worker."""
    from vestnik.streams.center import run_center

    await run_center(config, consumer="up")


async def run_bridge(config: Config) -> None:
    from vestnik.streams.keys import Keys
    from vestnik.streams.notifier import Bridge
    from vestnik.streams.redis import connect

    assert config.redis_url
    redis = connect(config.redis_url, name="vestnik-bridge", timeout=config.redis_timeout)
    try:
        await Bridge(config.redis_url, redis, Keys.of(config),
                     config.keyspace_patterns, maxlen=config.topic_maxlen).run()
    finally:
        await redis.aclose()


async def serve_all(config: Config, parts: list[Part], *, demo: bool = False) -> None:
    server = make_server(create_app(config, demo=demo), config)
    tasks = [asyncio.create_task(part(config), name=part.__name__) for part in parts]
    try:
        await server.serve()
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for t, r in zip(tasks, results, strict=True):
            if isinstance(r, Exception):
                log.error("part %s failed: %r", t.get_name(), r)


def banner(config: Config, private: RedisServer | None) -> str:
    base = f"http://{config.host}:{config.port}"
    lines = [
        "Vestnik is up",
        f"  api        {base}/api/v1  (OpenAPI: {base}/openapi.json)",
        f"  docs       {base}/docs  (try it out: Authorize with the service token)",
        f"  redis      {config.redis_url}" + ("  (private, data in "
                                                  f"{private.data_dir})" if private else ""),
        f"  service    token: {config.service_tokens[0]}",
        f"  user 1     token: {issue_token(config, '1', 7 * 86400)}",
        f"  secret     VESTNIK_SECRET={config.secret}",
    ]
    return "\n".join(lines)


def run_up(config: Config, *, demo: bool = False) -> int:
    config = with_generated_secrets(config)
    logs.add_secrets(logs.config_secrets(config))  # generated ones too: masked in every line
    private: RedisServer | None = None
    if not config.redis_url:
        private = RedisServer(Path(config.data_dir) / "redis").start()
        config = msgspec.structs.replace(config, redis_url=private.url)
    try:
        if demo:
            from vestnik.app.demo import (
                prepare,  # mail to the demo's SMTP sink, a short forward_after
            )

            config = prepare(config)
        print(banner(config, private), file=sys.stderr, flush=True)
        run(serve_all(config, parts_for(config, demo), demo=demo))
    finally:
        if private is not None:
            private.stop()
    return 0
