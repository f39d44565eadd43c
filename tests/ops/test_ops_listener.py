"""/healthz, /readyz and /metrics of `center`, `forwarder`, `bridge` and `wrap` on
VESTNIK_METRICS_PORT, each a real child process, and `vestnik health` against them."""

from __future__ import annotations

import asyncio

import pytest
from ops_support import OWN_CHECKS, PROCESSES, health, start_ops
from prometheus_client.parser import text_string_to_metric_families

from support import eventually
from vestnik.streams.ops_http import READ_TIMEOUT_S, flag_check, serve_ops
from vestnik.streams.redis_server import RedisServer, free_port


@pytest.mark.parametrize("name", PROCESSES)
async def test_process_answers_health_readiness_and_metrics(name, start_proc, tmp_path,
                                                            redis_url):
    ops = start_ops(start_proc, name, tmp_path)
    r = await ops.ready()
    assert r.json() == {"status": "ok",
                        "checks": dict.fromkeys({"redis", *OWN_CHECKS[name]}, "ok")}
    r = ops.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "checks": {}})  # as the api
    r = ops.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'vestnik_build_info{python="' in r.text
    assert ops.get("/").status_code == 404
    assert ops.get("/metrics/../admin").status_code == 404

    done = health(redis_url, VESTNIK_METRICS_PORT=str(ops.port))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("name", PROCESSES)
async def test_readyz_fails_when_redis_goes_away(name, start_proc, tmp_path, redis_url):
    own = RedisServer(tmp_path / "own-redis", appendonly=False).start()
    try:
        ops = start_ops(start_proc, name, tmp_path, VESTNIK_REDIS_URL=own.url,
                        VESTNIK_REDIS_TIMEOUT="1")
        await ops.ready()
    finally:
        own.stop()

    async def unready() -> dict | None:
        r = ops.get("/readyz")
        return r.json() if r.status_code == 503 else None

    body = await eventually(unready, timeout=20, interval=0.1, what="readyz 503")
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"].startswith("unreachable"), body
    assert ops.get("/healthz").status_code == 200  # alive, only not ready
    failed = [s.value for f in text_string_to_metric_families(ops.get("/metrics").text)
              for s in f.samples
              if s.name == "vestnik_redis_errors_total" and s.labels["outcome"] == "failed"]
    assert sum(failed) > 0  # what the VestnikRedisErrors rule alerts on

    done = health(redis_url, VESTNIK_METRICS_PORT=str(ops.port))
    assert done.returncode == 1
    line, = done.stderr.splitlines()  # one line saying why
    assert "503" in line and "redis: unreachable" in line, line


def test_health_says_why_when_nothing_listens(redis_url):
    port = free_port()
    done = health(redis_url, VESTNIK_METRICS_PORT=str(port))
    assert done.returncode == 1
    line, = done.stderr.splitlines()
    assert f"http://127.0.0.1:{port}/readyz did not answer" in line, line
    assert "Traceback" not in done.stderr

    # without VESTNIK_METRICS_PORT it asks the api's port
    done = health(redis_url, VESTNIK_PORT=str(port))
    assert f"http://127.0.0.1:{port}/readyz" in done.stderr and done.returncode == 1


def test_health_keeps_credentials_in_the_url_to_itself(redis_url):
    port = free_port()
    done = health(redis_url, "--url", f"http://probe:hunter2@127.0.0.1:{port}/readyz?token=t0k")
    assert done.returncode == 1
    assert f"http://127.0.0.1:{port}/readyz did not answer" in done.stderr
    assert "hunter2" not in done.stderr and "t0k" not in done.stderr


def test_health_refuses_a_url_that_is_not_http(redis_url):
    done = health(redis_url, "--url", "file:///etc/passwd")
    assert done.returncode == 2
    assert "--url" in done.stderr and "root:" not in done.stderr


async def test_health_checks_the_api_by_url(api, redis_url):
    done = health(redis_url, "--url", f"{api.base}/readyz")
    assert done.returncode == 0, done.stderr


# the listener itself, in this process: hostile and odd requests ----------------------

async def _ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), READ_TIMEOUT_S + 10)
    finally:
        writer.close()


async def test_listener_bounds_and_refuses_odd_requests():
    ready = False
    server = await serve_ops("127.0.0.1", 0, {"thing": flag_check(lambda: ready)})
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await _ask(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert answer.endswith(b'{"status":"unavailable","checks":{"thing":"starting"}}')
        ready = True
        assert (await _ask(port, b"GET /readyz?x=1 HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 200 ")
        assert (await _ask(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 405 ")
        assert (await _ask(port, b"hello\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n"
        assert (await _ask(port, huge)).startswith(b"HTTP/1.1 431 ")
        # a client that never finishes its request is dropped, not kept forever
        assert await _ask(port, b"GET /metrics HTTP/1.1\r\n") == b""
    finally:
        server.close()
        await server.wait_closed()


async def test_a_failing_check_is_named_not_raised():
    async def broken() -> str:
        raise RuntimeError("bug")

    server = await serve_ops("127.0.0.1", 0, {"broken": broken})
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await _ask(port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b'"broken":"failed (RuntimeError)"' in answer
    finally:
        server.close()
        await server.wait_closed()
