"""`vestnik bench`: run the suite with a progress display, print the table, write the JSON."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgspec
from rich.console import Console

from vestnik.app.bench.cluster import Layout, c1_throughput, layout_for
from vestnik.app.bench.cluster_latency import c1_latency
from vestnik.app.bench.core import Bench, Report, machine, new_progress, table
from vestnik.app.bench.env import run_stoppable
from vestnik.app.bench.forwarding import use_peer
from vestnik.app.bench.suite import SUITE


async def run(quick: bool, only: list[str], json_path: str | None,
              peer: str | None = None, cluster: Layout | None = None) -> int:
    use_peer(peer)
    console = Console(stderr=True, width=150)
    started = time.perf_counter()
    names = [n for n in SUITE if (not only and cluster is None) or n in only]
    with new_progress(console) as progress:
        bench = Bench(quick=quick, console=console, progress=progress)
        timings: dict[str, float] = {}
        for name in names:
            t0 = time.perf_counter()
            await SUITE[name](bench)
            timings[name] = round(time.perf_counter() - t0, 1)
            console.log(f"{name} took {timings[name]:g} s")
        if cluster is not None:  # C1: B1's drain, then B2's latency, beside one Redis
            t0 = time.perf_counter()
            await c1_throughput(bench, cluster)
            await c1_latency(bench, cluster)
            timings["C1"] = round(time.perf_counter() - t0, 1)
    console.print(table(bench.rows))
    report = Report(machine=machine(), rows=bench.rows, seconds=round(time.perf_counter()
                                                                       - started, 1),
                    timings=timings)
    if json_path:
        Path(json_path).write_bytes(  # noqa: ASYNC240 - once, at the very end
            msgspec.json.format(msgspec.json.encode(report)))
        console.print(f"figures written to {json_path}")
    return 0


def main(quick: bool, only: list[str], json_path: str | None,
         peer: str | None = None, cluster: int | None = None, centers: int = 2,
         partitions: int | None = None) -> int:
    layout = None
    if cluster is not None:
        try:
            layout = layout_for(cluster, centers, partitions)
        except ValueError as e:  # before anything starts
            print(f"vestnik bench: {e}", file=sys.stderr)
            return 2
    return run_stoppable(run(quick, only, json_path, peer, layout))
