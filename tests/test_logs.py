"""streams/logs.py: the line formats, context fields and redaction, and the wrapper's
own entry point in JSON (every process's real logs are grepped for secrets in
tests/forward/test_no_secret_in_logs.py)."""

from __future__ import annotations

import logging
import re
import secrets
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from support import base_env
from vestnik.streams import logs

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("inner")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("vestnik.center", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_text_line_has_utc_ms_time_level_logger_and_context_fields():
    with logs.context(alert="disk usage"):
        line = logs.TextFormatter().format(record("stored %d", 3, notice_id="01J"))
    ts, level, rest = line.split(" ", 2)
    assert TS.match(ts) and level == "WARNING"
    assert rest == 'vestnik.center: stored 3 alert="disk usage" notice_id=01J'


def test_json_line_has_the_fields_and_a_traceback_as_one_string():
    with logs.context(alert="disk"):
        with logs.context(user="7"):
            line = logs.JsonFormatter().format(record("failed", exc=True, notice_id="01J"))
        after = logs.JsonFormatter().format(record("later"))
    obj = msgspec.json.decode(line)
    assert TS.match(obj.pop("ts"))
    exc = obj.pop("exc")
    assert exc.startswith("Traceback") and "ValueError: inner" in exc
    assert obj == {"level": "WARNING", "logger": "vestnik.center", "msg": "failed",
                   "alert": "disk", "user": "7", "notice_id": "01J"}
    assert "user" not in msgspec.json.decode(after)  # the inner context ended


@pytest.mark.parametrize("text,masked", [
    ("redis://:pw-1234@10.0.0.1:6379/0", "redis://***@10.0.0.1:6379/0"),
    ("rediss://user:pw-1234@h/0 down", "rediss://***@h/0 down"),
    ("url redis://h:6379/0?password=pw-1234&db=1", "url redis://h:6379/0?password=***&db=1"),
    ("Authorization: Bearer svc_abc.def-123", "Authorization: Bearer ***"),
    ("GET /stream?token=eyJhbGciOi.eyJzdWIi.sig&x=1", "GET /stream?token=***&x=1"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc_DEF-1 used", "jwt *** used"),
    ("POST https://api.telegram.org/bot123456:AAH-x_y/sendMessage",
     "POST https://api.telegram.org/bot***/sendMessage"),
])
def test_what_looks_like_a_secret_is_masked(text: str, masked: str):
    assert logs.redact(text) == masked


def test_configured_secrets_are_masked_in_text_and_json():
    value = "cfg-secret-" + secrets.token_hex(6)
    logs.add_secrets([value, "ab", None])  # too short to search for: ignored, not masking "ab"
    rec = record("sent with %s", value, user=f"x{value}x")
    assert value not in logs.TextFormatter().format(rec)
    obj = msgspec.json.decode(logs.JsonFormatter().format(rec))
    assert obj["msg"] == "sent with ***" and obj["user"] == "x***x"
    assert logs.redact("ab cd") == "ab cd"


def test_python_m_wrapper_logs_json_with_alert_on_every_line(redis_url: str, tmp_path: Path):
    """The wrapper on a box with only Redis reads VESTNIK_LOG_FORMAT too, and its alert's
    stderr lines come out as records of their own, `alert` set."""
    (tmp_path / "alert.toml").write_text(
        'name = "once"\ncommand = ["sh", "-c", "echo \'W! low disk\' >&2"]\n'
        '[restart]\npolicy = "never"\n')
    env = base_env(redis_url, VESTNIK_LOG_FORMAT="json")
    out = subprocess.run([sys.executable, "-m", "vestnik.wrapper", str(tmp_path / "alert.toml")],
                         env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    records = [msgspec.json.decode(line) for line in out.stderr.splitlines()]
    assert records and all(r["alert"] == "once" and TS.match(r["ts"]) for r in records)
    assert {"level": "WARNING", "logger": "vestnik.alert.once", "msg": "low disk"}.items() \
        <= records[[r["msg"] for r in records].index("low disk")].items()
