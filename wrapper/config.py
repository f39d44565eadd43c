"""`alert.toml`: the configuration of one wrapped alert, validated with msgspec.

Unknown keys are refused and every error names the key (`restart.policy: ...`), so a
typo fails at start instead of silently running an alert with defaults. `redis_url`
and `prefix` default to `VESTNIK_REDIS_URL` and `VESTNIK_PREFIX`; `load()` takes the
environment as a mapping so tests pass a dict.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from vestnik.streams import redis_url
from vestnik.streams.config import ConfigError

AlertName = Annotated[str, msgspec.Meta(min_length=1, max_length=200,
                                         pattern=r"^[\w.:-]+(?!\n)$")]
TopicName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,100}(?!\n)$")]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}\Z")
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]


class Restart(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """When and how fast to restart the alert after it ends."""

    policy: Literal["always", "on-failure", "never"] = "on-failure"
    backoff_min: PositiveSeconds = 1.0
    backoff_max: PositiveSeconds = 60.0
    # this many failed runs in a row, each shorter than `stable_after`, is a crash loop
    crash_loop: Annotated[int, msgspec.Meta(ge=1)] = 3
    # a run that lasts this long counts as a recovery: backoff and crash count reset
    stable_after: PositiveSeconds = 10.0


class AlertConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: AlertName
    command: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]],
                       msgspec.Meta(min_length=1)]
    topics: list[TopicName] = []
    cwd: str | None = None
    # what the alert gets besides PATH, HOME, LANG, TZ: a table of name = value, or a list
    # of names passed through from the wrapper's environment
    env: dict[str, str] | list[str] = {}
    restart: Restart = msgspec.field(default_factory=Restart)
    redis_url: str | None = None
    # seconds a Redis command may take (default VESTNIK_REDIS_TIMEOUT, else 2)
    redis_timeout: PositiveSeconds | None = None
    # a batch of notices counts as written once this many replicas have it (default
    # VESTNIK_REDIS_WAIT_REPLICAS, else 0): see docs/reliability.md, Sentinel
    redis_wait_replicas: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    prefix: str | None = None
    # the ingest streams notices spread over (default VESTNIK_INGEST_PARTITIONS, else 1):
    # the centers' count (streams.keys.Keys.ingest_partition)
    ingest_partitions: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    admins: list[str] = []
    grace: Seconds = 5.0
    max_line: Annotated[int, msgspec.Meta(ge=256)] = 1_048_576
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 10_000

    def __post_init__(self) -> None:
        if self.restart.backoff_max < self.restart.backoff_min:
            raise ValueError("restart.backoff_max: must be >= restart.backoff_min")
        names = self.env if isinstance(self.env, list) else list(self.env)
        for i, name in enumerate(names):
            where = f"env[{i}]" if isinstance(self.env, list) else f"env.{name}"
            if not ENV_NAME.match(name):
                raise ValueError(f"{where}: {name!r} is not a variable name "
                                 "([A-Za-z_][A-Za-z0-9_]*)")


def _key_of(err: msgspec.ValidationError) -> str:
    m = re.search(r" - at `\$\.?([^`]*)`$", str(err))
    return m.group(1) if m else ""


def parse(text: str, *, source: str = "alert.toml",
          env: Mapping[str, str] | None = None, base: Path | None = None) -> AlertConfig:
    """Validate TOML text; raises ConfigError naming the file and the key."""
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        cfg = msgspec.convert(raw, AlertConfig)
    except msgspec.ValidationError as e:
        reason = str(e).split(" - at ")[0]
        key = _key_of(e)
        if "unknown field" in reason or "missing required field" in reason:
            where = f"{key}: " if key else ""
            raise ConfigError(f"{source}: {where}{reason}") from None
        if not key and re.match(r"^\S+: ", reason):  # __post_init__ names the key itself
            raise ConfigError(f"{source}: {reason}") from None
        raise ConfigError(f"{source}: {key or '(top level)'}: {reason}") from None
    except ValueError as e:  # __post_init__
        raise ConfigError(f"{source}: {e}") from None
    if cfg.redis_url is None:
        cfg.redis_url = env.get("VESTNIK_REDIS_URL") or None
    if not cfg.redis_url:
        raise ConfigError(f"{source}: redis_url: required (or set VESTNIK_REDIS_URL)")
    try:
        redis_url.parse(cfg.redis_url)
    except redis_url.RedisUrlError as e:
        raise ConfigError(f"{source}: redis_url: {e}") from None
    if cfg.redis_wait_replicas is None:
        raw = env.get("VESTNIK_REDIS_WAIT_REPLICAS") or "0"
        if not raw.isdigit() or int(raw) > 100:
            raise ConfigError(f"{source}: redis_wait_replicas: VESTNIK_REDIS_WAIT_REPLICAS="
                              f"{raw[:40]!r} is not a number of replicas in [0, 100]")
        cfg.redis_wait_replicas = int(raw)
    if cfg.redis_timeout is None:
        raw = env.get("VESTNIK_REDIS_TIMEOUT") or "2"
        try:
            cfg.redis_timeout = float(raw)
        except ValueError:
            cfg.redis_timeout = -1.0
        if not 0 < cfg.redis_timeout <= 300:
            raise ConfigError(f"{source}: redis_timeout: VESTNIK_REDIS_TIMEOUT={raw!r} is not "
                              "a number of seconds in (0, 300]")
    if cfg.ingest_partitions is None:
        raw = env.get("VESTNIK_INGEST_PARTITIONS") or "1"
        if not raw.isdigit() or not 1 <= int(raw) <= 64:
            raise ConfigError(f"{source}: ingest_partitions: VESTNIK_INGEST_PARTITIONS="
                              f"{raw[:40]!r} is not a number of partitions in [1, 64]")
        cfg.ingest_partitions = int(raw)
    if cfg.prefix is None:
        cfg.prefix = env.get("VESTNIK_PREFIX") or "vn:"
    if not cfg.prefix:
        raise ConfigError(f"{source}: prefix: must not be empty")
    base = base or Path.cwd()
    cwd = Path(cfg.cwd) if cfg.cwd else base
    cfg.cwd = str(cwd if cwd.is_absolute() else (base / cwd).resolve())
    if not Path(cfg.cwd).is_dir():
        raise ConfigError(f"{source}: cwd: {cfg.cwd} is not a directory")
    return cfg


def load(path: str | Path, env: Mapping[str, str] | None = None) -> AlertConfig:
    """Read and validate an alert.toml; `cwd` is relative to the file's directory."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse(text, source=str(path), env=env, base=path.resolve().parent)
