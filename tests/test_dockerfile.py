"""The Dockerfile, checked without a Docker engine: it runs a real `vestnik` subcommand,
copies files that exist (everything `pip install .` needs), and runs as a non-root user."""

from __future__ import annotations

import json
import shlex
import tomllib

from support import ROOT
from vestnik.app.cli import COMMANDS


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"use the exec form (JSON array): {args}"
    return json.loads(args)


def test_runs_the_api_subcommand():
    ins = instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    cmd = exec_form(next(a for i, a in ins if i == "CMD"))
    assert not any(i == "ENTRYPOINT" for i, _ in ins)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cmd[0] in pyproject["project"]["scripts"]
    assert cmd[1] in COMMANDS and cmd == ["vestnik", "api"]


def test_copied_files_exist_and_cover_the_packages():
    copied: set[str] = set()
    for ins, args in instructions():
        if ins in ("COPY", "ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            for src in parts[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the project"
                copied.add(src.rstrip("/"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    for package in setuptools["packages"]:
        folder = package_folder(package, setuptools["package-dir"])
        assert folder.split("/")[0] in copied, f"package {package} ({folder}/) is not copied"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    installs = [a for i, a in instructions() if i == "RUN" and "pip install" in a]
    # the image runs the service: no extras (`bench` pulls in rich, `test` pytest and more)
    assert installs and all("pip install . " in a + " " and "[" not in a for a in installs)


def package_folder(package: str, package_dir: dict[str, str]) -> str:
    """The folder of `package` under pyproject's `package-dir` (longest mapped prefix)."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:n]))
        if mapped is not None:
            return "/".join([mapped, *parts[n:]])
    return "/".join(parts)


def test_non_root_listens_on_all_interfaces():
    ins = instructions()
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    # the user is switched to before the command runs (after the install)
    order = [i for i, _ in ins]
    assert order.index("USER") > max(n for n, i in enumerate(order) if i == "RUN")
    env = " ".join(a for i, a in ins if i == "ENV")
    assert "VESTNIK_HOST=0.0.0.0" in env
    assert ("EXPOSE", "8080") in ins
    health = next(a for i, a in ins if i == "HEALTHCHECK")
    assert "/healthz" in health
