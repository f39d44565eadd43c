"""The demo's pieces without a browser: the alert program speaks the wrapper protocol (one
notice per crossing, resolve with hysteresis), the SMTP sink keeps what a real client sends,
and the simulator makes a disk cross the threshold within seconds."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from email.message import EmailMessage

import aiosmtplib
import msgspec

from support import ROOT
from vestnik.app.demo import ALERT, MailSink, Simulator
from vestnik.streams.keys import Keys
from vestnik.streams.redis_server import free_port


def run_alert(lines: list[dict | str]) -> list[dict]:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                   for line in lines)
    out = subprocess.run([sys.executable, str(ROOT / "app" / "demo_alert.py")], input=text,
                         capture_output=True, text=True, timeout=20,
                         env={"VESTNIK_DEMO_BASE": "http://vestnik.test"}, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def vm(vid: str, disk: float) -> dict:
    return {"type": "entity", "topic": "vm", "op": "update", "id": vid,
            "data": {"id": int(vid), "name": f"web-{vid}", "disk": disk}}


def test_demo_alert_one_notice_per_crossing_then_resolve():
    setting = {"id": "S1", "name": ALERT, "metric": {"threshold": 90}, "channel": {},
               "enabled": True}
    out = run_alert([
        {"type": "hello", "protocol": 1, "alert": ALERT, "version": "0.1.0"},
        {"type": "settings", "items": [setting]},
        vm("1", 50), {"type": "ready"},
        vm("1", 91), vm("1", 95), vm("1", 98),  # one notice, not three
        vm("1", 87),  # under the threshold, within the hysteresis: still firing
        vm("1", 80),  # resolved
        vm("1", 97.5),  # a new crossing: critical
    ])
    assert [m["type"] for m in out] == ["notice", "resolve", "notice"]
    first, resolve, again = out
    assert first["title"] == "Disk 91% full on web-1" and first["severity"] == "warning"
    assert first["setting_id"] == "S1" and first["dedup_key"] == "vm:1"
    assert first["entity"] == {"topic": "vm", "id": "1"}
    assert first["link"] == "http://vestnik.test/demo/vms"
    assert resolve == {"type": "resolve", "dedup_key": "vm:1"}
    assert again["severity"] == "critical"


def test_demo_alert_bad_threshold_is_reported_not_fatal():
    setting = {"id": "S1", "name": ALERT, "metric": {"threshold": "lots"}, "enabled": True}
    out = run_alert([{"type": "settings", "items": [setting]}, vm("1", 95), "not json", "[1]"])
    kinds = [m["type"] for m in out]
    assert kinds[0] == "error" and "threshold" in out[0]["message"]
    assert "notice" in kinds  # falls back to 90
    assert kinds[-2:] == ["error", "error"]  # the lines that are not JSON objects


async def test_mail_sink_keeps_messages_from_a_real_client(redis):
    port = free_port()
    key = Keys("vn:").demo_mail
    sink = await MailSink(redis, key, "127.0.0.1", port).start()
    try:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        for i in range(2):  # two messages on one connection, as a pooled sender does
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = ("v@example.test", "a@example.test",
                                                      f"Disk {i}")
            msg.set_content(".leading dot\nline two\n")
            msg.add_alternative("<p>Disk <b>full</b></p>", subtype="html")
            await smtp.send_message(msg)
        await smtp.quit()
        assert await redis.get(key + ":on") == str(port).encode()
        stored = [msgspec.json.decode(m) for m in await redis.lrange(key, 0, -1)]
    finally:
        await sink.close()
    assert [m["subject"] for m in stored] == ["Disk 1", "Disk 0"]  # newest first
    assert stored[0]["to"] == ["a@example.test"]
    assert stored[0]["text"] == ".leading dot\nline two\n"  # dot-unstuffed
    assert "<b>full</b>" in stored[0]["html"]
    assert not await redis.exists(key + ":on")


async def test_simulator_crosses_the_threshold_within_seconds(redis, settings, keys):
    sim = Simulator(redis, keys, settings, seed=7)
    peak = {vid: v["disk"] for vid, v in sim.vms.items()}
    statuses = set()
    for _ in range(15):  # fifteen ticks (seconds)
        for v in sim.step():
            peak[v["id"]] = max(peak[v["id"]], v["disk"])
            statuses.add((v["id"], v["status"]))
    assert peak["2"] >= 90  # web-2 starts at 86% and fills up
    assert ("7", "running") in statuses  # web-7 finished installing
    await asyncio.sleep(0)
