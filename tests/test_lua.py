"""The Lua scripts as the package ships them: every file compiles in Redis once composed,
includes are spliced in, a constant left without a value fails at load, not at run."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from vestnik.streams import lua
from vestnik.streams.forward.schedule import ARQ_LUA
from vestnik.streams.keys import SETTINGS_TOPIC
from vestnik.streams.notifier.topics import TRIM_SLACK, TRIM_STEP

STREAMS = Path(lua.__file__).parent
SCRIPTS = sorted(str(p.relative_to(STREAMS)) for p in STREAMS.rglob("*.lua"))
BENCH = STREAMS.parent / "app" / "bench"  # the bench's reference scripts (B7's floor)
BENCH_SCRIPTS = sorted(p.name for p in BENCH.glob("*.lua"))
# the constants each script's module passes (placeholders `{{NAME}}`)
CONSTS: dict[str, dict[str, int | str]] = {
    "configurator/write.lua": {"TOPIC": SETTINGS_TOPIC},
    "notifier/apply.lua": {"TRIM_SLACK": TRIM_SLACK, "TRIM_STEP": TRIM_STEP},
    **{p: ARQ_LUA for p in SCRIPTS if p.startswith("forward/")},
}


def test_every_script_is_found():
    assert {"center/store_batch.lua", "center/mark.lua", "forward/claim.lua",
            "forward/store_jobs.lua", "notifier/apply.lua"} <= set(SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS)
async def test_each_script_compiles_with_its_includes(redis: Redis, path: str):
    text = lua.source(path, **CONSTS.get(path, {}))
    assert b"--#include" not in text and b"{{" not in text
    first = text.split(b"\n", 1)[0]
    assert first.startswith(b"-- "), f"{path}: no header comment"
    sha = await redis.script_load(text)
    assert sha == lua.script(path, **CONSTS.get(path, {})).sha


@pytest.mark.parametrize("path", BENCH_SCRIPTS)
async def test_each_bench_script_compiles(redis: Redis, path: str):
    text = lua.source(path, package="vestnik.app.bench")
    assert text.startswith(b"-- "), f"app/bench/{path}: no header comment"
    assert await redis.script_load(text) == lua.script(path, package="vestnik.app.bench").sha


def test_the_store_call_holds_forwards_job_writing():
    """The center's batch script includes forward's fragment (and the body release)."""
    text = lua.source("center/store_batch.lua")
    assert b"local function store_jobs(" in text and b"local function adjust(" in text
    assert text.count(b"local function adjust(") == 1


def test_a_placeholder_without_its_value_fails_at_load():
    with pytest.raises(KeyError, match="JOB"):
        lua.source("forward/claim.lua")


def test_one_script_object_per_process():
    assert lua.script("center/mark.lua") is lua.script("center/mark.lua")
