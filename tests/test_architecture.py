"""The layout's rules, read from the code's syntax trees (every import, wherever it sits:
module level, inside a function, under TYPE_CHECKING).

- `streams/` (the core) imports neither `app` nor `wrapper`; imports go app → streams and
  wrapper → streams.
- Outside a part (`streams/notifier`, `configurator`, `center`, `forward`, `channels`),
  code imports only the names the part's `__init__` exports, never its modules (tests may).
- Only `streams/forward/` knows arq's record format: nobody else imports `arq.constants`,
  writes one of arq's own key names (`arq:job:`, ...) or copies its magic numbers.
- Every import is of `vestnik.…`: the wheel has no top-level `app`, `streams` or
  `wrapper`, so such an import works only in a checkout.
- `wrapper/` runs on a box with only Redis: of Vestnik it imports itself and the shared
  modules at the top of `streams/`, no part and no `app`.
- No import cycles among modules (a package re-exporting its own modules aside).
- Lua lives in `.lua` files, loaded by `streams/lua.py` only: no script text in a Python
  string, no `register_script` or `AsyncScript` elsewhere.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from support import ROOT

SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# repository folder → the package it is in the wheel (app → vestnik.app)
MAPPED = {folder: package for package, folder in SETUPTOOLS["package-dir"].items()}
CODE = [*MAPPED, "scripts"]  # what ships or runs; tests/ only where a rule says so
STREAMS = ROOT / "streams"
PARTS = sorted(p.name for p in STREAMS.iterdir() if (p / "__init__.py").exists())
SHARED = sorted(p.stem for p in STREAMS.glob("*.py") if p.stem != "__init__")
BARE = {"app", "streams", "wrapper"}
FORWARD = STREAMS / "forward"


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # absolute, relative imports resolved
    names: tuple[str, ...]  # `from module import names`; () for `import module`

    def __str__(self) -> str:
        what = f"from {self.module} import {', '.join(self.names)}" if self.names else (
            f"import {self.module}")
        return f"{self.path.relative_to(ROOT)}:{self.line}: {what}"


def module_name(path: Path) -> str:
    """app/bench/core.py → vestnik.app.bench.core; scripts/x.py → scripts.x."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    package = MAPPED.get(parts[0])
    return ".".join([package, *parts[1:]] if package else parts)


def python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py")
                  if "__pycache__" not in p.parts)


def trees(*folders: str) -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in python_files(*folders)]


def imports_of(path: Path, tree: ast.Module) -> list[Import]:
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(path, node.lineno, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append(Import(path, node.lineno, module, tuple(a.name for a in node.names)))
    return out


def all_imports(*folders: str) -> list[Import]:
    return [i for p, tree in trees(*folders) for i in imports_of(p, tree)]


def modules_named(imp: Import) -> list[str]:
    """The modules an import names: `from a.b import c` names a.b and, if c is a module
    of a.b, a.b.c too."""
    out = [imp.module]
    folder = ROOT / "/".join(folder_parts(imp.module))
    for name in imp.names:
        if (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists():
            out.append(f"{imp.module}.{name}")
    return out


def folder_parts(module: str) -> list[str]:
    """vestnik.streams.center → [streams, center] (the repository folder)."""
    parts = module.split(".")
    for folder, package in sorted(MAPPED.items(), key=lambda fp: -len(fp[1])):  # longest
        head = package.split(".")
        if parts[: len(head)] == head:
            return [folder, *parts[len(head):]]
    return parts


def owner_part(path: Path) -> str | None:
    """The part a file belongs to (streams/center/x.py → center), if any."""
    rel = path.relative_to(ROOT).parts
    return rel[1] if len(rel) > 2 and rel[0] == "streams" and rel[1] in PARTS else None


def test_the_rules_see_the_layout():
    """The rules below are only as good as what they walk: the parts and shared modules
    the issue names, and imports in every shipped folder."""
    assert set(PARTS) == {"notifier", "configurator", "center", "forward", "channels"}
    assert {"keys", "schemas", "errors", "ids", "config", "redis", "consumer"} <= set(SHARED)
    assert {i.module for i in all_imports("app")} >= {"vestnik.streams.config"}


def test_streams_imports_neither_app_nor_wrapper():
    bad = [str(i) for i in all_imports("streams") for m in modules_named(i)
           if m.split(".")[0] in ("app", "wrapper") or m.startswith(("vestnik.app",
                                                                      "vestnik.wrapper"))]
    assert bad == []


def reaches_into_parts() -> dict[tuple[str, str], str]:
    """(file, module of another part) → the import, for every such import in CODE."""
    out = {}
    for imp in all_imports(*CODE):
        mine = owner_part(imp.path)
        for m in modules_named(imp):
            parts = m.split(".")
            if (parts[:2] == ["vestnik", "streams"] and len(parts) > 3 and parts[2] in PARTS
                    and parts[2] != mine):
                out[(str(imp.path.relative_to(ROOT)), ".".join(parts[:4]))] = str(imp)
    return out


def test_a_part_is_used_through_its_public_names():
    """`from vestnik.streams.center import Center` is fine anywhere; its modules
    (`vestnik.streams.center.inbox`) are the center's own business."""
    found = reaches_into_parts()
    assert [found[k] for k in sorted(found)] == []


# arq's own key names (it never prefixes them): one at the start of a string, or after a
# quote or a space (Lua in a Python string, a command line); `vn:arq:queue` is Vestnik's
ARQ_KEY = re.compile(r"(?:^|[\s'\"(,=])arq:(?:job|in-progress|result|retry|abort|queue|"
                     r"health-check)")
ARQ_NUMBERS = {88400, 86_400_000}  # arq's retry-key TTL (s) and expires_extra_ms


def string_parts(tree: ast.Module) -> list[tuple[int, str]]:
    """Every string literal, an f-string's literal parts joined around `{…}`."""
    out, inside = [], set()
    for node in ast.walk(tree):  # breadth first: an f-string before its own parts
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            out.append((node.lineno, text))
            inside |= {id(v) for v in node.values}
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in inside):
            out.append((node.lineno, node.value))
    return out


def arq_knowledge_outside_forward() -> list[str]:
    bad = []
    for path, tree in trees(*CODE):
        if path.is_relative_to(FORWARD):
            continue
        rel = path.relative_to(ROOT)
        bad += [f"{imp}" for imp in imports_of(path, tree) if any(
            m == "arq.constants" for m in modules_named(imp))]
        bad += [f"{rel}:{line}: an arq key in {text[:60]!r}" for line, text in string_parts(tree)
                if ARQ_KEY.search(text)]
        bad += [f"{rel}:{node.lineno}: arq's number {node.value}" for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and type(node.value) is int
                and node.value in ARQ_NUMBERS]
    for lua in sorted(p for f in CODE for p in (ROOT / f).rglob("*.lua")):
        if not lua.is_relative_to(FORWARD):
            text = lua.read_text()
            bad += [f"{lua.relative_to(ROOT)}: an arq key" for _ in [1] if ARQ_KEY.search(text)]
            bad += [f"{lua.relative_to(ROOT)}: arq's number {n}" for n in ARQ_NUMBERS
                    if re.search(rf"\b{n}\b", text)]
    return bad


def test_the_arq_rule_catches_what_it_is_for():
    """The detector itself, on the shapes arq's format took before issue 20."""
    tree = ast.parse("from arq.constants import job_key_prefix\n"
                     "LUA = \"redis.call('PSETEX', 'arq:job:' .. jid, 1, x)\"\n"
                     "k = f'arq:in-progress:{jid}'\nq = f'{prefix}arq:queue'\nttl = 88400\n")
    assert [line for line, text in string_parts(tree) if ARQ_KEY.search(text)] == [2, 3]
    assert [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and type(n.value) is int and n.value in ARQ_NUMBERS] == [88400]


def test_only_forward_knows_arqs_format():
    assert arq_knowledge_outside_forward() == []


def test_every_import_is_of_the_vestnik_package():
    """`import streams.keys` works in a checkout only (the wheel has no top-level
    `streams`); tests import the installed names too."""
    bad = [str(i) for i in all_imports(*CODE, "tests") if i.module.split(".")[0] in BARE]
    assert bad == []


def test_wrapper_needs_only_the_shared_streams_modules():
    allowed = {f"vestnik.streams.{m}" for m in SHARED} | {"vestnik.streams"}
    bad = []
    for imp in all_imports("wrapper"):
        for m in modules_named(imp):
            if m.split(".")[0] in BARE or (m.startswith("vestnik.") and not (
                    m.startswith("vestnik.wrapper") or m in allowed)):
                bad.append(str(imp))
                break
    assert bad == []


def import_cycles(*folders: str) -> list[list[str]]:
    """Cycles among modules (Tarjan's strongly connected components), every import counted,
    function-level ones too. A package's `__init__` re-exporting its own modules is not an
    edge: importing `a.b` runs `a` first by design, and `a` naming `a.b` back is no cycle
    a reader has to untangle."""
    imports = all_imports(*folders)
    mods = {module_name(p) for p in python_files(*folders)}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for imp in imports:
        me = module_name(imp.path)
        own_package = imp.path.name == "__init__.py"
        for m in modules_named(imp):
            if m not in mods or m == me or me.startswith(m + "."):
                continue  # not ours, itself, or an ancestor package (run first anyway)
            if own_package and m.startswith(me + "."):
                continue  # a package re-exporting its own modules
            graph[me].add(m)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    """Modules import one way (the cli, `up` and the demo once imported each other): a
    cycle means two modules each need the other's internals, and breaks when one moves."""
    assert import_cycles("app", "streams", "wrapper") == []


LUA_IN_TEXT = re.compile(r"redis\.call\(|redis\.pcall\(")


def test_lua_lives_in_lua_files():
    """A script in a Python string cannot be read, linted or shared; one registered
    elsewhere is hashed again per client (streams/lua.py hashes each once)."""
    loader = STREAMS / "lua.py"
    bad = []
    for path, tree in trees(*CODE):
        rel = path.relative_to(ROOT)
        bad += [f"{rel}:{line}: Lua in a string" for line, text in string_parts(tree)
                if LUA_IN_TEXT.search(text)]
        if path != loader:
            bad += [f"{rel}:{node.lineno}: {name}" for node in ast.walk(tree)
                    for name in [getattr(node, "attr", None) or getattr(node, "id", None)]
                    if name in ("register_script", "AsyncScript")]
    assert bad == []
