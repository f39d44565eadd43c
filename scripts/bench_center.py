"""Notices per second through ONE `vestnik center` process, as `vestnik bench` B1 measures it,
with the CPU each side spent per notice.

Starts a private redis-server (AOF everysec), preloads N notices exactly like B1 (one
recipient each over 1,000 users with emails, channels {"email":{}}, forward_after 3600,
so each one is stored, counted unread, published live and its forward job scheduled),
drains them first with the bare ceiling loop (app/bench/ceiling_loop.py) and then with
one `vestnik center`, and prints per round: notices/s, the same-run ceiling, the ratio,
and the CPU time per notice of the center process and of redis-server
(/proc/<pid>/stat utime+stime between the first read and the drain). On a shared box
the ratio and the CPU per notice are the robust figures, not wall-clock alone.

    .venv/bin/python scripts/bench_center.py [-n 50000] [--rounds 3] [--per 1]
        [--batch 250] [--no-forward] [--stats] [--py-spy out.svg] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vestnik.app.bench.env import BenchProc, World, cpu_seconds, fresh_aof, run_stoppable  # noqa: E402
from vestnik.app.bench.suite import group_state, load_notices, seed_users  # noqa: E402
from vestnik.streams.keys import CENTER_GROUP, Keys  # noqa: E402

K = Keys("vn:")


def log_errors(path: Path) -> str:
    """The first error lines of a log (each cut to its head and tail)."""
    with open(path, "rb") as f:
        head = f.read(1_000_000).decode(errors="replace")
    return "\n".join([ln[:300] + (" ... " + ln[-300:] if len(ln) > 600 else "")
                      for ln in head.splitlines() if "Error" in ln][:6])


async def drain(r, group: str, n: int, proc: BenchProc, redis_pid: int,
                timeout: float = 600) -> tuple[float, float, float]:
    """(items/s, center CPU s, redis CPU s) from the group's first read until all n are
    read and acked."""
    deadline = time.monotonic() + timeout
    t0 = r0 = c0 = s0 = None
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise SystemExit(f"{group} exited: {proc.log_path.read_text()[-1500:]}")
        if proc.log_path.stat().st_size > 1_000_000:  # failing in a loop: say why, stop
            raise SystemExit(f"{group} is failing:\n{log_errors(proc.log_path)}")
        st = await group_state(r, K.notices, group)
        now = time.perf_counter()
        if st is not None:
            read, pending = st
            if t0 is None and read > 0:
                t0, r0, c0, s0 = now, read, cpu_seconds(proc.pid), cpu_seconds(redis_pid)
            if read >= n and pending == 0:
                assert t0 is not None and r0 is not None and c0 is not None and s0 is not None
                done = n - r0
                return (done / max(now - t0, 1e-6), (cpu_seconds(proc.pid) - c0) / max(done, 1),
                        (cpu_seconds(redis_pid) - s0) / max(done, 1))
        await asyncio.sleep(0.005)
    raise SystemExit(f"{group} did not drain {n} entries in {timeout}s")


def start_py_spy(out: str, pid: int) -> subprocess.Popen[bytes]:
    fmt = {".json": ["-f", "speedscope"], ".txt": ["-f", "raw"]}.get(Path(out).suffix, [])
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o", out,
                             "--pid", str(pid), "-r", "200", *fmt],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def one_round(args: argparse.Namespace, root: Path | None) -> dict[str, float]:
    with World() as world:
        r = world.redis()
        redis_pid = world.redis_server.pid
        assert redis_pid is not None
        await seed_users(r, args.users)
        await load_notices(r, args.n, args.per, args.users, forward=args.forward)
        await fresh_aof(r)
        ceiling = BenchProc([sys.executable, "-m", "vestnik.app.bench.ceiling_loop", world.url,
                             K.notices, "ceiling"], world.env(), world.dir / "ceiling.log")
        try:
            c_rate, c_cpu, c_rcpu = await drain(r, "ceiling", args.n, ceiling, redis_pid)
        finally:
            ceiling.stop()
        await fresh_aof(r)
        await r.xgroup_create(K.notices, CENTER_GROUP, id="0")
        await r.config_resetstat()
        rewrites0 = (await r.info("persistence")).get("aof_rewrites", 0)
        if root is None:
            center = world.start("center", "--consumer", "bench",
                                 VESTNIK_CENTER_BATCH=str(args.batch))
        else:  # another checkout's center: its code first on sys.path, not ours (-P)
            center = BenchProc([sys.executable, "-P", "-m", "vestnik.app.cli", "center",
                                "--consumer",
                                "bench"], world.env(VESTNIK_CENTER_BATCH=str(args.batch),
                                                    PYTHONPATH=str(root)),
                               world.dir / "center-baseline.log")
            world.procs.append(center)
        spy = start_py_spy(args.py_spy, center.pid) if args.py_spy else None
        rate, cpu, rcpu = await drain(r, CENTER_GROUP, args.n, center, redis_pid)
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes the profile and exits
            spy.wait(30)
        stats = await r.info("commandstats")
        pers = await r.info("persistence")
        await r.aclose()
    if args.stats:  # where Redis spent its time during the center's drain
        top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:10]
        print("  redis commandstats (µs per notice, calls per notice): " + ", ".join(
            f"{name.removeprefix('cmdstat_')} {v['usec'] / args.n:.1f} ({v['calls'] / args.n:.2f})"
            for name, v in top))
        print(f"  AOF rewrites during the round: {pers.get('aof_rewrites', 0) - rewrites0}, "
              f"AOF size {pers.get('aof_current_size', 0) / 1e6:.0f} MB")
    return {"rate": rate, "ceiling": c_rate, "ratio": rate / c_rate, "cpu_us": cpu * 1e6,
            "redis_us": rcpu * 1e6, "ceil_cpu_us": c_cpu * 1e6, "ceil_redis_us": c_rcpu * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per", type=int, default=1, help="recipients per notice")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250, help="VESTNIK_CENTER_BATCH")
    p.add_argument("--no-forward", dest="forward", action="store_false",
                   help="notices without forward channels")
    p.add_argument("--baseline", metavar="DIR",
                   help="also run the center of another checkout (e.g. `git worktree add`), "
                        "interleaved round by round with this one")
    p.add_argument("--stats", action="store_true",
                   help="print Redis INFO commandstats of the center's drain")
    p.add_argument("--py-spy", help="profile the center of the last round to this file "
                                    "(.svg flame graph, .json speedscope, .txt collapsed stacks)")
    args = p.parse_args()
    spy = args.py_spy
    variants: dict[str, Path | None] = {"this": None}
    if args.baseline:
        variants = {"baseline": Path(args.baseline).resolve(), "this": None}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for i in range(args.rounds):  # interleaved, so both see the same load
        for name, root in variants.items():
            args.py_spy = spy if i == args.rounds - 1 and root is None else None
            row = run_stoppable(one_round(args, root))
            rows[name].append(row)
            print(f"round {i + 1} {name}: {row['rate']:,.0f} notices/s, ceiling "
                  f"{row['ceiling']:,.0f}/s, ratio {row['ratio']:.2f}; CPU per notice: center "
                  f"{row['cpu_us']:.1f} µs, redis {row['redis_us']:.1f} µs (ceiling loop "
                  f"{row['ceil_cpu_us']:.1f} µs, redis {row['ceil_redis_us']:.1f} µs); load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    for name, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"{name}: median of {len(rs)}: {med['rate']:,.0f} notices/s, ceiling "
              f"{med['ceiling']:,.0f}/s, ratio {med['ratio']:.2f}, center {med['cpu_us']:.1f} "
              f"µs/notice, redis {med['redis_us']:.1f} µs/notice ({args.n:,} notices "
              f"x{args.per}, batch {args.batch}{', forward' if args.forward else ''})")


if __name__ == "__main__":
    main()
