"""`vestnik soak --minutes N [--seed S] [--json PATH]`: the run and its verdict.

Stack up -> the load and the fault scheduler for N minutes -> the faults end and anything
down is started again -> the load stops -> a short quiet drain (the ledger waits, bounded,
for the rest) -> the ledger's accounting -> the JSON summary -> exit 0 only when nothing
acknowledged is missing or doubled in a feed, no SSE client missed or repeated a notice,
every due forward was sent (duplicates only inside the ledger's documented window), every
bad entry was dead-lettered and no process is left down; else 1, naming what failed.
The seed alone fixes the faults and the load's choices (not their timing against the
box's speed): it is printed first, so any run can be repeated.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from vestnik.app.bench.env import run_stoppable
from vestnik.app.soak.faults import Fault, Scheduler
from vestnik.app.soak.stack import Stack, StackError
from vestnik.streams.consumer import group_drained
from vestnik.streams.keys import CENTER_GROUP

if TYPE_CHECKING:
    from vestnik.app.soak.load import Load

PROGRESS_S = 10.0
LOAD_STOP_S = 60.0  # in-flight sends end within this once the load is told to stop
DRAIN_S = 60.0  # run.py's own drain: parts up, the ingest stream handed out and acked
# beyond N minutes: stack up, heal, drain, the ledger's own bounded waits (about 5 min)
OVERRUN_S = 900.0
MAX_MINUTES = 24 * 60
ZERO = ("missing", "duplicated_in_feeds", "sse_gaps", "sse_duplicates", "forwards_missing")
REQUIRED = ("acknowledged", *ZERO, "forwards_due", "forwards_duplicated",
            "dead_letters_expected", "dead_letters_found", "steady_bytes_per_notice")


def verdict(summary: dict[str, Any]) -> list[str]:
    """What failed (empty: the soak passed). A figure the ledger did not give fails too."""
    failed = [f"{k} absent" for k in REQUIRED if k not in summary]
    failed += [f"{k}={summary[k]}" for k in ZERO if summary.get(k, 0) != 0]
    outside = [d for d in summary.get("forward_duplicates", [])
               if not d.get("inside_window")]
    if outside:
        failed.append(f"forward duplicates outside the window={len(outside)}")
    if summary.get("dead_letters_found") != summary.get("dead_letters_expected"):
        failed.append(f"dead_letters_found={summary.get('dead_letters_found')} of "
                      f"{summary.get('dead_letters_expected')} expected")
    if summary.get("processes_down"):
        failed.append(f"processes_down={','.join(summary['processes_down'])}")
    if summary.get("died"):
        failed.append(f"died by itself={','.join(name for _, name in summary['died'])}")
    if summary.get("fault_errors"):
        failed.append(f"fault_errors={len(summary['fault_errors'])}")
    return failed


def _say(line: str) -> None:
    print(f"soak: {line}", flush=True)


async def _progress(stack: Stack, load: Load, scheduler: Scheduler, t0: float) -> None:
    """A line every PROGRESS_S: elapsed, the load's counts, faults injected, parts down."""
    while True:
        await asyncio.sleep(PROGRESS_S)
        try:
            died = await stack.revive()
        except StackError as e:
            died = [f"(not restarted: {e})"]
        if died:
            _say(f"DIED by itself, restarted: {', '.join(died)}")
        m, s = divmod(int(time.monotonic() - t0), 60)
        counts = " ".join(f"{k} {v}" for k, v in load.stats().items())
        down = ",".join(stack.down()) or "-"
        _say(f"{m}:{s:02d} {counts}, faults {len(scheduler.injected)}, down {down}")


async def _drain(stack: Stack) -> None:
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        if not stack.down() and await group_drained(stack.admin(), stack.keys.notices,
                                                    CENTER_GROUP):
            return
        await asyncio.sleep(0.5)
    _say(f"the quiet drain did not settle in {DRAIN_S:g} s; accounting anyway")


async def soak(minutes: float, seed: int, *, users: int = 50, sse_clients: int = 200,
               sentinel: bool = False) -> dict[str, Any]:
    """Run the soak; the summary (the ledger's figures, the faults, what is down)."""
    from vestnik.app.soak.ledger import account
    from vestnik.app.soak.load import Load

    async with Stack(users=users, sentinel=sentinel) as stack:
        _say(f"stack up in {stack.dir} (Redis {stack.redis_url}, api {stack.api_url})")
        load = Load(stack, random.Random(f"{seed}:load"), users=users, sse_clients=sse_clients)
        scheduler = Scheduler(stack, load, random.Random(seed))
        stop = asyncio.Event()
        t0 = time.monotonic()
        load_task = asyncio.create_task(load.run(stop))
        progress = asyncio.create_task(_progress(stack, load, scheduler, t0))
        faults: list[Fault] = []
        healed: list[str] = []
        try:
            until = t0 + minutes * 60
            faults = await scheduler.run(until)
            await asyncio.wait({load_task}, timeout=max(0.0, until - time.monotonic()))
            healed = await scheduler.heal()
            stop.set()
            _say(f"faults over ({len(faults)} injected); restarted {healed or 'nothing'}; "
                 "draining")
            try:
                await asyncio.wait_for(asyncio.shield(load_task), LOAD_STOP_S)
            except TimeoutError:
                _say(f"the load did not stop in {LOAD_STOP_S:g} s")
            if load_task.done() and load_task.exception() is not None:
                raise load_task.exception()  # type: ignore[misc]  # a bug of the load
            await _drain(stack)
            summary = await account(stack, load)
        finally:
            progress.cancel()
            stop.set()
            if not load_task.done():
                load_task.cancel()
            await asyncio.gather(progress, load_task, return_exceptions=True)
            await load.close()
        summary.update({
            "seed": seed, "minutes": minutes, "sentinel": sentinel,
            "faults": msgspec.to_builtins(faults),
            "processes_down": stack.down(),
            "healed": healed,
            "died": [list(d) for d in stack.died],
            "fault_errors": scheduler.errors,
            "stack_events": [list(e) for e in stack.events],
        })
        stack.keep = stack.keep or bool(verdict(summary))  # a failed run keeps its logs
        return summary


def main(minutes: float, seed: int | None, json_path: str | None, *, users: int = 50,
         sse_clients: int = 200, sentinel: bool = False) -> int:
    """`vestnik soak`: 0 passed, 1 the accounting failed (or the stack did not come up)."""
    seed = secrets.randbelow(2**31) if seed is None else seed
    # the load's and the stack's HTTP clients would log every request between the progress
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _say(f"seed {seed}, {minutes:g} min, {users} users, {sse_clients} SSE clients"
         + (", Sentinel (a primary, a replica, 3 sentinels)" if sentinel else ""))

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(minutes * 60 + OVERRUN_S):
            return await soak(minutes, seed, users=users, sse_clients=sse_clients,
                              sentinel=sentinel)

    try:
        summary = run_stoppable(bounded(), "soak")
    except StackError as e:  # a part or Redis that would not start (or start again)
        _say(f"the stack failed: {e}")
        return 1
    except TimeoutError:
        _say(f"did not finish within {minutes:g} min + {OVERRUN_S:g} s")
        return 1
    failed = verdict(summary)
    summary["ok"], summary["failed"] = not failed, failed
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(msgspec.json.format(msgspec.json.encode(summary), indent=1) + b"\n")
    figures = ", ".join(f"{k} {summary.get(k)}" for k in REQUIRED)
    _say(f"{len(summary['faults'])} faults; {figures}")
    if failed:
        _say("FAILED: " + "; ".join(failed))
        return 1
    _say("passed")
    return 0
