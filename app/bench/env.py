"""The bench's own world: a private redis-server and Vestnik processes on loopback ports."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import jwt
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from vestnik.app.bench import ceiling_loop
from vestnik.streams.redis_server import RedisServer, free_port

# the readiness polls would print a line each between the progress bars
logging.getLogger("httpx").setLevel(logging.WARNING)


T = TypeVar("T")
UP_PAUSE = 0.05


def run_stoppable(main: Coroutine[Any, Any, T], name: str = "bench") -> T:
    """Run `main` on uvloop and return its result. SIGTERM and SIGHUP (a `timeout`, a
    cancelled CI job) unwind it as Ctrl-C does, so every World (or the soak's Stack) stops
    its processes (each in a session of its own, which a signal to the command's process
    group misses) and its redis-server, rather than the process dying and leaving them
    running; then it exits with 128 + the signal (SystemExit). `name` starts its line."""
    import uvloop

    got: list[int] = []

    async def stoppable() -> T:
        task = asyncio.current_task()
        assert task is not None

        def stop(sig: int) -> None:
            got.append(sig)
            task.cancel()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop, sig)
        return await main

    try:
        return uvloop.run(stoppable())
    except asyncio.CancelledError:
        if not got:
            raise
        sys.stderr.write(f"{name}: stopped by {signal.Signals(got[0]).name}; its processes "
                         "were stopped\n")
        raise SystemExit(128 + got[0]) from None


async def fresh_aof(r: Redis, timeout: float = 120) -> None:
    """Drop what a ceiling loop wrote (its PREFIX) and rewrite the AOF, waiting until it is
    done. B1 measures each side on one Redis, one after the other, with the AOF on as in
    production: so each starts from the same compact AOF and pays for the rewrites of its
    own writes only. (A rewrite forks Redis and copies the whole dataset; left in place, the
    ceiling's 200,000-field hash and AOF growth were rewritten during the center's run.)
    B2's and B7's latency rounds start from one too: Redis rewrites by itself at 64 MB of
    growth, and a fork landing in one 4 s round is that round's p99."""
    drop = [k async for k in r.scan_iter(match=f"{ceiling_loop.PREFIX}*", count=1000)]
    if drop:
        await r.delete(*drop)
    deadline = time.monotonic() + timeout
    started = False
    while time.monotonic() < deadline:
        info = await r.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            if started:
                return
            try:  # (an automatic rewrite may have begun before the deletes: ours follows it)
                await r.bgrewriteaof()
                started = True
            except ResponseError as e:
                if "in progress" not in str(e):
                    raise
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the AOF rewrite did not finish in {timeout}s")


class BenchProc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=self._log,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (utime + stime), which the box's other load does not bend."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until_up(attempt: Callable[[], Awaitable[T]], what: str, *,
                   proc: BenchProc | None = None, seconds: float = 10) -> T:
    """`attempt()`, a first request to a server just started, until it stops raising OSError:
    every 50 ms, at most `seconds`; at once, with its log's tail, if `proc` has exited."""
    for i in range(int(seconds / UP_PAUSE) + 1):
        if proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {proc.log_path.read_text()[-1500:]}")
        try:
            return await attempt()
        except OSError:
            if i * UP_PAUSE >= seconds:
                break
            await asyncio.sleep(UP_PAUSE)
    log = f": {proc.log_path.read_text()[-1500:]}" if proc is not None else ""
    raise RuntimeError(f"{what} not up in {seconds:g} s{log}")


class World(AbstractContextManager["World"]):
    """A private redis-server (AOF everysec, as `vestnik up` runs it) and helpers to start
    Vestnik parts against it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vestnik-bench-"))
        self.redis_server = RedisServer(self.dir / "redis", appendonly=True)
        self.secret = secrets.token_urlsafe(32)
        self.service_token = "svc_" + secrets.token_urlsafe(16)
        self.procs: list[BenchProc] = []

    def __enter__(self) -> World:
        self.redis_server.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.redis_server.stop()
        # a round's AOF is up to 220 MB: a full run left 4.8 GB in /tmp. The logs of the
        # parts are kept when the round failed (its error names the process, not the path),
        # not when it was stopped (Ctrl-C, SIGTERM)
        failed = et is not None and not issubclass(et, asyncio.CancelledError
                                                   | KeyboardInterrupt)
        shutil.rmtree(self.dir / "redis" if failed else self.dir, ignore_errors=True)
        if failed:
            sys.stderr.write(f"bench: the failed round's logs are in {self.dir}\n")

    @property
    def url(self) -> str:
        return self.redis_server.url

    def redis(self) -> Redis:
        return Redis.from_url(self.url, max_connections=8)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
        env.update({
            "VESTNIK_REDIS_URL": self.url, "VESTNIK_SECRET": self.secret,
            "VESTNIK_SERVICE_TOKENS": self.service_token, "VESTNIK_LOG_LEVEL": "warning",
            "VESTNIK_FORWARD_AFTER": "3600",
            # the bench's webhook sinks listen on loopback, which egress refuses by default
            "VESTNIK_EGRESS_ALLOW": "127.0.0.1",
        })
        env.update(extra)
        return env

    def start(self, *args: str, **env: str) -> BenchProc:
        name = f"{args[0]}-{len(self.procs)}"
        p = BenchProc([sys.executable, "-m", "vestnik.app.cli", *args], self.env(**env),
                      self.dir / f"{name}.log")
        self.procs.append(p)
        return p

    def stop(self, proc: BenchProc) -> None:
        proc.stop()
        self.procs.remove(proc)

    def start_api(self, **env: str) -> tuple[BenchProc, str]:
        port = free_port()
        p = self.start("api", "--port", str(port), **env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if p.proc.poll() is not None:
                raise RuntimeError(f"api exited: {p.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    return p, base
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("api not ready in 30 s")

    def token(self, user: str) -> str:
        return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, self.secret,
                          algorithm="HS256")
