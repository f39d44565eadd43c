"""The Dockerfile, checked without a Docker engine: it runs a real `vestnik` subcommand,
copies files that exist (everything `pip install .` needs), installs its dependencies from
requirements.lock (hash-checked, in step with pyproject, no bench or test packages) and runs
as a non-root user."""

from __future__ import annotations

import json
import re
import shlex
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from support import ROOT, installed_closure
from vestnik.app.cli import COMMANDS, parser

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]


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
    # the image runs the service: its dependencies from the lock, hash-checked, then the
    # package alone; no extras (`bench` pulls in rich, `test` pytest and more)
    assert len(installs) == 2, installs
    lock, package = (shlex.split(a.split("&&")[0]) for a in installs)
    assert lock[-3:] == ["--require-hashes", "-r", "requirements.lock"], installs[0]
    assert package[-2:] == ["--no-deps", "."], installs[1]
    assert "requirements.lock" in copied


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


def test_healthcheck_is_a_vestnik_command():
    health = next(a for i, a in instructions() if i == "HEALTHCHECK")
    cmd = exec_form(health.split(" CMD ", 1)[1])
    assert cmd == ["vestnik", "health"]
    if "health" not in COMMANDS:
        pytest.skip("`vestnik health` is issue 22's ops work, not in this tree yet")
    assert parser().parse_args(cmd[1:]).command == "health"


def locked() -> dict[str, tuple[Version, list[str]]]:
    """requirements.lock: canonical name → (pinned version, its hashes)."""
    text = (ROOT / "requirements.lock").read_text()
    out: dict[str, tuple[Version, list[str]]] = {}
    for entry in re.sub(r"\\\n\s*", " ", text).splitlines():
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        spec, *options = entry.split(" --")
        name, sep, version = spec.strip().partition("==")
        assert sep and "[" not in name, f"requirements.lock: {entry!r} is not pinned (name==x)"
        hashes = [o.split("=", 1)[1].strip() for o in options if o.startswith("hash=sha256:")]
        out[canonicalize_name(name)] = (Version(version), hashes)
    return out


def test_lock_pins_every_runtime_dependency_with_hashes():
    """pyproject's `dependencies` (and the extras they name, such as uvicorn[standard]'s
    uvloop) are all in the lock, at versions their specifiers allow, each with its hashes:
    `pip install --require-hashes` refuses anything else. Out of step: scripts/lock.sh."""
    lock = locked()
    assert all(hashes for _, hashes in lock.values())
    for req in RUNTIME:
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is not in requirements.lock: run scripts/lock.sh"
        assert req.specifier.contains(lock[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={lock[name][0]}, pyproject wants {req}: "
            "run scripts/lock.sh")
    extras = installed_closure([Requirement(f"{r.name}[{e}]") for r in RUNTIME
                                for e in r.extras])
    plain = installed_closure([Requirement(r.name) for r in RUNTIME if r.extras])
    for name in set(extras) - set(plain):  # what an extra adds (hiredis, uvloop, ...)
        assert name in lock, f"{name} (an extra of a dependency) is not in requirements.lock"


def test_lock_resolved_for_the_images_python():
    """pip-compile resolves markers (uvloop's, typing-extensions') for the Python it runs on:
    the lock must be made with the image's (scripts/lock.sh with a venv of that version)."""
    image = re.fullmatch(r"python:(\d+\.\d+)-slim", instructions()[0][1])
    made = re.search(r"by pip-compile with Python (\d+\.\d+)",
                     (ROOT / "requirements.lock").read_text())
    assert image and made and made.group(1) == image.group(1)


def test_lock_leaves_out_bench_and_test_packages():
    """The image carries what the service runs, not what `vestnik bench`, the tests or the
    optional Apprise channel need (rich, pytest, apprise and their dependencies)."""
    lock = locked()
    runtime = installed_closure(RUNTIME)
    optional = installed_closure([Requirement(r) for reqs in
                                  PYPROJECT["project"]["optional-dependencies"].values()
                                  for r in reqs])
    extra_only = set(optional) - set(runtime)
    assert "rich" in extra_only and "pytest" in extra_only
    assert not extra_only & set(lock), f"not runtime dependencies: {extra_only & set(lock)}"
