"""Lua scripts from the package's `.lua` files: read once, includes composed, hashed once.

A script lives next to the module that runs it (`center/store.lua` beside
`center/store.py`) and is named by its path under `vestnik.streams` (or under the
`package` given: the bench's reference scripts are under `vestnik.app.bench`). A line
`--#include <path>` is replaced by that file (a shared function such as the body
release, or forward's job writing inside the center's store call); a placeholder
`{{NAME}}` by a constant the caller passes, so a number Python also uses is written once.
Each file begins with a comment naming its KEYS and ARGV and what it returns.

`script()` returns one `AsyncScript` per (path, constants) for the whole process, bound to
no client: call it with `client=` (a Redis, a pipeline or a cluster). redis-py's
`register_script` would hash the text again for every object that registers it.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from redis.commands.core import AsyncScript, Script

_PACKAGE = "vestnik.streams"
_INCLUDE = re.compile(rb"^--#include (\S+)[ \t]*$", re.MULTILINE)
_PLACEHOLDER = re.compile(rb"\{\{(\w+)\}\}")
MAX_DEPTH = 4  # includes of includes: bounded, and a cycle is an error, not a hang


@cache
def _read(package: str, path: str) -> bytes:
    return files(package).joinpath(path).read_bytes()


def source(path: str, *, package: str = _PACKAGE, **consts: int | str) -> bytes:
    """The text of script `path` (relative to `package`) with its includes and the
    `consts` filled in. A placeholder left without a value is an error here, at load."""

    def fill(m: re.Match[bytes]) -> bytes:
        name = m.group(1).decode()
        if name not in consts:
            raise KeyError(f"{path}: no value for {{{{{name}}}}}")
        return str(consts[name]).encode()

    return _PLACEHOLDER.sub(fill, _compose(package, path, 0))


def _compose(package: str, path: str, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise RecursionError(f"{path}: includes nested deeper than {MAX_DEPTH}")
    return _INCLUDE.sub(lambda m: _compose(package, m.group(1).decode(), depth + 1),
                        _read(package, path))


# sha -> text of every script made here: a Redis Cluster pipeline loads them on each master
# itself (redis-py's loads none and refuses EVALSHA: streams.redis_cluster)
TEXTS: dict[str, bytes] = {}


@cache
def _script(package: str, path: str, consts: tuple[tuple[str, int | str], ...]
            ) -> AsyncScript:
    made = AsyncScript(None, source(path, package=package, **dict(consts)))  # type: ignore[arg-type]
    TEXTS[made.sha] = made.script
    return made


def script(path: str, *, package: str = _PACKAGE, **consts: int | str) -> AsyncScript:
    """The process's one script object for `path` (see the module docstring)."""
    return _script(package, path, tuple(sorted(consts.items())))


@cache
def sync_script(path: str) -> Script:
    """`script` for redis-py's blocking client (the sync `vestnik.client`): the same file,
    one object per process, bound to no client."""
    return Script(None, source(path))  # type: ignore[arg-type]
