"""Vestnik alert kit: an optional helper for alerts written in Python (stdlib only).

An alert needs no library (read JSON lines on stdin, print JSON lines on stdout, see
docs/wrapper-protocol.md); this file saves the loop and the bookkeeping:

    from vestnik.wrapper.kit import Alert

    alert = Alert(heartbeat=30)

    @alert.on_entity
    def check(ev):                      # ev.topic, ev.op, ev.id, ev.data, ev.previous
        for s in alert.settings:        # the enabled settings of this alert
            if ev.data and ev.data["balance"] < s["metric"]["min_balance"]:
                alert.notice(f"Balance low on {ev.id}", setting_id=s["id"],
                             entity=(ev.topic, ev.id), dedup_key=ev.id)

    alert.run()

`alert.entities[topic][id]` is the current state of every entity, `alert.settings` the
current settings, `alert.ready` turns true once the snapshot is complete. Under
`vestnik wrap` the wrapper puts this module on PYTHONPATH, so any python3 can import it.
With `heartbeat`, the kit says `hello` and prints `heartbeat` lines whenever its loop
is idle, so a hung handler is noticed by the wrapper and restarted.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

PROTOCOL = 1
LEVELS = {"error": "E!", "warning": "W!", "info": "I!", "debug": "D!"}


class EntityChange:
    """One `entity` line, with the entity's state before it (`previous`, None if new)."""

    __slots__ = ("data", "id", "op", "previous", "topic")

    def __init__(self, topic: str, op: str, id: str, data: dict[str, Any] | None,
                 previous: dict[str, Any] | None) -> None:
        self.topic, self.op, self.id, self.data, self.previous = topic, op, id, data, previous

    def __repr__(self) -> str:
        return f"EntityChange({self.topic}/{self.id} {self.op})"


class Alert:
    def __init__(self, heartbeat: float | None = None, *, stdin: Any = None,
                 stdout: Any = None) -> None:
        self.name = os.environ.get("VESTNIK_ALERT", "")
        self.heartbeat = heartbeat
        self.settings: list[dict[str, Any]] = []
        self.entities: dict[str, dict[str, dict[str, Any]]] = {}
        self.ready = False
        self.hello: dict[str, Any] = {}
        self._in = stdin if stdin is not None else sys.stdin.buffer
        self._out = stdout if stdout is not None else sys.stdout
        self._settings_cb: list[Callable[[list[dict[str, Any]]], Any]] = []
        self._entity_cb: list[Callable[[EntityChange], Any]] = []
        self._ready_cb: list[Callable[[], Any]] = []

    # handlers ---------------------------------------------------------------------
    def on_settings(self, fn: Callable[[list[dict[str, Any]]], Any]) -> Callable:
        """Called with the new list of enabled settings (at start and on every change)."""
        self._settings_cb.append(fn)
        return fn

    def on_entity(self, fn: Callable[[EntityChange], Any]) -> Callable:
        """Called for every entity: those of the snapshot, then each live change."""
        self._entity_cb.append(fn)
        return fn

    def on_ready(self, fn: Callable[[], Any]) -> Callable:
        """Called once the snapshot is complete."""
        self._ready_cb.append(fn)
        return fn

    # output -----------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        self._out.write(json.dumps(msg, separators=(",", ":"), ensure_ascii=False) + "\n")
        self._out.flush()

    def notice(self, title: str, body: str = "", severity: str = "info", *,
               entity: tuple[str, str] | dict[str, str] | None = None,
               data: dict[str, Any] | None = None, setting_id: str | None = None,
               dedup_key: str | None = None, recipients: list[str] | None = None,
               link: str | None = None) -> None:
        """Emit a notice. Without `setting_id` the wrapper makes one per enabled setting."""
        msg: dict[str, Any] = {"type": "notice", "title": title, "severity": severity}
        if body:
            msg["body"] = body
        if entity is not None:
            msg["entity"] = (entity if isinstance(entity, dict)
                             else {"topic": entity[0], "id": entity[1]})
        for key, value in (("data", data), ("setting_id", setting_id),
                           ("dedup_key", dedup_key), ("recipients", recipients),
                           ("link", link)):
            if value is not None:
                msg[key] = value
        self.send(msg)

    def resolve(self, dedup_key: str) -> None:
        """The incident behind `dedup_key` is over: its notice shows `resolved` in every
        feed, and the key's next notice opens a new incident."""
        self.send({"type": "resolve", "dedup_key": dedup_key})

    def error(self, message: str) -> None:
        """Report a problem that is not a crash (logged and counted by the wrapper)."""
        self.send({"type": "error", "message": message})

    def log(self, message: str, level: str = "info") -> None:
        """A line in the wrapper's log under this alert's name."""
        sys.stderr.write(f"{LEVELS.get(level, 'I!')} {message}\n")
        sys.stderr.flush()

    # input ------------------------------------------------------------------------
    def handle(self, msg: dict[str, Any]) -> None:
        """Apply one decoded stdin message and call the handlers."""
        kind = msg.get("type")
        if kind == "entity":
            topic, eid = msg["topic"], str(msg["id"])
            state = self.entities.setdefault(topic, {})
            previous = state.get(eid)
            data = msg.get("data")
            if msg.get("op") == "delete":
                state.pop(eid, None)
            elif data is not None:
                state[eid] = data
            ev = EntityChange(topic, msg.get("op", "update"), eid, data, previous)
            for fn in self._entity_cb:
                fn(ev)
        elif kind == "settings":
            self.settings = list(msg.get("items", []))
            for fn in self._settings_cb:
                fn(self.settings)
        elif kind == "ready":
            self.ready = True
            for fn in self._ready_cb:
                fn()
        elif kind == "hello":
            self.hello = msg

    def run(self) -> None:
        """Read stdin until EOF (the wrapper's signal to finish)."""
        if self.heartbeat:
            self.send({"type": "hello", "heartbeat": self.heartbeat})
        fd = self._in.fileno()
        buf = b""
        beat = self.heartbeat / 3 if self.heartbeat else None
        last_beat = time.monotonic()
        while True:
            if beat is not None:
                ready, _, _ = select.select([fd], [], [], beat)
                if time.monotonic() - last_beat >= beat:
                    self.send({"type": "heartbeat"})
                    last_beat = time.monotonic()
                if not ready:
                    continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.handle(json.loads(line))
