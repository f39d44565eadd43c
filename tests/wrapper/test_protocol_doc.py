"""The example session of docs/wrapper-protocol.md, replayed against the real wrapper.

The alert side is a player: it prints the transcript's `stdout` lines and, at each
`stdin` line, reads one line and records it. The test plays the world around it: the
settings and accounts the snapshot shows, then the live settings change and entity
update the transcript shows. Every line the alert received, and every notice the
wrapper added to vn:notices, must be what the document says.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from wrapping import alert_toml, notices, put_setting, read_lines, setting

from support import ROOT, eventually
from vestnik.wrapper.supervisor import version

DOC = ROOT / "docs" / "wrapper-protocol.md"

PLAYER = r"""
import json, sys
script, record = sys.argv[1], sys.argv[2]
with open(script) as f, open(record, "a") as out:
    for direction, line in json.load(f):
        if direction == "stdout":
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        else:
            got = sys.stdin.readline()
            out.write(got if got.endswith("\n") else got + "\n")
            out.flush()
    for rest in sys.stdin:  # then wait for the wrapper to close stdin
        out.write(rest)
        out.flush()
"""


def block(kind: str) -> list[str]:
    m = re.search(rf"```{kind}\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"no ```{kind} block in {DOC}"
    return [ln for ln in m.group(1).splitlines() if ln.strip()]


def transcript() -> list[tuple[str, str]]:
    out = []
    for ln in block("transcript"):
        if ln.startswith("#"):
            continue
        direction, _, line = ln.partition(" ")
        assert direction in ("stdin", "stdout"), ln
        out.append((direction, line.strip()))
    return out


async def test_documented_session_replayed(redis, keys, wrap, tmp_path: Path):
    steps = transcript()
    stdin = [json.loads(line) for d, line in steps if d == "stdin"]
    expected_notices = [json.loads(ln) for ln in block("notices")]
    name = stdin[0]["alert"]
    stdin[0]["version"] = version()  # the doc shows the version of its day
    ready = next(i for i, m in enumerate(stdin) if m["type"] == "ready")

    # the world of the snapshot: its settings (plus two that must never show up) ...
    snapshot_settings = stdin[1]["items"]
    for s in snapshot_settings:
        await put_setting(redis, keys, s)
    await put_setting(redis, keys, setting("s0", name, {"min_balance": 1}, enabled=False))
    await put_setting(redis, keys, setting("x1", "other-alert", {"min_balance": 1}))
    # ... and its entities (no api running: the wrapper reads the topic stream itself)
    topics = sorted({m["topic"] for m in stdin[:ready] if m["type"] == "entity"})
    for m in stdin[:ready]:
        if m["type"] == "entity":
            await redis.xadd(keys.topic(m["topic"]), {"op": "create", "id": m["id"],
                                                      "data": json.dumps(m["data"])})

    script = tmp_path / "script.json"
    script.write_text(json.dumps(steps))
    record = tmp_path / "record.jsonl"
    (tmp_path / "player.py").write_text(PLAYER)
    cfg = alert_toml(tmp_path / "alert.toml", name,
                     [sys.executable, "player.py", str(script), str(record)], topics=topics)
    w = wrap(cfg)

    async def received(n: int) -> list[str] | None:
        lines = read_lines(record)
        assert w.proc.proc.poll() is None, w.proc.output()
        return lines if len(lines) >= n else None

    await eventually(lambda: received(ready + 1), timeout=20, what="the snapshot")
    # the live part: make each remaining stdin line happen, one at a time
    current = {s["id"]: s for s in snapshot_settings}
    for i in range(ready + 1, len(stdin)):
        msg: dict[str, Any] = stdin[i]
        if msg["type"] == "settings":
            wanted = {s["id"]: s for s in msg["items"]}
            for sid, s in wanted.items():
                if current.get(sid) != s:
                    await put_setting(redis, keys, s)
            for sid in set(current) - set(wanted):
                raise AssertionError(f"transcript removes setting {sid}: not replayed here")
            current = wanted
        elif msg["type"] == "entity":
            fields = {"op": msg["op"], "id": msg["id"]}
            if msg.get("data") is not None:
                fields["data"] = json.dumps(msg["data"])
            await redis.xadd(keys.topic(msg["topic"]), fields)
        else:
            raise AssertionError(f"cannot replay a live {msg['type']!r}")
        await eventually(lambda n=i + 1: received(n), timeout=10, what=f"stdin line {i + 1}")

    got = [json.loads(line) for line in read_lines(record)]
    assert got == stdin

    async def all_notices():
        found = await notices(redis, keys)
        return found if len(found) >= len(expected_notices) else None

    found = await eventually(all_notices, timeout=10, what="the notices")
    assert len(found) == len(expected_notices)
    for want, have in zip(expected_notices, found, strict=True):
        assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", have.pop("id"))
        assert have.pop("created_at").isdigit()
        want = {k: v for k, v in want.items() if k not in ("id", "created_at")}
        assert {k: _json(v) for k, v in have.items()} == {k: _json(v) for k, v in want.items()}
    assert w.proc.stop() == 0


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
