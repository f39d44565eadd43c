"""`vestnik` as an operator meets it: the installed console script in a child process, its
help, its version, and every expected failure as one line with a documented exit code."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import redis as sync_redis

from support import ROOT, SECRET, base_env
from vestnik.app.cli import EXIT_INPUT, EXIT_OTHER, EXIT_REDIS, parser
from vestnik.streams.redis_server import free_port

VESTNIK = str(Path(sys.executable).parent / "vestnik")  # the console script, as installed
PASSWORD = "cli-redis-pw-" + SECRET[-8:]


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VESTNIK, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    """The failure's last stderr line, after asserting there is no traceback at all."""
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines, out
    return lines[-1]


def dead_redis_env(**extra: str) -> dict[str, str]:
    """A Redis URL with a password on a port where nothing listens."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    return base_env(url, VESTNIK_REDIS_TIMEOUT="0.1", **extra)


def test_version_names_vestnik_python_and_redis_py():
    out = run("--version")
    assert out.returncode == 0, out
    assert out.stdout.startswith("vestnik 0."), out.stdout
    assert "Python 3." in out.stdout and "redis-py 5." in out.stdout


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_argument_of_every_command_has_help():
    top = parser()
    missing = [f"vestnik {a.dest}" for a in top._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    for name, sub in _subparsers(top).items():
        missing += [f"vestnik {name} {a.option_strings or a.dest}" for a in sub._actions
                    if not a.help or a.help == argparse.SUPPRESS]
    assert len(_subparsers(top)) >= 11
    assert missing == []


def test_help_lists_bench_apart_from_the_production_commands():
    out = run("--help")
    assert out.returncode == 0, out
    commands, _, development = out.stdout.partition("development commands")
    assert development, out.stdout
    for name in ("api", "center", "forwarder", "bridge", "wrap", "send", "publish"):
        assert f"\n    {name} " in commands, name
    assert "bench" not in commands
    assert "bench" in development
    assert "3 Redis unreachable" in " ".join(out.stdout.split())


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_taken_before_or_after_the_subcommand(tmp_path: Path, where: str):
    conf = tmp_path / "vestnik.toml"
    conf.write_text(f'secret = "{SECRET}"\n')
    env = {k: v for k, v in base_env("").items() if not k.startswith("VESTNIK_")}
    token = ["token", "--user", "1"]
    argv = ["--config", str(conf), *token] if where == "before" else [*token, "--config", str(conf)]
    out = run(*argv, env=env)
    assert out.returncode == 0, out
    assert out.stdout.count(".") == 2  # a JWT, signed with the file's secret

    conf.write_text(f'secret = "{SECRET}"\nsecert = "typo"\n')
    bad = run(*argv, env=env)
    assert bad.returncode == EXIT_INPUT
    assert one_line(bad) == f"vestnik: configuration error: config file {conf}: unknown key " \
                            "`secert`"


def test_unknown_command_is_one_line_naming_it():
    out = run("centre")
    assert out.returncode == EXIT_INPUT
    line = one_line(out)
    assert "invalid choice: 'centre'" in line and "vestnik --help" in line
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [
    ["publish", "vm", "--id", "1", "--data", '{"id": 1}'],
    ["send", "--alert", "disk", "--title", "full", "--recipients", "1"],
    ["resolve", "--alert", "disk", "--dedup-key", "web-1"],
    ["token", "--user", "1"],
])
def test_redis_unreachable_one_shot_commands_exit_3(argv: list[str]):
    env = dead_redis_env()
    out = run(*argv, env=env)
    assert out.returncode == EXIT_REDIS, out
    line = one_line(out)
    port = env["VESTNIK_REDIS_URL"].rsplit(":", 1)[1]
    assert line.startswith(f"vestnik {argv[0]}: Redis at redis://***@127.0.0.1:{port} "), line
    assert "did not answer" in line
    assert PASSWORD not in out.stderr + out.stdout
    assert out.stdout == ""  # no token, no stream id: nothing was done


@pytest.mark.parametrize("command", ["api", "center", "forwarder", "bridge"])
def test_redis_unreachable_at_start_of_a_long_running_part_exits_3(command: str):
    """They retry for a while (15 x VESTNIK_REDIS_TIMEOUT), then give up with one line."""
    args = [command, "--port", str(free_port())] if command == "api" else [command]
    out = run(*args, env=dead_redis_env(VESTNIK_KEYSPACE_PATTERNS="vm=vm:*"))
    assert out.returncode == EXIT_REDIS, out.stderr
    line = one_line(out)
    assert line.startswith(f"vestnik {command}: Redis at redis://***@127.0.0.1:"), line
    assert PASSWORD not in out.stderr


def test_wrap_redis_unreachable_exits_3(tmp_path: Path):
    alert = tmp_path / "alert.toml"
    alert.write_text('name = "a"\ncommand = ["true"]\n')
    out = run("wrap", str(alert), env=dead_redis_env())
    assert out.returncode == EXIT_REDIS, out.stderr
    assert "Traceback" not in out.stderr and PASSWORD not in out.stderr
    assert "Redis at redis://***@127.0.0.1:" in out.stderr


def test_api_on_a_port_in_use_exits_1_not_3(redis_url: str):
    """uvicorn's own startup-failure code is 3, which here means Redis."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = run("api", "--port", str(taken.getsockname()[1]), env=base_env(redis_url))
    assert out.returncode == EXIT_OTHER, out.stderr
    assert "Traceback" not in out.stderr and "address already in use" in out.stderr


def test_publish_bad_json_names_data(redis_url: str):
    out = run("publish", "vm", "--id", "1", "--data", '{"id": 1,', env=base_env(redis_url))
    assert out.returncode == EXIT_INPUT
    assert one_line(out).startswith("vestnik publish: --data is not valid JSON")


def test_publish_bad_topic_names_the_topic_and_writes_nothing(redis_url: str):
    out = run("publish", "vm/1", "--id", "1", "--data", "{}", env=base_env(redis_url))
    assert out.returncode == EXIT_INPUT
    assert one_line(out).startswith("vestnik publish: topic 'vm/1': topic must be 1-100 ")
    r = sync_redis.Redis.from_url(redis_url)
    try:
        assert r.keys("*") == []
    finally:
        r.close()


def test_token_for_an_unknown_user_is_refused_unless_asked(redis_url: str):
    env = base_env(redis_url)
    empty = run("token", "--user", "2", env=env)  # no user topic yet: no evidence, no check
    assert empty.returncode == 0, empty.stderr
    published = run("publish", "user", "--id", "1", "--data", '{"id": "1"}', env=env)
    assert published.returncode == 0, published.stderr

    out = run("token", "--user", "2", env=env)
    assert out.returncode == EXIT_INPUT
    line = one_line(out)
    assert line.startswith("vestnik token: --user '2': no such user in the `user` topic")
    assert "vn:topic:user" in line and "--any-user" in line
    assert out.stdout == ""
    assert run("token", "--user", "1", env=env).returncode == 0
    anyway = run("token", "--user", "2", "--any-user", env=env)
    assert anyway.returncode == 0 and anyway.stdout.count(".") == 2


@pytest.mark.parametrize("level", ["info", "debug"])
def test_unexpected_error_is_one_line_and_a_traceback_only_at_debug(tmp_path: Path,
                                                                     level: str):
    """A bug (here planted with sitecustomize) exits 1; its message is redacted too."""
    (tmp_path / "sitecustomize.py").write_text(
        "import vestnik.app.tokens as t\n"
        "def broken(config, *a, **k):\n"
        "    raise RuntimeError('boom with ' + config.secret)\n"
        "t.issue_token = broken\n")
    env = base_env("", VESTNIK_LOG_LEVEL=level, PYTHONPATH=str(tmp_path))
    del env["VESTNIK_REDIS_URL"]
    out = run("token", "--user", "1", env=env)
    assert out.returncode == EXIT_OTHER, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("vestnik token: unexpected error: RuntimeError: boom with ***")
    assert SECRET not in out.stderr
    if level == "debug":
        assert "Traceback" in out.stderr and "in broken" in out.stderr
    else:
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert "VESTNIK_LOG_LEVEL=debug" in last
