"""The wheel as a user gets it: one import package, `vestnik`, with every file it needs.

The fixture builds the wheel from a copy of the files the Dockerfile copies, installs it
with its declared dependencies into a plain venv (no system site-packages: a dependency
the metadata forgets is missing there), next to a project that has its own `app`, `streams`
and `wrapper` packages, and runs it from that project. Offline: the dependencies are
re-packed as wheels from this environment's installed copies and pip gets `--no-index`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support import ROOT, installed_closure

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
# the repository folders the wheel maps under `vestnik` (pyproject's package-dir)
ROOTS = {folder: package for package, folder in SETUPTOOLS["package-dir"].items()}
# apprise is listed without its extra installed: its module imports, `create` turns it off
CHANNELS = {"email", "telegram", "slack", "webhook", "apprise"}


def package_folders() -> dict[str, Path]:
    """Every folder with an __init__.py under the mapped roots, by its package name."""
    out: dict[str, Path] = {}
    for folder, package in ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            out[".".join([package, *rel.parts])] = init.parent
    return out


def test_every_package_folder_is_listed_in_pyproject():
    """find() cannot see the package-dir mapping, so `packages` is a list by hand: a new
    sub-package missing from it would be left out of the wheel without a word."""
    listed = set(SETUPTOOLS["packages"])
    found = set(package_folders())
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "listed in pyproject, but no folder with an __init__.py"


def test_bench_without_its_extra_names_the_extra():
    """rich is the `bench` extra's: without it `vestnik bench` says what to install, in one
    line, instead of a traceback."""
    code = ("import sys; sys.modules['rich'] = None\n"
            "from vestnik.app.cli import main\n"
            "sys.exit(main(['bench', '--only', 'none']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=clean_env())
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "pip install 'vestnik[bench]'" in run.stderr


# ------------------------------------------------------------------ the installed wheel


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (it could reach this checkout) and no pip configuration (its index,
    find-links and constraints): pip sees only the wheels this test gives it."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("PIP_", "VESTNIK_"))}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"} | extra


def source_files() -> list[str]:
    """The files of the mapped roots, as git tracks them (a checkout without git: on disk)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *ROOTS], cwd=ROOT, check=True,
                             capture_output=True, timeout=30).stdout.decode()
        return [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(ROOT)) for folder in ROOTS for p in (ROOT / folder).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts]


def in_wheel(path: str) -> str:
    """Where a repository file lands in the wheel: app/x.py → vestnik/app/x.py."""
    folder, _, rest = path.partition("/")
    return "/".join([*ROOTS[folder].split("."), rest])


def build_wheel(out: Path) -> Path:
    """`pip wheel` from a copy of what the Dockerfile copies, with this venv's setuptools."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy2(ROOT / name, src / name)
    for folder in ROOTS:
        shutil.copytree(ROOT / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = out / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist), str(src)],
                   check=True, capture_output=True, timeout=120, env=clean_env())
    (wheel,) = dist.glob("vestnik-*.whl")
    return wheel


def repack(dist: metadata.Distribution, out: Path) -> None:
    """A wheel of an installed distribution, from the files its RECORD lists (scripts
    outside site-packages are left out: pip writes them again from entry_points.txt)."""
    files = [f for f in dist.files or [] if ".." not in f.parts and "__pycache__" not in f.parts]
    info = next(f.parent for f in files if f.name == "METADATA"
                and f.parent.name.endswith(".dist-info"))
    tags = [ln.split(":", 1)[1].strip() for ln in (dist.read_text("WHEEL") or "").splitlines()
            if ln.startswith("Tag:")]
    name_version = info.name.removesuffix(".dist-info")
    record = []
    with zipfile.ZipFile(out / f"{name_version}-{tags[0]}.whl", "w") as whl:
        for f in files:
            if f.parent == info and f.name in ("RECORD", "INSTALLER", "REQUESTED",
                                               "direct_url.json"):
                continue
            data = dist.locate_file(f).read_bytes()
            whl.writestr(f.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{f.as_posix()},sha256={digest.decode()},{len(data)}")
        record.append(f"{info.as_posix()}/RECORD,,")
        whl.writestr(f"{info.as_posix()}/RECORD", "\n".join(record) + "\n")


def repack_dependencies(wheel: Path, out: Path) -> None:
    """Every distribution the wheel's metadata needs, transitively, re-packed from here."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    todo = [Requirement(ln.split(":", 1)[1].strip()) for ln in lines
            if ln.startswith("Requires-Dist:")]
    for dist in installed_closure(todo).values():
        repack(dist, out)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """The wheel installed into a plain venv; a project with its own top-level packages."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp)
    deps = tmp / "deps"
    deps.mkdir()
    repack_dependencies(wheel, deps)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60, env=clean_env())
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-index", "--no-compile", "--find-links", str(deps), str(wheel)],
                   check=True, capture_output=True, timeout=120, env=clean_env())
    project = tmp / "project"
    for name in ("app", "streams", "wrapper"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"OWNER = 'project {name}'\n")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path("
                                "'purelib'))"], check=True, capture_output=True, text=True,
                               timeout=30, env=clean_env()).stdout.strip())
    return {"wheel": wheel, "venv": venv, "python": python, "project": project, "site": site}


def run_in(installed: dict[str, Path], *argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command of the venv from inside the project folder."""
    return subprocess.run([str(a) for a in argv], cwd=installed["project"], capture_output=True,
                          text=True, timeout=60, env=clean_env())


def python_in(installed: dict[str, Path], code: str) -> str:
    """Run Python code with the venv's interpreter in the project folder; its stdout."""
    run = run_in(installed, installed["python"], "-c", code)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_wheel_holds_one_import_package_with_every_file(installed):
    with zipfile.ZipFile(installed["wheel"]) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vestnik"}
    files = source_files()
    missing = sorted(f for f in files if in_wheel(f) not in names)
    assert missing == [], "repository files the wheel leaves out"
    # the kinds that are not Python and need package-data to get in, named so that an empty
    # glob cannot pass: templates, pages, alert examples (and every .lua file, if any)
    for kind in ("vestnik/streams/channels/templates/email.html.j2", "vestnik/app/static/",
                 "vestnik/wrapper/examples/low_balance/alert.toml"):
        assert any(n.startswith(kind) for n in names), kind
    assert {in_wheel(f) for f in files if f.endswith(".lua")} <= names
    # what `pip show vestnik` lists: no sse-starlette, no fakeredis; rich only for the bench
    requires = [ln.split(":", 1)[1].strip() for ln in meta.splitlines()
                if ln.startswith("Requires-Dist:")]
    names_required = {canonicalize_name(Requirement(r).name): Requirement(r) for r in requires}
    assert "sse-starlette" not in names_required and "fakeredis" not in names_required
    rich = names_required["rich"]
    assert rich.marker is not None and rich.marker.evaluate({"extra": "bench"})
    assert not rich.marker.evaluate({"extra": ""})


def test_installed_next_to_a_project_with_its_own_app(installed):
    """A user's `app` stays theirs: the venv holds no top-level app, streams or wrapper,
    and Vestnik's own modules import beside the project's."""
    assert not {"app", "streams", "wrapper"} & {p.name.removesuffix(".py")
                                                for p in installed["site"].iterdir()}
    code = ("import json, app, streams, wrapper, vestnik, vestnik.app.cli, "
            "vestnik.wrapper.supervisor\n"
            "from vestnik.streams.channels import available\n"
            "print(json.dumps({'owners': [app.OWNER, streams.OWNER, wrapper.OWNER], "
            "'app': app.__file__, 'vestnik': vestnik.__file__, "
            "'version': vestnik.__version__, "
            "'channels': {n: c.__module__ for n, c in available().items()}}))")
    seen = json.loads(python_in(installed, code))
    assert seen["owners"] == ["project app", "project streams", "project wrapper"]
    assert Path(seen["app"]).parent.parent == installed["project"]
    assert Path(seen["vestnik"]).is_relative_to(installed["site"])
    assert seen["version"] == PYPROJECT["project"]["version"]
    # the five channels come from the entry points the wheel declares
    assert seen["channels"] == {n: f"vestnik.streams.channels.{n}" for n in CHANNELS}


def test_installed_commands_run(installed):
    bin_ = installed["venv"] / "bin"
    help_ = run_in(installed, bin_ / "vestnik", "--help")
    assert help_.returncode == 0, help_.stderr
    assert all(c in help_.stdout for c in ("api", "center", "wrap", "bench"))
    wrap = run_in(installed, installed["python"], "-m", "vestnik.wrapper", "--help")
    assert wrap.returncode == 0 and "alert's TOML file" in wrap.stdout, wrap.stderr
    # installed without the bench extra: one line naming it, no traceback
    bench = run_in(installed, bin_ / "vestnik", "bench", "--only", "none")
    assert bench.returncode == 2
    assert bench.stderr.count("\n") == 1 and "'vestnik[bench]'" in bench.stderr


def test_installed_email_channel_renders_its_templates(installed):
    """The templates are in the wheel (above); here the email channel finds them there."""
    code = ("import msgspec\n"
            "from vestnik.streams.channels.email import EmailChannel, SmtpConfig\n"
            "from vestnik.streams.schemas import Notice\n"
            "n = msgspec.convert({'id': 'n1', 'alert': 'disk', 'title': 'Disk 95%'}, Notice)\n"
            "ch = EmailChannel(SmtpConfig('smtp://127.0.0.1:1'), 'v@example.test')\n"
            "print(ch.render(n, None, 'txt'), ch.render(n, None, 'html'))")
    out = python_in(installed, code)
    assert "Disk 95%" in out and "</html>" in out.lower()
