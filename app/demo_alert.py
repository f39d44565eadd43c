#!/usr/bin/env python3
"""The demo's alert program: disk usage of the VMs of topic `vm` above a threshold.

Run by the wrapper (`vestnik wrap`), it needs nothing but the standard library: it reads
JSON lines on stdin (`hello`, `settings`, `entity`, `ready`) and prints JSON lines on
stdout (`notice`, `resolve`); see docs/wrapper-protocol.md.

For every enabled setting of this alert, a VM whose `disk` reaches the setting's
`metric.threshold` (default 90) gets one notice — warning, or critical from 97% — and
when the disk falls 5 points under the threshold again the alert says `resolve`: the
notice shows `resolved` in every inbox, and the next crossing is a new incident.
`VESTNIK_DEMO_BASE` (the inbox's base URL) makes the notice link to the live VM table.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

HYSTERESIS = 5.0
BASE = os.environ.get("VESTNIK_DEMO_BASE", "").rstrip("/")

settings: list[dict[str, Any]] = []
vms: dict[str, dict[str, Any]] = {}
firing: set[tuple[str, str]] = set()  # (setting id, vm id) over the threshold


def say(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def log(text: str) -> None:
    print(f"I! {text}", file=sys.stderr, flush=True)


def threshold_of(setting: dict[str, Any]) -> float:
    value = (setting.get("metric") or {}).get("threshold", 90)
    try:
        return float(value)
    except (TypeError, ValueError):
        say({"type": "error", "message": f"setting {setting.get('id')}: metric.threshold "
                                         f"must be a number, got {value!r}"})
        return 90.0


def check(vm_id: str) -> None:
    vm = vms.get(vm_id)
    for setting in settings:
        key = (setting["id"], vm_id)
        disk = vm.get("disk") if vm else None
        if not isinstance(disk, int | float):
            firing.discard(key)
            continue
        limit = threshold_of(setting)
        name = vm.get("name") or f"vm {vm_id}"
        if disk >= limit and key not in firing:
            firing.add(key)
            notice: dict[str, Any] = {
                "type": "notice",
                "setting_id": setting["id"],
                "severity": "critical" if disk >= 97 else "warning",
                "title": f"Disk {disk:.0f}% full on {name}",
                "body": f"{name} uses {disk:.1f}% of its disk (threshold {limit:g}%). "
                        "Free some space or grow the volume.",
                "entity": {"topic": "vm", "id": vm_id},
                "dedup_key": f"vm:{vm_id}",
                "data": {"disk": disk, "threshold": limit},
            }
            if BASE:
                notice["link"] = f"{BASE}/demo/vms"
            say(notice)
        elif disk < limit - HYSTERESIS and key in firing:
            firing.discard(key)
            say({"type": "resolve", "dedup_key": f"vm:{vm_id}"})


def main() -> int:
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            say({"type": "error", "message": f"not a JSON object: {line[:80]!r}"})
            continue
        kind = msg.get("type")
        if kind == "settings":
            settings[:] = [s for s in msg.get("items", []) if s.get("enabled", True)]
            ids = {s["id"] for s in settings}
            firing.intersection_update({k for k in firing if k[0] in ids})
            log(f"{len(settings)} setting(s)")
            for vm_id in list(vms):
                check(vm_id)
        elif kind == "entity" and msg.get("topic") == "vm":
            vm_id = str(msg.get("id"))
            if msg.get("op") == "delete":
                vms.pop(vm_id, None)
            else:
                vms[vm_id] = msg.get("data") or {}
            check(vm_id)
        elif kind == "ready":
            log(f"watching {len(vms)} VMs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
