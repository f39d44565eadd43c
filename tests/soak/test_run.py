"""`vestnik soak`: bad input exits 2 naming the argument; the verdict fails on each kind of
defect the ledger can report; a short soak against the real stack passes and writes its
summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vestnik.app.soak.run import REQUIRED, verdict


def _clean(**over: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {k: 0 for k in REQUIRED}
    summary.update(acknowledged=100, forwards_due=10, dead_letters_expected=5,
                   dead_letters_found=5, steady_bytes_per_notice=900, processes_down=[],
                   forward_duplicates=[])
    summary.update(over)
    return summary


def test_a_clean_summary_passes_and_a_duplicate_inside_the_window_is_allowed() -> None:
    assert verdict(_clean()) == []
    inside = [{"nid": "n", "uid": "u", "at": 1.0, "inside_window": True}]
    assert verdict(_clean(forwards_duplicated=1, forward_duplicates=inside)) == []


@pytest.mark.parametrize(("over", "named"), [
    ({"missing": 2}, "missing=2"),
    ({"duplicated_in_feeds": 1}, "duplicated_in_feeds=1"),
    ({"sse_gaps": 3}, "sse_gaps=3"),
    ({"sse_duplicates": 1}, "sse_duplicates=1"),
    ({"forwards_missing": 4}, "forwards_missing=4"),
    ({"forward_duplicates": [{"at": 1.0, "inside_window": False}]}, "outside the window=1"),
    ({"dead_letters_found": 4}, "dead_letters_found=4 of 5"),
    ({"processes_down": ["forwarder"]}, "processes_down=forwarder"),
    ({"died": [[1.0, "center-2"]]}, "died by itself=center-2"),
    ({"fault_errors": ["kill api at 12 s: StackError: api not ready"]}, "fault_errors=1"),
])
def test_each_defect_fails_the_verdict_by_name(over: dict[str, Any], named: str) -> None:
    failed = verdict(_clean(**over))
    assert len(failed) == 1 and named in failed[0], failed


def test_a_figure_the_ledger_did_not_give_fails() -> None:
    summary = _clean()
    del summary["sse_gaps"]
    assert verdict(summary) == ["sse_gaps absent"]


@pytest.mark.parametrize(("args", "named"), [
    (["--minutes", "0"], "--minutes"),
    (["--minutes", "soon"], "--minutes"),
    (["--minutes", "2000"], "--minutes"),
    ([], "--minutes"),
    (["--minutes", "1", "--seed", "-1"], "--seed"),
    (["--minutes", "1", "--users", "0"], "--users"),
])
def test_bad_arguments_exit_2_naming_the_argument(args: list[str], named: str) -> None:
    out = subprocess.run([sys.executable, "-m", "vestnik.app.cli", "soak", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert named in out.stderr


def test_help_lists_soak_as_a_development_command() -> None:
    out = subprocess.run([sys.executable, "-m", "vestnik.app.cli", "--help"],
                         capture_output=True, text=True, timeout=60)
    _, _, development = out.stdout.partition("development commands")
    assert "soak" in development


def _soak(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out_json = tmp_path / "out" / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vestnik.app.cli", "soak", "--minutes", "0.5", "--seed", "7",
         "--users", "6", "--sse-clients", "12", "--json", str(out_json), *extra],
        capture_output=True, text=True, timeout=900)
    return proc, out_json


@pytest.mark.timeout(900)
def test_a_short_soak_passes_and_writes_its_summary(tmp_path: Path) -> None:
    pytest.importorskip("vestnik.app.soak.load")
    proc, out_json = _soak(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out_json.read_text())
    assert summary["seed"] == 7 and summary["minutes"] == 0.5
    assert summary["ok"] is True and summary["failed"] == []
    assert summary["acknowledged"] > 0 and summary["missing"] == 0
    assert summary["processes_down"] == []
    assert summary["faults"], "a 30 s soak injects at least one mix (the first within 30 s)"
    assert "seed 7" in proc.stdout
