"""`vestnik bench` as a user runs it: it starts its own private Redis and parts, finishes,
and writes the JSON a regression check reads. One small benchmark (B6) keeps this quick;
the figures themselves are the bench's business, not a test's."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import msgspec


def test_bench_quick_b6_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--quick", "--only", "B6",
                           "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = msgspec.json.decode(out.read_bytes())
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["packages"]["redis"]
    assert "redis_server" in machine and report["seconds"] > 0
    rows = {r["id"]: r for r in report["rows"]}
    assert set(rows) == {"B6:bytes_per_entry", "B6:api_kb_per_conn"}
    for row in rows.values():
        assert math.isfinite(row["value"]) and row["value"] > 0
        assert row["min"] <= row["value"] <= row["max"] and row["rounds"] >= 1
        assert row["target"] is not None and row["met"] in (True, False)
        assert row["unit"] and row["what"]


async def test_b1_sides_start_from_a_rewritten_aof_without_the_ceilings_output(redis) -> None:
    """fresh_aof drops what the ceiling loop wrote, keeps the notices both sides read, and
    returns once the AOF rewrite it started is done."""
    from app.bench.suite import fresh_aof

    await redis.hset("ceiling:h:ceiling", mapping={f"{i}-0": "t" for i in range(1000)})
    await redis.xadd("ceiling:out", {"n": "1-0"})
    await redis.xadd("vn:notices", {"alert": "disk", "title": "x", "recipients": "1"})
    before = (await redis.info("persistence"))["aof_rewrites"]
    await fresh_aof(redis)
    info = await redis.info("persistence")
    assert info["aof_rewrites"] > before
    assert not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
    assert [k async for k in redis.scan_iter(match="ceiling:*")] == []
    assert await redis.xlen("vn:notices") == 1
