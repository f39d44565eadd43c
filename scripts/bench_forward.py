"""B5: messages/s of ONE `vestnik forwarder` process to a local SMTP sink or webhook receiver.

    .venv/bin/python scripts/bench_forward.py --channel email --n 5000
    .venv/bin/python scripts/bench_forward.py --channel webhook --n 5000

Starts a private redis-server, the sink in its own process (aiosmtpd, or a bare uvicorn
ASGI app for webhooks), schedules N due forward jobs (one notice and user each) with
`add_forward_jobs`, then starts `vestnik forwarder` and times from its first send to the
N-th, counted by the sink. Prints one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.redis_server import RedisServer, free_port  # noqa: E402


class Count:
    """Messages received, first and last arrival; a thread writes it to a file 10x/s."""

    def __init__(self, path: Path) -> None:
        self.path, self.n, self.first, self.last = path, 0, 0.0, 0.0
        threading.Thread(target=self._dump, daemon=True).start()

    def hit(self) -> None:
        self.last = time.time()
        if not self.n:
            self.first = self.last
        self.n += 1

    def _dump(self) -> None:
        while True:
            self.path.write_text(f"{self.n} {self.first} {self.last}")
            time.sleep(0.1)


def run_smtp_sink(port: int, counter: Path) -> None:
    from aiosmtpd.controller import Controller

    count = Count(counter)

    class Handler:
        async def handle_DATA(self, server, session, envelope) -> str:
            count.hit()
            return "250 OK"

    c = Controller(Handler(), hostname="127.0.0.1", port=port)
    c.start()
    try:
        while True:
            time.sleep(1)
    finally:
        c.stop()


def run_http_sink(port: int, counter: Path) -> None:
    import uvicorn

    count = Count(counter)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            msg = await receive()
            more = msg.get("more_body", False)
        count.hit()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_counter(counter: Path) -> tuple[int, float, float]:
    try:
        n, first, last = counter.read_text().split()
        return int(n), float(first), float(last)
    except (FileNotFoundError, ValueError):
        return 0, 0.0, 0.0


async def schedule(url: str, n: int, channel: str, sink_port: int) -> None:
    from streams.forward import ForwardJob, add_forward_jobs
    from streams.ids import now_ms, ulid
    from streams.keys import USER_TOPIC, Keys
    from streams.redis import connect
    from streams.schemas import Notice, User, json_encode

    keys = Keys("vn:")
    redis = connect(url)
    await redis.hset(keys.state(USER_TOPIC), "1",
                     json_encode(User(id="1", email="bench@example.org")))
    target = ({"email": {"users": ["1"]}} if channel == "email"
              else {"webhook": {"url": f"http://127.0.0.1:{sink_port}/hook"}})
    uid = "1" if channel == "email" else "*"
    now = now_ms()
    for start in range(0, n, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            jobs = []
            for _ in range(start, min(n, start + 1000)):
                nid = ulid()
                notice = Notice(id=nid, alert="bench", title=f"bench {nid}", body="x" * 200,
                                recipients=["1"], channels=target, created_at=now)
                pipe.set(keys.notice(nid), json_encode(notice))
                pipe.zadd(keys.unread("1"), {nid: 1})
                jobs.append(ForwardJob(nid, uid, now))
            add_forward_jobs(pipe, keys, jobs)
            await pipe.execute()
    await redis.aclose()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channel", choices=["email", "webhook"], default="email")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--pyspy", help="write a py-spy profile (speedscope/flamegraph by suffix)")
    ap.add_argument("--sink", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--counter", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink == "smtp":
        run_smtp_sink(args.port, Path(args.counter))
        return 0
    if args.sink == "http":
        run_http_sink(args.port, Path(args.counter))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="vestnik-b5-"))
    counter = tmp / "count"
    procs: list[subprocess.Popen[bytes]] = []
    with RedisServer(tmp / "redis", appendonly=False) as redis:
        try:
            port = free_port()
            kind = "smtp" if args.channel == "email" else "http"
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--sink", kind, "--port", str(port),
                 "--counter", str(counter)]))
            asyncio.run(schedule(redis.url, args.n, args.channel, port))
            env = {**os.environ, "VESTNIK_REDIS_URL": redis.url, "VESTNIK_LOG_LEVEL": "warning",
                   "VESTNIK_SMTP_URL": f"smtp://127.0.0.1:{port}",
                   "VESTNIK_SMTP_FROM": "vestnik@example.org",
                   "VESTNIK_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
            time.sleep(1.0)  # let the sink bind before the forwarder's first connect
            procs.append(subprocess.Popen([sys.executable, "-m", "app.cli", "forwarder"],
                                          env=env, cwd=ROOT))
            fwd = procs[-1].pid
            if args.pyspy:
                fmt = "speedscope" if args.pyspy.endswith(".json") else (
                    "raw" if args.pyspy.endswith(".txt") else "flamegraph")
                procs.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(fwd),
                     "-o", args.pyspy, "-f", fmt, "-r", "200", "--nonblocking"]))
            cpu_start = None
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                n, first, last = read_counter(counter)
                if cpu_start is None and n:
                    cpu_start = cpu_seconds(fwd)  # startup (imports, connects) left out
                if n >= args.n:
                    break
                time.sleep(0.1)
            cpu = cpu_seconds(fwd) - (cpu_start or 0.0)
            n, first, last = read_counter(counter)
        finally:
            for p in reversed(procs):
                # py-spy writes its profile on SIGINT (Ctrl-C), not on SIGTERM
                p.send_signal(signal.SIGINT if p.args[0].endswith("py-spy") else signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    rate = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    print(json.dumps({"bench": "B5", "channel": args.channel, "messages": n,
                      "seconds": round(last - first, 3), "messages_per_s": round(rate),
                      "forwarder_cpu_s": round(cpu, 2),
                      "messages_per_cpu_s": round(n / cpu) if cpu else None,
                      "load_avg_1m": os.getloadavg()[0]}))
    return 0 if n >= args.n else 1


if __name__ == "__main__":
    sys.exit(main())
