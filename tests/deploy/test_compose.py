"""deploy/compose.yaml without a Docker engine: valid against the Compose specification
(check-jsonschema's copy of its schema), and ours in meaning: every Vestnik service runs a
real `vestnik` subcommand of the image the Dockerfile builds, is health-checked and
restarted, waits for a healthy Redis, and sets only settings that exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from support import ROOT
from vestnik.app.cli import COMMANDS, parser
from vestnik.streams.config import ENV_PREFIX, Config, env_name, load
from vestnik.wrapper.config import load as load_alert

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
# what load() reads besides the fields: the TOML file's path
KNOWN_ENV = {env_name(f) for f in Config.__struct_fields__} | {ENV_PREFIX + "CONFIG"}
SECRETS = {"VESTNIK_SECRET", "VESTNIK_SERVICE_TOKENS", "VESTNIK_SMTP_URL",
           "VESTNIK_TELEGRAM_TOKEN", "VESTNIK_SLACK_TOKEN", "VESTNIK_SLACK_WEBHOOK_URL",
           "VESTNIK_WEBHOOK_SECRET"}


def compose() -> dict[str, Any]:
    return YAML(typ="safe").load(COMPOSE.read_text())  # `<<` merges resolved


def vestnik_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if name != "redis"}


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of an env file (comments and blank lines skipped)."""
    pairs = (ln.split("=", 1) for ln in path.read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_valid_compose_file():
    result = validate(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_refuses_a_misspelt_key(tmp_path):
    """The schema check is live: a typo a Docker engine would refuse fails it too."""
    bad = tmp_path / "compose.yaml"
    bad.write_text(COMPOSE.read_text().replace("    healthcheck:", "    helthcheck:", 1))
    result = validate(bad)
    assert result.returncode != 0 and "helthcheck" in result.stdout


def test_the_processes_of_a_deployment():
    """One api, two centers (distinct consumers), one forwarder, the bridge, one alert."""
    commands = [parser().parse_args(svc["command"][1:]) for svc in vestnik_services().values()]
    assert sorted(a.command for a in commands) == sorted(
        ["api", "center", "center", "forwarder", "bridge", "wrap"])
    consumers = [a.consumer for a in commands if a.command == "center"]
    assert len(set(consumers)) == 2 and None not in consumers


@pytest.mark.parametrize("name", sorted(vestnik_services()))
def test_each_vestnik_service_is_checked_restarted_and_waits_for_redis(name):
    svc = vestnik_services()[name]
    assert svc["command"][0] == "vestnik"
    assert svc["command"][1] in COMMANDS
    assert svc["restart"] in ("always", "unless-stopped", "on-failure")
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["healthcheck"]["test"] == ["CMD", "vestnik", "health"]
    # one image for all, built from the repository's Dockerfile
    assert svc["image"] == "vestnik:local"
    assert (COMPOSE.parent / svc["build"]["context"]).resolve() == ROOT
    assert (ROOT / svc["build"]["dockerfile"]).is_file()
    env = svc.get("environment", {})
    # `vestnik health` probes VESTNIK_METRICS_PORT when set, else the api's own port
    assert ("VESTNIK_METRICS_PORT" in env) == (svc["command"][1] != "api")
    assert env.get("VESTNIK_REDIS_URL") == "redis://redis:6379/0"


def test_health_command_parses():
    if "health" not in COMMANDS:
        pytest.skip("`vestnik health` is issue 22's ops work, not in this tree yet")
    for svc in vestnik_services().values():
        assert parser().parse_args(svc["healthcheck"]["test"][2:]).command == "health"


def test_settings_exist_and_secrets_stay_in_the_env_file():
    """Every VESTNIK_* the file or the example env file sets is a Config field (a typo would
    be silently ignored by the process); secrets come only from the env file, whose example
    is a configuration Vestnik accepts."""
    example = DEPLOY / "vestnik.env.example"
    for name, svc in vestnik_services().items():
        assert svc["env_file"] == "vestnik.env"
        for key, value in svc.get("environment", {}).items():
            assert key.startswith(ENV_PREFIX) and key in KNOWN_ENV, f"{name}: {key}"
            assert key not in SECRETS, f"{name}: {key} belongs in vestnik.env"
            load({key: str(value)})  # a value the process accepts
    values = env_file(example)
    assert set(values) <= KNOWN_ENV and {"VESTNIK_SECRET", "VESTNIK_SERVICE_TOKENS"} <= set(values)
    config = load(values)
    assert config.secret and config.service_tokens
    assert "vestnik.env" in (DEPLOY / ".gitignore").read_text().split()  # never committed


def test_redis_keeps_an_append_only_file_and_never_evicts():
    redis = compose()["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    args = redis["command"]
    option = {args[i]: args[i + 1] for i in range(1, len(args) - 1, 2)}
    assert args[0] == "redis-server"
    assert option["--appendonly"] == "yes" and option["--appendfsync"] == "everysec"
    assert option["--maxmemory-policy"] == "noeviction"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in compose()["volumes"]
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_the_alert_toml_is_shipped_and_mounted_where_wrap_reads_it():
    (svc,) = [s for s in vestnik_services().values() if s["command"][1] == "wrap"]
    source, target, *_ = svc["volumes"][0].split(":")
    assert svc["command"][2] == target
    alert = load_alert(DEPLOY / source, env={"VESTNIK_REDIS_URL": "redis://redis:6379/0"})
    assert alert.name == "disk-usage"
    # its program ships in the package: `python -m vestnik.app.demo_alert`
    assert alert.command[1:] == ["-m", "vestnik.app.demo_alert"]
