"""`vestnik wrap` with real alert processes and a real Redis: live settings, bad stdout,
backpressure, heartbeat, crash loops, signals, bad config."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from wrapping import (
    alert_toml,
    dead_letters,
    delete_setting,
    metric,
    notices,
    proc_status,
    put_setting,
    read_lines,
    setting,
    wait_exit,
)

from support import ROOT, eventually, gone
from vestnik.wrapper.lines import LineSplitter, Oversized
from vestnik.wrapper.protocol import Entity, Ready, SettingsMessage
from vestnik.wrapper.stdin_queue import StdinQueue

PY = sys.executable

RECORDER = r"""
import os, sys
out = open(sys.argv[1], "a")
out.write(f"pid {os.getpid()}\n")
out.flush()
for line in sys.stdin:
    out.write(line)
    out.flush()
"""


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def messages(record: Path, kind: str) -> list[dict]:
    out = []
    for line in read_lines(record):
        if line.startswith("{"):
            msg = json.loads(line)
            if msg["type"] == kind:
                out.append(msg)
    return out


# ------------------------------------------------------------------------- units


def test_line_splitter_discards_oversized_lines_across_chunks():
    s = LineSplitter(10)
    out = s.feed(b"ok\n0123456789")
    out += s.feed(b"abc" * 1000)  # the rest of an oversized line is never kept
    assert len(s._buf) == 0
    out += s.feed(b"def\nfine\npart")
    out += s.end()
    assert [n for n, _ in out] == [1, 2, 3, 4]
    assert out[0][1] == b"ok" and out[2][1] == b"fine" and out[3][1] == b"part"
    big = out[1][1]
    assert isinstance(big, Oversized) and big.size == 10 + 3000 + 3
    assert big.sample.startswith(b"0123456789abc")


async def test_mailbox_coalesces_entities_and_settings_keeps_order():
    mb = StdinQueue(3)
    await mb.put(SettingsMessage(items=[]), ("s",))
    for i in range(100):
        await mb.put(Entity(topic="vm", op="update", id="1", data={"n": i}), ("e", "vm", "1"))
    await mb.put(Entity(topic="vm", op="update", id="2", data={"n": 0}), ("e", "vm", "2"))
    assert len(mb) == 3 and mb.coalesced == 99
    blocked = asyncio.ensure_future(mb.put(Ready()))
    await asyncio.sleep(0)
    assert not blocked.done()  # full: the producer waits instead of growing
    got = await mb.get_batch(10)
    assert [type(m).__name__ for m in got] == ["SettingsMessage", "Entity", "Entity"]
    assert got[1].data == {"n": 99}
    await blocked
    assert isinstance((await mb.get_batch(10))[0], Ready)


# ------------------------------------------------------------------------ config


@pytest.mark.parametrize("text, key", [
    ('name = "a"\ncomand = ["x"]\n', "comand"),
    ('name = "a"\n', "command"),
    ('name = "a"\ncommand = []\n', "command"),
    ('name = "a"\ncommand = ["x"]\n[restart]\npolicy = "sometimes"\n', "restart.policy"),
    ('name = "a"\ncommand = ["x"]\ntopics = ["bad topic"]\n', "topics"),
    ('name = "a"\ncommand = ["x"]\nmax_line = "big"\n', "max_line"),
    ('name = "a"\ncommand = ["x"\n', "TOML"),
])
def test_bad_config_exits_2_naming_the_key(start_proc, tmp_path, text, key):
    path = tmp_path / "alert.toml"
    path.write_text(text)
    proc = start_proc("wrap", str(path))
    code, _ = wait_exit(proc, 20)
    assert code == 2
    assert key in proc.output() and "alert.toml" in proc.output()


# ------------------------------------------------------------------- live settings


async def test_live_settings_reach_the_alert_without_restart(redis, keys, wrap, tmp_path):
    name = "live"
    await put_setting(redis, keys, setting("s1", name, {"limit": 1}))
    await put_setting(redis, keys, setting("o1", "other", {"limit": 1}))
    record = tmp_path / "record"
    cfg = alert_toml(tmp_path / "alert.toml", name, [PY, script(tmp_path, "rec.py", RECORDER),
                     str(record)], grace=5)
    w = wrap(cfg)

    async def settings_lines(n: int):
        assert w.proc.proc.poll() is None, w.proc.output()
        got = messages(record, "settings")
        return got if len(got) >= n else None

    first = await eventually(lambda: settings_lines(1), timeout=20, what="snapshot")
    assert [s["id"] for s in first[0]["items"]] == ["s1"]
    await eventually(lambda: _has(record, "ready"), what="ready")
    pid = read_lines(record)[0]

    # updated: a new settings line with the new metric
    await put_setting(redis, keys, setting("s1", name, {"limit": 2}, version=2))
    got = await eventually(lambda: settings_lines(2), what="update")
    assert got[1]["items"][0]["metric"] == {"limit": 2}
    # a disabled setting of this alert and a setting of another alert: nothing ...
    await put_setting(redis, keys, setting("s2", name, {"limit": 9}, enabled=False), "create")
    await put_setting(redis, keys, setting("o2", "other", {"limit": 9}), "create")
    await put_setting(redis, keys, setting("o1", "other", {"limit": 5}))
    # ... so the next settings line is the one of enabling s2 (no line in between)
    await put_setting(redis, keys, setting("s2", name, {"limit": 9}))
    got = await eventually(lambda: settings_lines(3), what="enable")
    assert [s["id"] for s in got[2]["items"]] == ["s1", "s2"]
    # disabled and deleted: gone from the list
    await put_setting(redis, keys, setting("s1", name, {"limit": 2}, enabled=False))
    got = await eventually(lambda: settings_lines(4), what="disable")
    assert [s["id"] for s in got[3]["items"]] == ["s2"]
    await delete_setting(redis, keys, "s2")
    got = await eventually(lambda: settings_lines(5), what="delete")
    assert got[4]["items"] == []
    assert len(messages(record, "settings")) == 5
    assert read_lines(record)[0] == pid and read_lines(record).count(pid) == 1  # no restart
    assert metric(w.metrics_port, "vestnik_wrapper_restarts_total") == 0
    # a polite alert (ends at EOF on stdin) is stopped in time: exit code 0
    code, took = wait_exit_after_term(w.proc, 10)
    assert code == 0 and took < 5


async def _has(record: Path, kind: str) -> bool:
    return bool(messages(record, kind))


def wait_exit_after_term(proc, timeout: float) -> tuple[int, float]:
    proc.proc.send_signal(signal.SIGTERM)
    return wait_exit(proc, timeout)


# ------------------------------------------------------------------ bad stdout lines

GARBAGE = r"""
import sys, json
out = sys.stdout.buffer
def line(b): out.write(b + b"\n"); out.flush()
line(json.dumps({"type": "notice", "title": "before"}).encode())     # 1
line(b"\xff\xfe\x00\x01binary\x80")                                   # 2
line(b'{"type": "notice", "title": "half')                            # 3
line(json.dumps({"type": "explode"}).encode())                        # 4
line(json.dumps({"type": "notice", "body": "no title"}).encode())     # 5
line(b'{"type":"notice","title":"' + b"x" * (5 * 1024 * 1024) + b'"}')  # 6: 5 MiB
line(json.dumps({"type": "notice", "title": "after"}).encode())      # 7
line(json.dumps({"type": "error", "message": "source unreachable"}).encode())  # 8
line(json.dumps({"type": "resolve", "dedup_key": "disk-1"}).encode())  # 9
sys.stdin.read()
"""


async def test_garbage_on_stdout_is_dead_lettered_and_valid_lines_still_flow(
        redis, keys, wrap, tmp_path):
    name = "garbage"
    await put_setting(redis, keys, setting("s1", name, {"limit": 1},
                                           {"ui": {"users": ["1"]}, "email": {"users": ["1"]}}))
    cfg = alert_toml(tmp_path / "alert.toml", name, [PY, script(tmp_path, "g.py", GARBAGE)])
    w = wrap(cfg)

    async def dead():
        assert w.proc.proc.poll() is None, w.proc.output()
        found = await dead_letters(redis, keys)
        return found if len(found) >= 5 else None

    found = await eventually(dead, timeout=20, what="dead letters")
    assert [int(d["line"]) for d in found] == [2, 3, 4, 5, 6]
    reasons = [d["reason"].split(":")[0] for d in found]
    assert reasons == ["not_json", "not_json", "invalid", "invalid", "too_long"]
    assert "title" in found[3]["reason"] and "type" in found[2]["reason"]
    assert [d["field"] for d in found] == ["$", "$", "$.type", "$.title", "$"]
    assert all(d["source"] == "wrapper:garbage" and d["at"].isdigit() for d in found)
    assert found[4]["size"] == str(5 * 1024 * 1024 + len('{"type":"notice","title":""}'))
    assert len(found[4]["raw"]) <= 1024  # a sample, not the 5 MiB

    async def both():
        got = await notices(redis, keys)
        return got if len(got) >= 3 else None

    got = await eventually(both, what="valid notices")
    resolve = got.pop()  # the resolve line: an entry for the center, after the notices
    assert resolve.pop("at").isdigit()
    assert resolve == {"op": "resolve", "alert": name, "dedup_key": "disk-1"}
    assert [n["title"] for n in got] == ["before", "after"]
    assert json.loads(got[0]["metric"]) == {"limit": 1}
    assert json.loads(got[0]["channels"]) == {"ui": {"users": ["1"]}, "email": {"users": ["1"]}}
    assert got[0]["setting_id"] == "s1" and got[0]["alert"] == name

    async def counted():
        return metric(w.metrics_port, "vestnik_wrapper_bad_lines_total", alert=name) == 5
    await eventually(counted, what="bad line counter")
    port = w.metrics_port
    assert metric(port, "vestnik_wrapper_bad_lines_total", reason="too_long") == 1
    assert metric(port, "vestnik_wrapper_notices_total", alert=name) == 2
    assert metric(port, "vestnik_wrapper_alert_errors_total", alert=name) == 1

    assert "line 6 rejected (too_long)" in w.proc.output()
    assert "source unreachable" in w.proc.output()


# ---------------------------------------------------------------------- backpressure

DEAF = r"""
import json, sys, time
i = 0
while True:  # never reads stdin
    i += 1
    print(json.dumps({"type": "notice", "title": f"tick {i}"}), flush=True)
    time.sleep(0.02)
"""


async def test_alert_that_never_reads_stdin_keeps_the_wrapper_bounded(
        redis, keys, wrap, tmp_path):
    name = "deaf"
    await put_setting(redis, keys, setting("s1", name))
    cfg = alert_toml(tmp_path / "alert.toml", name, [PY, script(tmp_path, "d.py", DEAF)],
                     topics=["vm"], queue_size=1000, grace=1)
    w = wrap(cfg)

    async def ticking(n: int):
        assert w.proc.proc.poll() is None, w.proc.output()
        return await redis.xlen(keys.notices) >= n

    await eventually(lambda: ticking(10), timeout=20, what="first notices")
    baseline = proc_status(w.pid, "VmRSS")
    payload = "x" * 300
    for start in range(0, 100_000, 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, start + 2000):
                pipe.xadd(keys.topic("vm"), {"op": "update", "id": str(i), "data": json.dumps(
                    {"id": i, "name": f"vm-{i}", "status": "running", "note": payload})})
            await pipe.execute()
    # unbounded, 100,000 such entities would cost the wrapper well over 100 MB; given
    # time to read them all, it must have stopped at its queue and its pipe
    before = await redis.xlen(keys.notices)
    await eventually(lambda: ticking(before + 100), timeout=20, what="notices keep flowing")
    pending = metric(w.metrics_port, "vestnik_wrapper_stdin_pending", alert=name)
    assert pending <= 1000
    peak = proc_status(w.pid, "VmHWM")
    assert peak - baseline < 30 * 1024 * 1024, (baseline, peak)
    assert w.proc.stop() == 4  # it ignores EOF too: killed after the grace period


# ------------------------------------------------------------------ heartbeat, crash

HUNG = r"""
import json, sys, time
open(sys.argv[1], "a").write(f"{time.monotonic()}\n")
print(json.dumps({"type": "hello", "heartbeat": 0.5}), flush=True)
print(json.dumps({"type": "heartbeat"}), flush=True)
time.sleep(3600)  # hung: no more output
"""


async def test_hung_alert_is_restarted_after_its_heartbeat(redis, keys, wrap, tmp_path):
    name = "hung"
    starts = tmp_path / "starts"
    cfg = alert_toml(tmp_path / "alert.toml", name,
                     [PY, script(tmp_path, "h.py", HUNG), str(starts)], grace=0.5,
                     restart={"policy": "on-failure", "backoff_min": 0.1})
    w = wrap(cfg)

    async def started(n: int):
        assert w.proc.proc.poll() is None, w.proc.output()
        return len(read_lines(starts)) >= n

    await eventually(lambda: started(2), timeout=20, what="restart of the hung alert")
    t = [float(x) for x in read_lines(starts)]
    assert t[1] - t[0] >= 0.5  # not before the announced interval
    assert "restarting a hung alert" in w.proc.output()
    assert metric(w.metrics_port, "vestnik_wrapper_restarts_total", reason="hung") >= 1
    assert w.proc.stop(signal.SIGINT) == 4  # it ignores EOF on stdin: killed after grace


CRASH = """#!/bin/sh
date +%s.%N >> "$1"
echo "E! cannot connect to the billing database" >&2
exit 1
"""


async def test_crash_loop_backs_off_and_tells_the_admins_once(redis, keys, wrap, tmp_path):
    name = "crashy"
    starts = tmp_path / "starts"
    cfg = alert_toml(tmp_path / "alert.toml", name,
                     ["sh", script(tmp_path, "c.sh", CRASH), str(starts)], admins=["7", "8"],
                     restart={"policy": "always", "backoff_min": 0.1, "backoff_max": 0.8,
                              "crash_loop": 3})
    w = wrap(cfg)

    async def started(n: int):
        assert w.proc.proc.poll() is None, w.proc.output()
        return len(read_lines(starts)) >= n

    await eventually(lambda: started(7), timeout=30, what="seven starts")
    t = [float(x) for x in read_lines(starts)]
    gaps = [b - a for a, b in itertools.pairwise(t)]
    # waits of 0.1, 0.2, 0.4, 0.8, 0.8 s: each gap is its wait plus a start of `sh`, which only
    # adds (tens of ms, more on a loaded box), so the waits are checked from below, and the
    # growth and the cap with slack larger than a start: from 0.1 s, and 0.8 s, not 1.6 s
    for gap, wait in zip(gaps, (0.1, 0.2, 0.4, 0.8, 0.8), strict=False):
        assert gap >= wait - 0.01, gaps
    assert gaps[0] < 0.4 and gaps[4] < 1.4, gaps
    loop = [n for n in await notices(redis, keys) if n["dedup_key"].endswith(":crash-loop")]
    assert len(loop) == 1
    assert json.loads(loop[0]["recipients"]) == ["7", "8"]
    assert loop[0]["severity"] == "critical" and loop[0]["alert"] == name
    assert "cannot connect to the billing database" in loop[0]["body"]
    assert "ERROR vestnik.alert.crashy: cannot connect to the billing database" in (
        w.proc.output())
    assert metric(w.metrics_port, "vestnik_wrapper_restarts_total", alert=name) >= 6
    code, took = wait_exit_after_term(w.proc, 10)
    assert code == 0 and took < 3


STUBBORN = """#!/bin/sh
trap '' TERM INT HUP
sleep 300 &
echo $! > "$1.child"
echo $$ > "$1.pid"
while :; do sleep 0.1; done
"""


async def test_sigterm_ends_everything_within_grace_no_orphans(redis, keys, wrap, tmp_path):
    base = tmp_path / "alert"
    cfg = alert_toml(tmp_path / "alert.toml", "stubborn",
                     ["sh", script(tmp_path, "s.sh", STUBBORN), str(base)], grace=1.0)
    w = wrap(cfg)

    async def pids():
        assert w.proc.proc.poll() is None, w.proc.output()
        child, pid = Path(f"{base}.child"), Path(f"{base}.pid")
        if child.exists() and pid.exists() and child.read_text() and pid.read_text():
            return int(pid.read_text()), int(child.read_text())
        return None

    alert_pid, child_pid = await eventually(pids, timeout=20, what="alert and its child")
    t0 = time.monotonic()
    w.proc.proc.send_signal(signal.SIGTERM)
    code = w.proc.proc.wait(10)
    assert time.monotonic() - t0 < 1.0 + 1.5  # grace, then the kill
    assert code == 4  # killed after the grace period
    await eventually(lambda: _gone(alert_pid, child_pid), timeout=5, what="no orphans")
    assert "killing it" in w.proc.output()


async def _gone(*pids: int) -> bool:
    return all(gone(p) for p in pids)


FLAKY = """#!/bin/sh
echo start >> "$1"
n=$(wc -l < "$1")
if [ "$n" -le 3 ]; then echo "E! attempt $n failed" >&2; exit 1; fi
exec cat >> "$1.stdin"
"""


async def test_recovery_is_logged_and_the_restarted_alert_gets_a_new_snapshot(
        redis, keys, wrap, tmp_path):
    name = "flaky"
    await put_setting(redis, keys, setting("s1", name))
    starts = tmp_path / "starts"
    cfg = alert_toml(tmp_path / "alert.toml", name,
                     ["sh", script(tmp_path, "f.sh", FLAKY), str(starts)], admins=["1"],
                     restart={"policy": "on-failure", "backoff_min": 0.05, "backoff_max": 0.2,
                              "crash_loop": 3, "stable_after": 0.5})
    w = wrap(cfg)

    async def recovered():
        assert w.proc.proc.poll() is None, w.proc.output()
        return "alert recovered" in w.proc.output()

    await eventually(recovered, timeout=20, what="recovery")
    assert len(read_lines(starts)) == 4
    loop = [n for n in await notices(redis, keys) if n["dedup_key"].endswith(":crash-loop")]
    assert len(loop) == 1 and "attempt 3 failed" in loop[0]["body"]
    got = [json.loads(x)["type"] for x in read_lines(Path(f"{starts}.stdin"))]
    assert got == ["hello", "settings", "ready"]  # the run that stayed up got it all
    code, _ = wait_exit_after_term(w.proc, 10)
    assert code == 0


@pytest.mark.parametrize("command, code", [(["sh", "-c", "exit 3"], 1), (["true"], 0)])
def test_policy_never_exit_code_says_how_the_alert_ended(start_proc, tmp_path, command, code):
    cfg = alert_toml(tmp_path / "alert.toml", "once", command, restart={"policy": "never"})
    proc = start_proc("wrap", str(cfg))
    assert wait_exit(proc, 20)[0] == code
    assert "not restarting (policy never)" in proc.output()


def test_wrapper_imports_only_the_shared_streams_helpers(tmp_path):
    """wrapper/ runs on a box with only Redis: no app/, no web framework."""
    code = ("import sys, vestnik.wrapper.supervisor, vestnik.wrapper.__main__, "
            "vestnik.wrapper.kit; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('starlette', 'uvicorn', 'sse_starlette') or m.split('.')[:2] in "
            "(['vestnik', 'app'], ['vestnik', 'streams'])))")
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out.replace("'", '"')) == sorted(
        ["vestnik.streams", "vestnik.streams.coalesce", "vestnik.streams.config",
         "vestnik.streams.errors", "vestnik.streams.ids", "vestnik.streams.keys",
         "vestnik.streams.logs", "vestnik.streams.metrics", "vestnik.streams.ops_http",
         "vestnik.streams.redis", "vestnik.streams.redis_url", "vestnik.streams.schemas"])
    # and `python -m vestnik.wrapper` is the same command without the main CLI
    bad = tmp_path / "alert.toml"
    bad.write_text('name = "x"\ncommand = ["x"]\nrestart = 1\n')
    run = subprocess.run([PY, "-m", "vestnik.wrapper", str(bad)], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 2 and "restart" in run.stderr


# ------------------------------------------------------- snapshot from materialized state


async def apply_to_state(redis, keys, topic: str) -> str:
    """What the api's materializer does: apply the topic stream to vn:state:<topic>."""
    from vestnik.streams.notifier import StateWriter
    from vestnik.streams.schemas import decode_topic_entry

    entries = await redis.xrange(keys.topic(topic))
    events = [(sid.decode(), decode_topic_entry(f)) for sid, f in entries]
    await StateWriter(redis, keys).apply(topic, events)
    return events[-1][0]


async def test_snapshot_from_state_then_tail_from_its_position(redis, keys, wrap, tmp_path):
    vm = keys.topic("vm")
    await redis.xadd(vm, {"op": "create", "id": "1", "data": '{"v":1}'})
    await redis.xadd(vm, {"op": "create", "id": "2", "data": '{"v":1}'})
    await redis.xadd(vm, {"op": "delete", "id": "2"})
    await apply_to_state(redis, keys, "vm")
    await redis.xtrim(vm, maxlen=0)  # the stream alone no longer knows entity 1
    await redis.xadd(vm, {"op": "update", "id": "1", "data": '{"v":2}'})  # after the position
    record = tmp_path / "record"
    cfg = alert_toml(tmp_path / "alert.toml", "state",
                     [PY, script(tmp_path, "rec.py", RECORDER), str(record)], topics=["vm"])
    w = wrap(cfg)

    async def lines():
        assert w.proc.proc.poll() is None, w.proc.output()
        got = [json.loads(x) for x in read_lines(record)[1:]]
        return got if len(got) >= 5 else None

    got = await eventually(lines, timeout=20, what="snapshot and tail")
    assert [m["type"] for m in got] == ["hello", "settings", "entity", "ready", "entity"]
    assert (got[2]["id"], got[2]["data"]) == ("1", {"v": 1})  # from the state
    assert (got[4]["id"], got[4]["data"]) == ("1", {"v": 2})  # the tail: nothing missed


SLOW = r"""
import os, sys, time
flag, out = sys.argv[1], open(sys.argv[2], "a")
while not os.path.exists(flag):  # not reading stdin for now
    time.sleep(0.02)
for line in sys.stdin:
    out.write(line)
    out.flush()
"""


async def test_trimmed_while_the_alert_was_slow_resends_from_state(redis, keys, wrap, tmp_path):
    flag, record = tmp_path / "go", tmp_path / "record"
    cfg = alert_toml(tmp_path / "alert.toml", "slow",
                     [PY, script(tmp_path, "slow.py", SLOW), str(flag), str(record)],
                     topics=["vm"], queue_size=10)
    vm = keys.topic("vm")
    await redis.xadd(vm, {"op": "create", "id": "seed", "data": "{}"})
    await apply_to_state(redis, keys, "vm")
    w = wrap(cfg)

    async def blocked():
        assert w.proc.proc.poll() is None, w.proc.output()
        return metric(w.metrics_port, "vestnik_wrapper_lines_out_total", type="ready") >= 1

    await eventually(blocked, timeout=20, what="snapshot written")
    for start in range(0, 20_000, 1000):  # a product publishing with a short MAXLEN
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, start + 1000):
                pipe.xadd(vm, {"op": "update", "id": str(i), "data": json.dumps({"n": i})},
                          maxlen=500, approximate=False)
            await pipe.execute()
        await apply_to_state(redis, keys, "vm")
    flag.write_text("go")
    state = {k.decode(): json.loads(v)
             for k, v in (await redis.hgetall(keys.state("vm"))).items()}
    assert len(state) > 5000

    async def caught_up():
        assert w.proc.proc.poll() is None, w.proc.output()
        seen = {}
        for line in read_lines(record):
            m = json.loads(line)
            if m["type"] == "entity":
                seen[m["id"]] = m["data"]
        # every entity as the state has it (the alert may also have seen ids that our
        # batch-wise stand-in materializer never applied before they were trimmed)
        return all(seen.get(k) == v for k, v in state.items())

    await eventually(caught_up, timeout=30, what="the alert's view matches the state")
    assert "resending its" in w.proc.output()


# ------------------------------------------------------------------ Redis restarts

ECHO = r"""
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "entity":
        print(json.dumps({"type": "notice", "title": f"saw {m['id']}"}), flush=True)
"""


@pytest.mark.single_redis("restarts the one redis-server")
async def test_wrapper_rides_out_a_redis_restart(redis_server, redis, keys, wrap, tmp_path):
    name = "resilient"
    await put_setting(redis, keys, setting("s1", name))
    cfg = alert_toml(tmp_path / "alert.toml", name, [PY, script(tmp_path, "e.py", ECHO)],
                     topics=["vm"])
    w = wrap(cfg)

    async def titles(n: int):
        assert w.proc.proc.poll() is None, w.proc.output()
        try:
            got = [x["title"] for x in await notices(redis, keys)]
        except (ConnectionError, OSError, RedisConnectionError):
            return None
        return got if len(got) >= n else None

    async def ready():
        return metric(w.metrics_port, "vestnik_wrapper_lines_out_total", type="ready") >= 1

    await eventually(ready, timeout=20, what="snapshot")
    await redis.xadd(keys.topic("vm"), {"op": "create", "id": "1", "data": "{}"})
    await eventually(lambda: titles(1), what="first notice")
    redis_server.restart()  # same port, same data (AOF)
    await redis.connection_pool.disconnect()  # the test's own client: fresh connections
    await redis.xadd(keys.topic("vm"), {"op": "create", "id": "2", "data": "{}"})
    got = await eventually(lambda: titles(2), timeout=20, what="notice after the restart")
    assert got == ["saw 1", "saw 2"]
    assert metric(w.metrics_port, "vestnik_wrapper_restarts_total") == 0  # the alert kept going


# --------------------------------------------------------------------------- the kit

KIT_ALERT = r"""
import time
from vestnik.wrapper.kit import Alert

alert = Alert(heartbeat=0.4)

@alert.on_entity
def on_vm(ev):
    if alert.ready and ev.data.get("status") == "wedged":
        time.sleep(3600)  # a handler that never returns: the heartbeats stop
    if alert.ready:
        alert.notice(f"{ev.id} is {ev.data['status']}", entity=(ev.topic, ev.id))

alert.run()
"""


async def test_kit_heartbeats_while_idle_and_a_stuck_handler_is_restarted(
        redis, keys, wrap, tmp_path):
    name = "kitted"
    await put_setting(redis, keys, setting("s1", name))
    cfg = alert_toml(tmp_path / "alert.toml", name, ["python3", script(tmp_path, "k.py",
                     KIT_ALERT)], topics=["vm"], grace=0.5,
                     restart={"policy": "on-failure", "backoff_min": 0.1})
    w = wrap(cfg)

    async def beats(n: int):
        assert w.proc.proc.poll() is None, w.proc.output()
        return metric(w.metrics_port, "vestnik_wrapper_lines_in_total", type="heartbeat") >= n

    await eventually(lambda: beats(5), timeout=20, what="heartbeats while idle")
    assert metric(w.metrics_port, "vestnik_wrapper_restarts_total") == 0  # idle is not hung
    await redis.xadd(keys.topic("vm"), {"op": "update", "id": "1",
                                        "data": '{"status": "running"}'})

    async def notice():
        return [n["title"] for n in await notices(redis, keys)] == ["1 is running"]

    await eventually(notice, what="a notice through the kit")
    await redis.xadd(keys.topic("vm"), {"op": "update", "id": "2",
                                        "data": '{"status": "wedged"}'})

    async def restarted():
        assert w.proc.proc.poll() is None, w.proc.output()
        return metric(w.metrics_port, "vestnik_wrapper_restarts_total", reason="hung") >= 1

    await eventually(restarted, timeout=20, what="restart of the stuck alert")
