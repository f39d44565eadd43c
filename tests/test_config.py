"""Configuration: env over TOML, env forms of lists and tables, and errors that name the
variable or key. Pure unit tests (no Redis), plus the real CLI's exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vestnik.streams.config import ConfigError, load

VESTNIK = Path(sys.executable).parent / "vestnik"


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vestnik.toml"
    path.write_text(text)
    return path


def test_defaults():
    s = load({})
    assert (s.host, s.port, s.prefix, s.redis_url) == ("127.0.0.1", 8080, "vn:", None)
    assert s.service_tokens == [] and s.topic_acl == {} and s.forward_after == 300


def test_env_wins_over_toml(tmp_path):
    path = toml(tmp_path, 'port = 9000\nprefix = "app:"\nservice_tokens = ["t1"]\n'
                          'redis_url = "redis://127.0.0.1:7000/0"\n'
                          '[topic_acl]\nbilling = ["admin"]\n')
    s = load({}, path)
    assert (s.port, s.prefix, s.service_tokens) == (9000, "app:", ["t1"])
    assert s.topic_acl == {"billing": ["admin"]}
    s = load({"VESTNIK_PORT": "9100", "VESTNIK_SERVICE_TOKENS": "a,b",
              "VESTNIK_TOPIC_ACL": "ops=sre"}, path)
    assert (s.port, s.prefix, s.service_tokens) == (9100, "app:", ["a", "b"])
    assert s.topic_acl == {"ops": ["sre"]}  # a table from env replaces the file's table
    assert s.redis_url == "redis://127.0.0.1:7000/0"
    # VESTNIK_CONFIG names the file when no path is passed
    assert load({"VESTNIK_CONFIG": str(path)}).port == 9000


def test_env_lists_and_tables():
    s = load({
        "VESTNIK_SERVICE_TOKENS": " a , b,,",
        "VESTNIK_KEYSPACE_PATTERNS": "panel:vm:*=vm, panel:host:*=host",
        "VESTNIK_TOPIC_ACL": "billing=admin|user:7,open=*",
        "VESTNIK_HYDRATE": "vm=redis:panel:vm:{id}",
        "VESTNIK_CORS_ORIGINS": "http://a.example,http://b.example",
        "VESTNIK_FORWARD_AFTER": "12.5",
        "VESTNIK_SSE_PING": "0.5",
    })
    assert s.service_tokens == ["a", "b"]
    assert s.keyspace_patterns == {"panel:vm:*": "vm", "panel:host:*": "host"}
    assert s.topic_acl == {"billing": ["admin", "user:7"], "open": ["*"]}
    assert s.hydrate == {"vm": "redis:panel:vm:{id}"}
    assert s.cors_origins == ["http://a.example", "http://b.example"]
    assert (s.forward_after, s.sse_ping) == (12.5, 0.5)


@pytest.mark.parametrize(("env", "named"), [
    ({"VESTNIK_PORT": "abc"}, "VESTNIK_PORT"),
    ({"VESTNIK_PORT": "70000"}, "VESTNIK_PORT"),
    ({"VESTNIK_SSE_PING": "0"}, "VESTNIK_SSE_PING"),
    ({"VESTNIK_FORWARD_AFTER": "-1"}, "VESTNIK_FORWARD_AFTER"),
    ({"VESTNIK_MAX_BODY": "big"}, "VESTNIK_MAX_BODY"),
    ({"VESTNIK_REDIS_URL": "http://127.0.0.1:6379"}, "VESTNIK_REDIS_URL"),
    ({"VESTNIK_SMTP_URL": "mail.example:25"}, "VESTNIK_SMTP_URL"),
    ({"VESTNIK_PREFIX": ""}, "VESTNIK_PREFIX"),
    ({"VESTNIK_KEYSPACE_PATTERNS": "panel:vm:*"}, "VESTNIK_KEYSPACE_PATTERNS"),
    ({"VESTNIK_TOPIC_ACL": "=admin"}, "VESTNIK_TOPIC_ACL"),
])
def test_bad_env_names_the_variable(env, named):
    with pytest.raises(ConfigError) as e:
        load(env)
    assert named in str(e.value)


@pytest.mark.parametrize(("text", "named"), [
    ('port = "x"', "port"),
    ("port = -1", "port"),
    ('redis_url = "http://127.0.0.1:1"', "redis_url"),
    ('service_tokens = "a,b"', "service_tokens"),
    ('[topic_acl]\nbilling = "admin"', "topic_acl"),
    ("prot = 8080", "prot"),
    ("sse_ping = 0", "sse_ping"),
])
def test_bad_toml_names_the_key(tmp_path, text, named):
    path = toml(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load({}, path)
    message = str(e.value)
    assert f"{named}" in message and str(path) in message
    assert "VESTNIK_" not in message  # the value came from the file, not the environment


def test_unknown_toml_key_is_named_as_unknown(tmp_path):
    with pytest.raises(ConfigError, match="unknown key `prot`"):
        load({}, toml(tmp_path, "prot = 1"))


def test_bad_or_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load({}, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"vestnik\.toml"):
        load({}, toml(tmp_path, "port = = 1"))
    with pytest.raises(ConfigError, match="cannot read"):
        load({}, tmp_path)  # a directory


def test_cli_exits_2_naming_the_variable(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "VESTNIK_PORT": "abc",
           "VESTNIK_REDIS_URL": "redis://127.0.0.1:1/0"}
    r = subprocess.run([str(VESTNIK), "api"], env=env, capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "VESTNIK_PORT" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([str(VESTNIK), "--config", str(toml(tmp_path, 'port = "x"')), "api"],
                       env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "port" in r.stderr
    # `api` without a Redis URL is a configuration error too, naming what is missing
    r = subprocess.run([str(VESTNIK), "api"], env={"PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "VESTNIK_REDIS_URL" in r.stderr
