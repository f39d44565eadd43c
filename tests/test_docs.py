"""The docs against the code: every setting documented, every link and anchor pointing at
something, the documented imports importable, one benchmark file per kind of machine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import msgspec

from support import ROOT
from vestnik.streams.config import Config, env_name

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def markdown_text(path: Path) -> str:
    """The text outside fenced code blocks (a link in a code sample is not a link)."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown_text(path).splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_every_setting_is_in_the_configuration_table():
    """docs/configuration.md is the one table of settings: each field of Config in it,
    nothing in it that Config does not have."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    first_cells = [ln.split("|")[1] for ln in text.splitlines() if ln.startswith("| `VESTNIK_")]
    documented = {name for cell in first_cells for name in re.findall(r"VESTNIK_[A-Z_]+", cell)}
    fields = {env_name(f.name) for f in msgspec.structs.fields(Config)}
    assert sorted(fields - documented) == [], "settings with no row in docs/configuration.md"
    assert sorted(documented - fields) == [], "rows for settings Config does not have"


def test_links_and_anchors_resolve():
    """A moved section or a deleted benchmark file leaves no dangling link behind."""
    bad = []
    for doc in DOCS:
        for target in LINK.findall(markdown_text(doc)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(ROOT)} → {target}"
            if not dest.exists():
                bad.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{where}: no such heading")
    assert bad == []


def test_documented_imports_import():
    """The plugin and alert-kit lines users copy (`from vestnik.… import …`) work as written
    on the installed package."""
    lines = sorted({ln.strip() for doc in DOCS for ln in doc.read_text().splitlines()
                    if re.match(r"\s*from vestnik[.\w]* import [\w, ]+$", ln)})
    assert any("vestnik.wrapper.kit" in ln for ln in lines)
    assert any("vestnik.streams.channels" in ln for ln in lines)
    run = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT / "docs")
    assert run.returncode == 0, run.stderr
    # and none of the old top-level names a user could still copy from a doc
    old = [f"{doc.relative_to(ROOT)}: {ln.strip()}" for doc in DOCS
           for ln in doc.read_text().splitlines()
           if re.match(r"\s*(from|import) (app|streams|wrapper)[. ]", ln)]
    assert old == []


def test_one_benchmark_file_per_kind_of_machine():
    """docs/bench keeps the latest full run of each kind of machine, each one described."""
    readme = (ROOT / "docs" / "bench" / "README.md").read_text()
    kinds: dict[str, list[str]] = {}
    for f in sorted((ROOT / "docs" / "bench").glob("*.json")):
        run = json.loads(f.read_text())
        kinds.setdefault(run["machine"]["cpu"], []).append(f.name)
        assert {"B1", "B2", "B3", "B4", "B5", "B6", "B7", "N1"} <= set(run["timings"]), (
            f"{f.name} is not a full run")
        assert f"]({f.name})" in readme, f"{f.name} is not described in docs/bench/README.md"
    assert {k: v for k, v in kinds.items() if len(v) > 1} == {}
