"""Helpers of the wrapper tests: alert configs, settings and entities the way the API
and products write them, the wrapper's notices, dead letters, metrics and memory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from vestnik.streams.keys import SETTINGS_TOPIC, Keys


def alert_toml(path: Path, name: str, command: list[str], **extra: Any) -> Path:
    """Write an alert.toml (restart tables as `restart={...}`)."""
    lines = [f"name = {json.dumps(name)}", f"command = {json.dumps(command)}"]
    restart = extra.pop("restart", None)
    for key, value in extra.items():
        lines.append(f"{key} = {json.dumps(value)}")
    if restart:
        lines.append("[restart]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in restart.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def setting(sid: str, name: str, metric: dict | None = None, channel: dict | None = None,
            enabled: bool = True, version: int = 1) -> dict[str, Any]:
    return {"id": sid, "name": name, "metric": metric or {},
            "channel": channel or {"ui": {"users": ["1"]}}, "enabled": enabled,
            "version": version, "created_at": 1795740000000, "updated_at": 1795740000000}


async def put_setting(redis: Redis, keys: Keys, s: dict[str, Any], op: str = "update") -> None:
    """What the settings API does: the hash, then an event on topic `settings`."""
    data = json.dumps(s, separators=(",", ":"))
    await redis.hset(keys.settings, s["id"], data)
    await redis.xadd(keys.topic(SETTINGS_TOPIC), {"op": op, "id": s["id"], "data": data})


async def delete_setting(redis: Redis, keys: Keys, sid: str) -> None:
    await redis.hdel(keys.settings, sid)
    await redis.xadd(keys.topic(SETTINGS_TOPIC), {"op": "delete", "id": sid})


async def publish(redis: Redis, keys: Keys, topic: str, eid: str, data: dict | None,
                  op: str = "update") -> str:
    fields = {"op": op, "id": eid}
    if data is not None:
        fields["data"] = json.dumps(data, separators=(",", ":"))
    return (await redis.xadd(keys.topic(topic), fields)).decode()


def _text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in fields.items()}


async def notices(redis: Redis, keys: Keys) -> list[dict[str, str]]:
    return [_text(f) for _, f in await redis.xrange(keys.notices)]


async def dead_letters(redis: Redis, keys: Keys) -> list[dict[str, str]]:
    return [_text(f) for _, f in await redis.xrange(keys.notices_dead)]


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the wrapper exports (none while its metrics port is not up yet)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.ConnectError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for (n, lbls), value in metrics(port).items():
        if n == name and set(labels.items()) <= set(lbls):
            total += value
    return total


def proc_status(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def read_lines(path: Path) -> list[str]:
    """The complete lines of a file a live process is writing: a line its writer has not
    finished (a buffer flushed mid-line) is left for the next read."""
    if not path.exists():
        return []
    text = path.read_text()
    return text[:text.rfind("\n") + 1].splitlines()


def wait_exit(proc: Any, timeout: float) -> tuple[int, float]:
    """Wait for a Proc's process to exit: (code, seconds taken)."""
    t0 = time.monotonic()
    code = proc.proc.wait(timeout)
    return code, time.monotonic() - t0
