"""`vestnik bench`: the figures that matter, each next to its ceiling measured in the same run."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import msgspec
from rich.console import Console

from .core import Bench, Report, machine, new_progress, table
from .forwarding import use_peer
from .suite import SUITE

_stopped_by: list[int] = []


def _stop(task: asyncio.Task[int], sig: int) -> None:
    _stopped_by.append(sig)
    task.cancel()


async def run(quick: bool, only: list[str], json_path: str | None,
              peer: str | None = None) -> int:
    use_peer(peer)
    # SIGTERM (a `timeout`, a CI job cancelled) unwinds like Ctrl-C: every World stops its
    # processes (each in a session of its own, which a signal to the bench's group misses)
    # and its redis-server, instead of the bench dying and leaving them running
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, _stop, task, sig)
    console = Console(stderr=True, width=150)
    started = time.perf_counter()
    names = [n for n in SUITE if not only or n in only]
    with new_progress(console) as progress:
        bench = Bench(quick=quick, console=console, progress=progress)
        timings: dict[str, float] = {}
        for name in names:
            t0 = time.perf_counter()
            await SUITE[name](bench)
            timings[name] = round(time.perf_counter() - t0, 1)
            console.log(f"{name} took {timings[name]:g} s")
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
         peer: str | None = None) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None
    try:
        if uvloop is None:  # pragma: no cover
            return asyncio.run(run(quick, only, json_path, peer))
        return uvloop.run(run(quick, only, json_path, peer))
    except asyncio.CancelledError:
        if not _stopped_by:
            raise
        sys.stderr.write(f"bench: stopped by {signal.Signals(_stopped_by[0]).name}; "
                         "its processes were stopped\n")
        return 128 + _stopped_by[0]
