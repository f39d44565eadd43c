"""`vestnik bench` as a user runs it: it starts its own private Redis and parts, finishes,
and writes the JSON a regression check reads. One small benchmark (B6) keeps this quick;
the figures themselves are the bench's business, not a test's."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import msgspec

from support import children, gone


def test_bench_quick_b6_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    proc = subprocess.run([sys.executable, "-m", "vestnik.app.cli", "bench", "--quick",
                           "--only", "B6",
                           "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = msgspec.json.decode(out.read_bytes())
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["packages"]["redis"]
    assert "redis_server" in machine and report["seconds"] > 0
    rows = {r["id"]: r for r in report["rows"]}
    assert set(rows) == {"B6:bytes_per_entry", "B6:api_kb_per_conn",
                         "B6:steady_bytes_per_notice"}
    for row in rows.values():
        assert math.isfinite(row["value"])
        assert row["value"] > 0 or row["id"] == "B6:steady_bytes_per_notice"  # may be <= 0
        assert row["min"] <= row["value"] <= row["max"] and row["rounds"] >= 1
        assert row["target"] is not None and row["met"] in (True, False)
        assert row["unit"] and row["what"]


async def test_b1_sides_start_from_a_rewritten_aof_without_the_ceilings_output(redis) -> None:
    """fresh_aof drops what the ceiling loop wrote, keeps the notices both sides read, and
    returns once the AOF rewrite it started is done."""
    from vestnik.app.bench.env import fresh_aof

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


async def test_fresh_aof_follows_an_automatic_rewrite_already_running(redis) -> None:
    """Redis starts its own AOF rewrites (at 64 MB of growth); fresh_aof started while one
    runs waits for it and then runs its own, instead of failing on 'already in progress'."""
    from vestnik.app.bench.env import fresh_aof

    await redis.mset({f"slow:{i}": "x" for i in range(3)})
    await redis.config_set("rdb-key-save-delay", 200_000)  # 0.2 s a key: a slow rewrite
    try:
        before = (await redis.info("persistence"))["aof_rewrites"]
        await redis.bgrewriteaof()
        assert (await redis.info("persistence"))["aof_rewrite_in_progress"]
        await fresh_aof(redis)
        info = await redis.info("persistence")
    finally:
        await redis.config_set("rdb-key-save-delay", 0)
    assert info["aof_rewrites"] == before + 2
    assert not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]


def test_rounds_whose_pace_would_overrun_the_budget_stop_at_two(monkeypatch) -> None:
    from vestnik.app.bench import core

    def rounds(budget: float, round_s: float, quick: bool = False) -> int:
        now = [0.0]
        monkeypatch.setattr(core, "time", SimpleNamespace(monotonic=lambda: now[0]))
        bench = core.Bench(quick=quick, console=None, progress=None)  # type: ignore[arg-type]
        done = 0
        for _ in bench.each_round(budget):
            now[0] += round_s
            done += 1
        return done

    assert rounds(80, 10) == 3  # a fast box: the third round fits
    assert rounds(80, 33) == 2  # a slow one: 3 x 33 s would not
    assert rounds(80, 200) == 2  # never fewer than two (a median of several)
    assert rounds(80, 10, quick=True) == 1


def test_a_round_leaves_nothing_on_disk_and_a_failed_one_its_logs() -> None:
    """A round's Redis AOF runs to 220 MB: a full run had left 4.8 GB in /tmp."""
    from vestnik.app.bench.env import World

    with World() as world:
        (world.dir / "part.log").write_text("ok")
    assert not world.dir.exists()
    try:
        with World() as world:
            (world.dir / "part.log").write_text("what went wrong")
            raise RuntimeError("a part exited")
    except RuntimeError:
        pass
    assert (world.dir / "part.log").read_text() == "what went wrong"
    assert not (world.dir / "redis").exists()
    shutil.rmtree(world.dir)


def test_a_bench_stopped_with_sigterm_stops_its_redis_and_parts(tmp_path: Path) -> None:
    """The parts run in sessions of their own (a signal to the bench's process group misses
    them): SIGTERM must unwind the bench as Ctrl-C does, or `timeout vestnik bench` leaves
    an api, a center and a redis-server running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    bench = subprocess.Popen([sys.executable, "-m", "vestnik.app.cli", "bench", "--quick", "--only",
                              "B2"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    kids: list[int] = []
    try:
        for _ in range(600):  # up to 60 s for the redis-server, the api and the center
            kids = children(bench.pid)
            if len(kids) >= 3 or bench.poll() is not None:
                break
            time.sleep(0.1)
        assert len(kids) >= 3, f"the bench started {len(kids)} processes"
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=90)
        assert bench.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert "stopped by SIGTERM" in err and "failed round" not in err
        left = []
        for _ in range(100):  # up to 10 s for the last ones to be reaped
            left = [pid for pid in kids if not gone(pid)]
            if not left:
                break
            time.sleep(0.1)
        assert not left, f"left running: {left}"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
        for pid in kids:  # whatever a failure left behind
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_bench_on_a_cluster_prints_throughput_balance_and_latency_beside_one_redis(
        tmp_path: Path) -> None:
    """`vestnik bench --quick --redis-cluster 3`, its smallest size (one center a side, the
    default partitions: one per master where ingest partitions exist): B1's drain and B2's
    latency on a local 3-master cluster, each beside one Redis; every notice B2 sent
    reached the recipient's SSE stream through the api on the cluster."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    proc = subprocess.run([sys.executable, "-m", "vestnik.app.cli", "bench", "--quick",
                           "--redis-cluster", "3", "--centers", "1",
                           "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["id"]: r for r in msgspec.json.decode(out.read_bytes())["rows"]}
    for id in ("C1:cluster3_per_s", "C1:cluster3_redis_us_per_notice",
               "C1:cluster3_center_us_per_notice", "C1:cluster3_redis_bytes_in_per_notice"):
        assert rows[id]["value"] > 0 and rows[id]["ceiling"] > 0, rows[id]  # and one Redis's
    assert "by 1 center, " in rows["C1:cluster3_per_s"]["what"]
    assert rows["C1:cluster3_missing"]["value"] == 0  # every notice drained is in its feed
    assert "(one Redis: 0)" in rows["C1:cluster3_missing"]["what"]
    shares = [rows[f"C1:cluster3_master{i}_share"]["value"] for i in range(3)]
    assert math.isclose(sum(shares), 1.0, abs_tol=0.01) and min(shares) > 0
    assert "vn:notices" in " ".join(rows[f"C1:cluster3_master{i}_share"]["what"]
                                    for i in range(3))
    balance = rows["C1:cluster3_balance_worst_pct"]
    assert balance["met"] is (balance["value"] <= 20)
    assert math.isclose(balance["value"], max(abs(s * 3 - 1) for s in shares) * 100, abs_tol=1)
    for rate in (100, 2000, 5000):
        assert rows[f"C1:cluster3_B2@{rate}:lost"]["value"] == 0
        p50, p99 = (rows[f"C1:cluster3_B2@{rate}:{p}_ms"] for p in ("p50", "p99"))
        assert 0 < p50["value"] <= p99["value"] and p99["ceiling"] > 0
    for p in ("p50", "p99"):  # a PUBLISH over the cluster bus, and on one master
        bus = rows[f"C1:cluster3_bus_publish_{p}_ms"]
        assert bus["value"] > 0 and bus["ceiling"] > 0
    assert "C1:cluster3_balance_worst_pct" in proc.stderr  # the table, as a user reads it


def test_every_process_the_cluster_bench_starts_gets_the_partition_counts() -> None:
    """--partitions reaches the centers and apis of both sides as the two settings."""
    from vestnik.app.bench.cluster import Layout, OneRedis

    with OneRedis(Layout(0, 2, 1)) as world:
        env = world.env(VESTNIK_LOG_LEVEL="info")
    assert env["VESTNIK_INGEST_PARTITIONS"] == env["VESTNIK_FORWARD_PARTITIONS"] == "1"
    assert env["VESTNIK_LOG_LEVEL"] == "info"
    assert Layout(3, 2, 4).env() == {"VESTNIK_INGEST_PARTITIONS": "4",
                                     "VESTNIK_FORWARD_PARTITIONS": "4"}


def test_a_cluster_bench_with_a_bad_layout_says_which_option_before_it_starts() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    for args, option in ((["--redis-cluster", "2"], "--redis-cluster"),
                         (["--redis-cluster", "3", "--centers", "0"], "--centers"),
                         (["--redis-cluster", "3", "--partitions", "0"], "--partitions")):
        proc = subprocess.run([sys.executable, "-m", "vestnik.app.cli", "bench", *args],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith(f"vestnik bench: {option}"), proc.stderr[-2000:]
