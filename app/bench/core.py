"""Benchmark plumbing: rows with their same-run ceiling, rounds, the machine, the report.

Each benchmark is a coroutine that gets a `Bench` and records rows; every row
is the median of several rounds with min and max, and names the ceiling it is
compared with (measured in the same run, on the same machine, at the same time).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Literal

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


class Row(msgspec.Struct, kw_only=True):
    id: str
    what: str
    value: float
    unit: str
    min: float
    max: float
    rounds: int
    ceiling: float | None = None
    ratio: float | None = None
    target: float | None = None
    target_ratio: float | None = None  # the ratio to the ceiling the target also asks for
    better: Literal["higher", "lower"] = "higher"
    met: bool | None = None


class Report(msgspec.Struct):
    machine: dict[str, object]
    rows: list[Row]
    seconds: float
    timings: dict[str, float] = {}  # seconds each benchmark took (B1, B2, ...)


def _cpuinfo() -> dict[str, str]:
    """The first processor's lines of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if not ln.strip():
                    break
                name, _, value = ln.partition(":")
                info.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return info


def machine() -> dict[str, object]:
    info = _cpuinfo()
    cpu = info.get("model name", "")
    # a VM's model name is often only the vendor's ("AMD EPYC"): family and model tell
    # the generation (AMD family 26 is Zen 5), and the hypervisor flag a shared host
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']}, model {info.get('model', '?')}"
        cpu += ", VM)" if "hypervisor" in info.get("flags", "").split() else ")"
    try:
        redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        redis_v = "unknown"
    versions = {}
    for pkg in ("vestnik", "redis", "hiredis", "msgspec", "starlette", "uvicorn", "uvloop",
                "httptools", "arq"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "redis_server": redis_v,
        "packages": versions,
    }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


@dataclass
class Bench:
    quick: bool
    console: Console
    progress: Progress
    rows: list[Row] = field(default_factory=list)
    only: set[str] = field(default_factory=set)

    def rounds(self, full: int = 3) -> int:
        return 1 if self.quick else full

    def each_round(self, budget_s: float, full: int = 3) -> Iterator[int]:
        """The rounds of a measurement whose rounds take longer on a slower box: one with
        --quick; else at least two, and up to `full` while the next one, at the pace of the
        ones before, still ends within `budget_s` of the first. (A box twice as slow as the
        one the budgets were set on runs two: the full run stays under 10 minutes.)"""
        if self.quick:
            yield 0
            return
        t0 = time.monotonic()
        for i in range(full):
            spent = time.monotonic() - t0
            if i >= 2 and spent * (i + 1) / i > budget_s:
                return
            yield i

    def done(self, task: TaskID) -> None:
        """A progress bar ends full when a slow box ran fewer rounds than it counted on."""
        self.progress.update(task, total=self.progress.tasks[task].completed)

    def record(self, id: str, what: str, values: list[float], unit: str, *,
               ceiling: list[float] | float | None = None, target: float | None = None,
               target_ratio: float | None = None,
               better: Literal["higher", "lower"] = "higher") -> Row:
        value = statistics.median(values)
        ceil = statistics.median(ceiling) if isinstance(ceiling, list) else ceiling
        ratio = None
        if ceil:
            ratio = value / ceil if better == "higher" else (ceil / value if value else None)
        met = None
        if target is not None:
            met = value >= target if better == "higher" else value <= target
        if target_ratio is not None:
            met = (met is not False) and ratio is not None and ratio >= target_ratio
        row = Row(id=id, what=what, value=round(value, 3), unit=unit, min=round(min(values), 3),
                  max=round(max(values), 3), rounds=len(values),
                  ceiling=round(ceil, 3) if ceil is not None else None,
                  ratio=round(ratio, 3) if ratio is not None else None, target=target,
                  target_ratio=target_ratio, better=better, met=met)
        self.rows.append(row)
        self.console.log(f"{row.id}: {row.value:g} {row.unit}"
                         + (f" (ceiling {row.ceiling:g}, ratio {row.ratio:.2f})"
                            if row.ceiling is not None and row.ratio is not None else "")
                         + ("" if met is None else (" [green]met" if met else " [red]not met")))
        return row


BenchFn = Callable[[Bench], Awaitable[None]]


def table(rows: list[Row]) -> Table:
    t = Table(title="vestnik bench", show_lines=False)
    for col in ("id", "value", "unit", "min", "max", "ceiling", "ratio", "target", "met"):
        t.add_column(col, justify="left" if col in ("id", "unit") else "right")
    for r in rows:
        t.add_row(
            r.id, f"{r.value:g}", r.unit, f"{r.min:g}", f"{r.max:g}",
            "" if r.ceiling is None else f"{r.ceiling:g}",
            "" if r.ratio is None else f"{r.ratio:.2f}",
            ("" if r.target is None else ("≥" if r.better == "higher" else "≤") + f"{r.target:g}")
            + ("" if r.target_ratio is None else f", ratio ≥{r.target_ratio:g}"),
            "" if r.met is None else ("yes" if r.met else "NO"),
        )
    return t


def new_progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                    TextColumn("{task.completed:.0f}/{task.total:.0f}"), TimeElapsedColumn(),
                    console=console, transient=False)

