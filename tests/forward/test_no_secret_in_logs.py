"""Every long-running process (api, center, forwarder, bridge, wrap) against a Redis with a
password, with a config full of distinctive fake secrets, at debug level, in both log
formats: traffic through each (a notice forwarded to a webhook that fails once, a bad
entry, HTTP calls with tokens, a key change, an alert's notice and stderr), then every
process's whole stderr is grepped for each secret. Here because the webhook receiver
(fwd_support.HttpSink) is the forward tests'."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest
import redis as sync_redis
from fwd_support import HttpSink

from support import Proc, base_env, eventually, wait_http
from vestnik.streams.redis_server import RedisServer, free_port

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
VESTNIK = str(Path(sys.executable).parent / "vestnik")


ALERT = """\
import json, sys
print("W! the alert starts", file=sys.stderr, flush=True)
print("E! leaking " + sys.argv[1], file=sys.stderr, flush=True)  # as a careless alert might
for line in sys.stdin:
    if json.loads(line).get("type") == "ready":
        print(json.dumps({"type": "notice", "title": "from the alert", "recipients": ["1"]}),
              flush=True)
        print("I! notice printed", file=sys.stderr, flush=True)
"""


def fake_secrets() -> dict[str, str]:
    tag = secrets.token_hex(6)
    return {
        "secret": f"jwt-secret-{tag}-" + "x" * 20,
        "service_token": f"svc-token-{tag}",
        "smtp_password": f"smtp-pw-{tag}",
        "telegram_token": f"123456:tg-{tag}",
        "slack_token": f"xoxb-slack-{tag}",
        "webhook_secret": "whsec_" + base64.b64encode(f"hook-{tag}".encode()).decode(),
        "redis_password": f"redis-pw-{tag}",
    }


def write_config(path: Path, s: dict[str, str], smtp_port: int) -> None:
    path.write_text(f"""\
secret = "{s['secret']}"
service_tokens = ["{s['service_token']}"]
smtp_url = "smtp://mailer:{s['smtp_password']}@127.0.0.1:{smtp_port}"
smtp_from = "vestnik@example.org"
telegram_token = "{s['telegram_token']}"
slack_token = "{s['slack_token']}"
webhook_secret = "{s['webhook_secret']}"
egress_allow = ["127.0.0.1/32"]
send_backoff = 0.1
[keyspace_patterns]
"vm:*" = "vm"
""")


async def drive(env: dict[str, str], s: dict[str, str], api: str, hook: HttpSink,
                r: sync_redis.Redis, tmp: Path) -> None:
    """A notice forwarded to a webhook that fails once, a bad entry, HTTP calls with tokens,
    a key change for the bridge, and the alert's own notice."""
    channels = msgspec.json.encode({"webhook": {"url": hook.base + "/hook"}}).decode()
    sent = await asyncio.to_thread(
        _run, "send", "--alert", "hook", "--title", "to the hook", "--recipients", "1",
        "--channels", channels, "--forward-after", "0", env=env)
    assert sent.returncode == 0, sent.stderr
    r.xadd("vn:notices", {"alert": "bad", "title": ""})  # dead-lettered: no title
    r.set("vm:1", "up")
    token = (await asyncio.to_thread(_run, "token", "--user", "1", env=env)).stdout.strip()
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        await http.get(f"/?token={token}")  # a token in a URL, as the inbox page takes it
        user = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/api/v1/me/notices", headers=user)).status_code == 200
        auth = {"Authorization": f"Bearer {s['service_token']}"}
        assert (await http.get("/api/v1/settings", headers=auth)).status_code == 200
        wrong = {"Authorization": f"Bearer {s['service_token']}x"}
        assert (await http.get("/api/v1/settings", headers=wrong)).status_code == 401

        async def alert_notice_stored() -> bool:
            got = await http.get("/api/v1/me/notices", headers=user)
            return "from the alert" in got.text

        await eventually(alert_notice_stored, timeout=20, what="the alert's notice")

    async def hook_answered_twice() -> bool:
        return len(hook.requests) >= 2

    await eventually(hook_answered_twice, timeout=30, what="the webhook's retry")


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VESTNIK, *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_no_process_logs_a_secret(tmp_path: Path, fmt: str):
    s = fake_secrets()
    server = RedisServer(tmp_path / "redis").start()
    admin = sync_redis.Redis(port=server.port)
    admin.config_set("requirepass", s["redis_password"])
    admin.close()
    url = f"redis://:{s['redis_password']}@127.0.0.1:{server.port}/0"
    r = sync_redis.Redis.from_url(url)
    conf = tmp_path / "vestnik.toml"
    write_config(conf, s, free_port())
    (tmp_path / "alert.py").write_text(ALERT)
    (tmp_path / "alert.toml").write_text(
        f'name = "leaky"\ntopics = ["vm"]\ncommand = ["{sys.executable}", "alert.py", '
        f'"Authorization: Bearer {s["service_token"]} secret {s["secret"]}"]\n')
    env = base_env(url, VESTNIK_CONFIG=str(conf), VESTNIK_LOG_LEVEL="debug",
                   VESTNIK_LOG_FORMAT=fmt)
    del env["VESTNIK_SECRET"], env["VESTNIK_SERVICE_TOKENS"]  # from the file, not support's
    port = free_port()
    procs = {name: Proc([VESTNIK, *argv], env, tmp_path / f"{name}.log") for name, argv in {
        "api": ["api", "--port", str(port)], "center": ["center"], "forwarder": ["forwarder"],
        "bridge": ["bridge"], "wrap": ["wrap", str(tmp_path / "alert.toml")]}.items()}
    answers = iter([500])
    hook = HttpSink(respond=lambda req: (next(answers, 200), {"ok": True})).start()
    try:
        for p in procs.values():
            p.start()
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=procs["api"])
        await drive(env, s, f"http://127.0.0.1:{port}", hook, r, tmp_path)
    finally:
        codes = {name: p.stop() for name, p in procs.items()}
        hook.stop()
        r.close()
        server.stop()
    outputs = {name: p.output() for name, p in procs.items()}
    # the bridge installs no SIGTERM handler (yet): it dies of the signal, nothing to flush
    assert codes == {**dict.fromkeys(procs, 0), "bridge": codes["bridge"]}, outputs
    assert codes["bridge"] == 0, outputs["bridge"]  # SIGTERM: a clean stop
    for name, out in outputs.items():
        assert out.count("\n") >= 3, (name, out)
        for key, value in s.items():
            assert value not in out, f"{key} in {name}'s log"
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if fmt == "json":
            for line in lines:
                obj = msgspec.json.decode(line)
                assert {"ts", "level", "logger", "msg"} <= obj.keys(), line
                assert TS.match(obj["ts"]), line
    joined = outputs["api"]
    assert "uvicorn.error" in joined  # uvicorn's own lines, in the same format
    wrap = outputs["wrap"]
    assert "leaking Authorization: Bearer *** secret ***" in wrap  # masked, not dropped
    if fmt == "json":
        alert_lines = [msgspec.json.decode(ln) for ln in wrap.splitlines()
                       if "the alert starts" in ln]
        assert alert_lines and all(o["alert"] == "leaky" for o in alert_lines)
        assert alert_lines[0]["level"] == "WARNING"
    else:
        assert re.search(r" WARNING vestnik\.alert\.leaky: the alert starts alert=leaky", wrap)
