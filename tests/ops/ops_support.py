"""Helpers of the ops tests: start a non-api process with its ops listener, ask it, run
`vestnik health`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from support import ROOT, Proc, base_env, eventually, vestnik_argv
from vestnik.streams.redis_server import free_port

BRIDGE_PATTERNS = "panel:vm:*=vm"
# the alert of `wrap`: one line that is not the protocol (a dead letter), then idle
ALERT = "import sys\nprint('not json', flush=True)\nfor line in sys.stdin: pass\n"
PROCESSES = ("center", "forwarder", "bridge", "wrap")
# what /readyz checks in each process, besides `redis`
OWN_CHECKS = {"center": {"group:center", "partitions", "consumer", "forwarder"},
              "forwarder": {"worker", "partitions"}, "bridge": {"subscribed"}, "wrap": {"alert"}}


@dataclass
class Ops:
    """A running process and its ops port."""

    name: str
    proc: Proc
    port: int

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)

    async def ready(self, timeout: float = 30) -> httpx.Response:
        async def check() -> httpx.Response | None:
            assert self.proc.proc is not None and self.proc.proc.poll() is None, \
                self.proc.output()
            try:
                r = self.get("/readyz")
            except httpx.TransportError:  # not listening yet
                return None
            return r if r.status_code == 200 else None

        return await eventually(check, timeout=timeout, interval=0.1,
                                what=f"{self.name} ready")


def alert_toml(folder: Path) -> Path:
    path = folder / "alert.toml"  # JSON strings and lists are TOML too
    path.write_text(f"name = \"ops-demo\"\n"
                    f"command = {json.dumps([sys.executable, '-c', ALERT])}\n")
    return path


def start_ops(start_proc: Callable[..., Proc], name: str, folder: Path,
              **env: str) -> Ops:
    """`vestnik <name>` with VESTNIK_METRICS_PORT on a free port (the env var, not the flag:
    what a container sets)."""
    port = free_port()
    args = (name, str(alert_toml(folder))) if name == "wrap" else (name,)
    proc = start_proc(*args, VESTNIK_METRICS_PORT=str(port),
                      VESTNIK_KEYSPACE_PATTERNS=BRIDGE_PATTERNS, **env)
    return Ops(name, proc, port)


def health(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`vestnik health` as Docker's HEALTHCHECK runs it."""
    return subprocess.run(vestnik_argv("health", *args), env=base_env(redis_url, **env),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
