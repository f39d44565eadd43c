"""Fixtures: a real redis-server on a free port for the session, flushed before each test;
factories that start real Vestnik processes against it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from support import (
    CLUSTER_ENV,
    SERVICE_TOKEN,
    Api,
    Proc,
    SmtpSink,
    base_env,
    vestnik_argv,
    wait_http,
)
from vestnik.streams.config import Config, load
from vestnik.streams.keys import Keys
from vestnik.streams.redis import connect
from vestnik.streams.redis_server import (
    ClusterDeployment,
    RedisServer,
    SentinelDeployment,
    free_port,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--redis-cluster", action="store_true", default=False,
                     help="serve redis_url/redis_server from a local 3-master Redis Cluster "
                          "instead of one redis-server (tests marked single_redis skip)")
    parser.addoption("--redis-sentinel", action="store_true", default=False,
                     help="serve redis_url from a local Sentinel deployment (a primary, a "
                          "replica, three sentinels: a redis+sentinel:// URL) instead of one "
                          "redis-server (tests marked single_redis skip)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--redis-cluster"):
        os.environ[CLUSTER_ENV] = "1"  # support.run_keys, read at import by test modules
    config.addinivalue_line(
        "markers", "single_redis(reason): cannot run on a Redis Cluster (--redis-cluster) or "
        "a Sentinel deployment (--redis-sentinel)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not (config.getoption("--redis-cluster") or config.getoption("--redis-sentinel")):
        return
    for item in items:
        mark = item.get_closest_marker("single_redis")
        if mark is not None:
            reason = mark.args[0] if mark.args else mark.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"single Redis only: {reason}"))


@pytest.fixture(scope="session")
def on_cluster(pytestconfig: pytest.Config) -> bool:
    """True when the run serves Redis from a cluster (`--redis-cluster`)."""
    return bool(pytestconfig.getoption("--redis-cluster"))


Deployment = RedisServer | ClusterDeployment | SentinelDeployment


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory, on_cluster: bool,
                 pytestconfig: pytest.Config) -> Iterator[Deployment]:
    """One real redis-server for the whole session (never 6379, never a fixed port), or
    with `--redis-cluster` a local 3-master cluster, with `--redis-sentinel` a primary, a
    replica and three sentinels (no restart/kill through this fixture: tests that need
    those are marked single_redis).

    Tests that restart or kill it must leave it running (`redis_server.restart()`).
    """
    server: Deployment
    if on_cluster:
        server = ClusterDeployment(tmp_path_factory.mktemp("redis-cluster"))
    elif pytestconfig.getoption("--redis-sentinel"):
        server = SentinelDeployment(tmp_path_factory.mktemp("redis-sentinel"), replicas=1)
    else:
        server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True)
    server.start()
    yield server
    server.stop()


def _reset(port: int) -> None:
    import redis as sync_redis

    r = sync_redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=5)
    r.flushall()
    r.config_set("notify-keyspace-events", "")
    r.config_set("maxmemory", "0")
    r.close()


@pytest.fixture
def redis_url(redis_server: Deployment) -> str:
    """The session server (every master of the cluster, the Sentinel deployment's
    primary), emptied and with default settings: each test starts clean."""
    if isinstance(redis_server, ClusterDeployment):
        for port in redis_server.master_ports():
            _reset(port)
        return redis_server.url
    if isinstance(redis_server, SentinelDeployment):
        _reset(redis_server.primary().port)
        return redis_server.url
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    _reset(redis_server.port)
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the test's Redis (a RedisCluster with `--redis-cluster`, the primary's
    client through the sentinels with `--redis-sentinel`)."""
    client = connect(redis_url, timeout=5.0, name="test") if "+" in redis_url \
        else Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def keys(on_cluster: bool) -> Keys:
    return Keys("vn:", cluster=on_cluster)


@pytest.fixture
def settings(redis_url: str) -> Config:
    return load(base_env(redis_url))


@pytest.fixture
def start_api(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Factory: start a real `vestnik api` process (env overrides as keyword args)."""
    started: list[Api] = []

    def start(**env: str) -> Api:
        port = free_port()
        full = base_env(redis_url, **env)
        proc = Proc(vestnik_argv("api", "--port", str(port)), full,
                    tmp_path / f"api-{port}.log").start()
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", proc=proc)
        api = Api(base, proc, SERVICE_TOKEN, full)
        started.append(api)
        return api

    yield start
    for api in started:
        api.proc.stop()


@pytest.fixture
def api(start_api: Callable[..., Api]) -> Api:
    return start_api()


@pytest.fixture
def user_token(settings: Config) -> Callable[..., str]:
    from vestnik.app.tokens import issue_token

    def make(user: str = "1", ttl: int = 3600, roles: list[str] | None = None) -> str:
        return issue_token(settings, user, ttl, roles)

    return make


@pytest.fixture
def start_proc(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Factory: start any `vestnik <args>` process with the test's env."""
    started: list[Proc] = []

    def start(*args: str, **env: str) -> Proc:
        proc = Proc(vestnik_argv(*args), base_env(redis_url, **env),
                    tmp_path / f"{args[0]}-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on a free port that keeps what it receives."""
    sink = SmtpSink().start()
    yield sink
    sink.stop()
