"""`vestnik up`: with nothing configured it starts a private redis-server, serves, and leaves
no process behind on SIGTERM; with VESTNIK_REDIS_URL it uses that server."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
from redis.asyncio import Redis

from support import SSE, Proc, children, vestnik_argv, wait_http
from vestnik.streams.redis_server import free_port, running


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}


async def test_up_with_private_redis(tmp_path: Path):
    port = free_port()
    proc = Proc(vestnik_argv("up", "--port", str(port)), clean_env(), tmp_path / "up.log",
                cwd=tmp_path).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30, proc=proc)
        out = proc.output()
        redis_url = re.search(r"redis\s+(redis://\S+)", out).group(1)
        token = re.search(r"user 1\s+token: (\S+)", out).group(1)
        async with httpx.AsyncClient(timeout=10) as client:
            docs = await client.get(re.search(r"docs\s+(http://\S+)", out).group(1))
        assert docs.status_code == 200 and 'id="swagger-ui"' in docs.text  # the printed link
        redis_pids = [c for c in children(proc.pid)
                      if b"redis-server" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(redis_pids) == 1
        assert (tmp_path / ".vestnik" / "redis" / "appendonlydir").is_dir()  # AOF on

        sse = await SSE(f"http://127.0.0.1:{port}/api/v1/topics/vm/stream?token={token}"
                        ).connect()
        r = Redis.from_url(redis_url)
        await r.xadd("vn:topic:vm", {"op": "create", "id": "1", "data": '{"id": 1}'})
        await r.aclose()
        assert (await sse.next()).json()["data"] == {"id": 1}
        await sse.close()
    finally:
        code = proc.stop(signal.SIGTERM, timeout=20)
    assert code == 0, proc.output()
    assert not any(running(pid) for pid in redis_pids), "redis-server left running"


async def test_up_uses_configured_redis(tmp_path: Path, redis_url: str):
    port = free_port()
    env = clean_env() | {"VESTNIK_REDIS_URL": redis_url}
    proc = Proc(vestnik_argv("up", "--port", str(port)), env, tmp_path / "up.log",
                cwd=tmp_path).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30, proc=proc)
        assert not [c for c in children(proc.pid)
                    if b"redis-server" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert redis_url in proc.output()
    finally:
        assert proc.stop() == 0
