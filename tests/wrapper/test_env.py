"""An alert program gets a clean environment, and the wrapper's log never holds a secret:
the Redis password, service tokens, the JWT secret, cloud keys, or the values it hands
the alert."""

from __future__ import annotations

import json
import re
import secrets
import sys

import pytest
from redis.asyncio import Redis
from wrapping import alert_toml, notices

from support import SECRET, SERVICE_TOKEN, eventually
from vestnik.streams.config import ConfigError
from vestnik.streams.redis_server import free_port
from vestnik.wrapper.config import parse
from vestnik.wrapper.supervisor import EXIT_REDIS, Wrapper

PY = sys.executable

# writes its whole environment to argv[1] as JSON, says one notice, then idles on stdin
ENV_DUMP = r"""
import json, os, sys
open(sys.argv[1] + ".tmp", "w").write(json.dumps(dict(os.environ)))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print(json.dumps({"type": "notice", "title": "env dumped", "body": "", "severity": "info",
                  "recipients": ["1"]}), flush=True)
for _ in sys.stdin:
    pass
"""


@pytest.fixture
async def password_url(redis: Redis, redis_url: str):
    """The session Redis reached as an ACL user with a password (removed afterwards)."""
    user, password = f"wrap-{secrets.token_hex(4)}", "pw-" + secrets.token_hex(16)
    await redis.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*",
                                "+@all")
    host_port = redis_url.split("://", 1)[1]
    yield f"redis://{user}:{password}@{host_port}", password
    await redis.execute_command("ACL", "DELUSER", user)


async def test_alert_sees_only_its_env_and_the_debug_log_holds_no_secret(
        redis, keys, password_url, wrap, tmp_path):
    url, password = password_url
    dump = tmp_path / "env.json"
    cfg = alert_toml(tmp_path / "alert.toml", "env-check",
                     [PY, str(tmp_path / "dump.py"), str(dump)],
                     env=["PASS_ME", "NOT_SET_ANYWHERE"], redis_url=url)
    (tmp_path / "dump.py").write_text(ENV_DUMP)
    cloud_key = "aws-" + secrets.token_hex(16)
    passed = "passed-" + secrets.token_hex(8)
    w = wrap(cfg, VESTNIK_LOG_LEVEL="debug", VESTNIK_REDIS_URL=url,
             AWS_SECRET_ACCESS_KEY=cloud_key, GITHUB_TOKEN="ghp_" + secrets.token_hex(8),
             REDIS_URL=url, PASS_ME=passed, TZ="UTC", LANG="C.UTF-8", HOME=str(tmp_path))

    async def dumped():
        return dump.exists() and any(n["title"] == "env dumped"
                                     for n in await notices(redis, keys))

    await eventually(dumped, timeout=20, what="the alert's environment and notice")
    child = json.loads(dump.read_text())
    assert w.proc.stop() == 0
    log = w.proc.output()

    extra = set(child) - {"LC_CTYPE"}  # Python may add LC_CTYPE itself (PEP 538)
    assert extra == {"PATH", "HOME", "LANG", "TZ", "PASS_ME", "VESTNIK_ALERT",
                     "PYTHONUNBUFFERED", "PYTHONPATH"}, child
    assert child["PASS_ME"] == passed and child["TZ"] == "UTC"
    assert child["VESTNIK_ALERT"] == "env-check"
    everything = json.dumps(child)
    for secret in (password, SECRET, SERVICE_TOKEN, cloud_key):
        assert secret not in everything
    assert " DEBUG " in log  # the log really is at debug level
    for secret in (password, SECRET, SERVICE_TOKEN, cloud_key, passed):
        assert secret not in log, secret


def test_env_table_values_and_listed_names_reach_the_alert(tmp_path):
    base = {"PATH": "/bin", "HOME": "/h", "VESTNIK_SECRET": "s", "AWS_ACCESS_KEY_ID": "k",
            "KEEP": "kept", "VESTNIK_PREFIX": "x:"}
    text = 'name = "a"\ncommand = ["x"]\nredis_url = "redis://127.0.0.1:1"\n'
    table = Wrapper(parse(text + 'env = { GREETING = "hi", VESTNIK_PREFIX = "mine:" }',
                          env={}), env=base)._child_env()
    assert {k: table[k] for k in ("PATH", "HOME", "GREETING", "VESTNIK_PREFIX")} == {
        "PATH": "/bin", "HOME": "/h", "GREETING": "hi", "VESTNIK_PREFIX": "mine:"}
    listed = Wrapper(parse(text + 'env = ["KEEP", "VESTNIK_PREFIX", "ABSENT"]', env={}),
                     env=base)._child_env()
    assert listed["KEEP"] == "kept" and listed["VESTNIK_PREFIX"] == "x:"
    for env in (table, listed):
        assert "VESTNIK_SECRET" not in env and "AWS_ACCESS_KEY_ID" not in env
        assert "ABSENT" not in env and "LANG" not in env  # unset upstream: not invented


@pytest.mark.parametrize(("line", "named"), [
    ('env = { "BAD-NAME" = "1" }', "env.BAD-NAME"),
    ('env = ["OK", "1X"]', "env[1]"),
    ('env = [1]', "env[0]"),
    ("env = 3", "env"),
])
def test_bad_env_names_the_key(line, named):
    with pytest.raises(ConfigError) as err:
        parse(f'name = "a"\ncommand = ["x"]\n{line}', env={"VESTNIK_REDIS_URL": "redis://h"})
    assert f"alert.toml: {named}" in str(err.value)


async def test_unreachable_redis_is_logged_without_its_password(caplog, tmp_path):
    password = "pw-" + secrets.token_hex(16)
    text = (f'name = "a"\ncommand = ["true"]\n'
            f'redis_url = "redis://u:{password}@127.0.0.1:{free_port()}/0"')
    with caplog.at_level("DEBUG"):
        code = await Wrapper(parse(text, env={}), redis_timeout=0.3).run()
    assert code == EXIT_REDIS
    assert "unreachable" in caplog.text and password not in caplog.text
    assert "redis://***@127.0.0.1" in caplog.text


@pytest.mark.parametrize(("env", "line", "want"), [
    ({}, "", 2.0),
    ({"VESTNIK_REDIS_TIMEOUT": "0.5"}, "", 0.5),
    ({"VESTNIK_REDIS_TIMEOUT": "0.5"}, "redis_timeout = 7", 7.0),
    ({"VESTNIK_REDIS_TIMEOUT": "soon"}, "", "redis_timeout: VESTNIK_REDIS_TIMEOUT='soon'"),
    ({}, "redis_timeout = 0", "redis_timeout: Expected `float` > 0.0"),
])
def test_redis_timeout_from_the_file_or_the_environment(env, line, want):
    text = f'name = "a"\ncommand = ["x"]\n{line}'
    env = {"VESTNIK_REDIS_URL": "redis://h", **env}
    if isinstance(want, float):
        assert parse(text, env=env).redis_timeout == want
    else:
        with pytest.raises(ConfigError, match=re.escape(want)):
            parse(text, env=env)
