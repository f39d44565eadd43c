"""Vestnik configuration: one typed Struct, from `VESTNIK_*` variables and an optional TOML file.

The environment wins over the file. Every value is validated when the process
starts, so a typo fails with the key's name instead of surfacing hours later.
`load()` takes the environment as a mapping: tests pass a dict, nothing patches
`os.environ`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from vestnik.streams import redis_url
from vestnik.streams.keys import MAX_PARTITIONS

ENV_PREFIX = "VESTNIK_"

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the key."""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Every knob of every Vestnik process. Field `x` is env `VESTNIK_X` and TOML key `x`."""

    redis_url: str | None = None
    # Sentinel: the sentinels (`host:port`) and the primary's name; or a Cluster's seed
    # nodes. Each is the same as a `redis+sentinel://` / `redis+cluster://` redis_url
    redis_sentinels: list[str] = []
    redis_master: str | None = None
    redis_cluster: list[str] = []
    # ingest answers (HTTP 202, the wrapper's write) only once this many replicas have the
    # notice (Redis WAIT); fewer in time: 503 + Retry-After, nothing reported accepted
    redis_wait_replicas: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    # Redis Cluster growth: forward jobs spread over this many arq queues (`{fwd-N}` hash
    # tags, one slot each); every process must agree. A forwarder works the partitions in
    # `forward_work` (empty: all of them).
    forward_partitions: Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTITIONS)] = 1
    forward_work: list[Annotated[int, msgspec.Meta(ge=0, lt=MAX_PARTITIONS)]] = []
    # the ingest stream spread over this many streams (1: `vn:notices` alone, the name
    # products XADD to); every writer and center must agree
    ingest_partitions: Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTITIONS)] = 1
    # seconds any Redis command may take (blocking reads: their BLOCK plus this)
    redis_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 2.0
    prefix: str = "vn:"
    secret: str | None = None
    service_tokens: list[str] = []
    jwt_audience: str | None = None
    jwt_issuer: str | None = None  # `iss` required and checked when set
    jwt_leeway: NonNegative = 30.0  # seconds of clock skew allowed on exp/nbf/iat
    jwt_max_ttl: Positive = 30 * 86400  # seconds: a longer-lived user token is refused
    host: str = "127.0.0.1"
    port: Port = 8080
    data_dir: str = ".vestnik"
    # notifier
    topic_maxlen: Positive = 100_000
    keyspace_patterns: dict[str, str] = {}
    hydrate: dict[str, str] = {}
    hydrate_hosts: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "localhost"])
    topic_acl: dict[str, list[str]] = {}
    sse_ping: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    cors_origins: list[str] = []
    max_body: Positive = 1_048_576
    sse_per_user: Positive = 32  # live streams per user per api process; more close the oldest
    # write requests per token per api process: `<n>/s` (or /m, /h) and a burst, or `off`
    rate: str = "20000/s"
    rate_burst: Positive = 40_000
    # notice center
    forward_after: NonNegative = 300.0
    center_batch: Positive = 250
    claim_idle_ms: Positive = 30_000
    # an incident's claim (`vn:dedup:<scope>`) is kept this long after its last repeat
    dedup_window: NonNegative = 604_800.0
    feed_max: Positive = 1000
    dead_maxlen: Positive = 100_000
    max_recipients: Positive = 10_000  # a notice's own `recipients` (not settings')
    # message sender
    smtp_url: str | None = None
    smtp_from: str | None = None
    telegram_api: str = "https://api.telegram.org"
    telegram_token: str | None = None
    slack_api: str = "https://slack.com/api"
    slack_token: str | None = None
    slack_webhook_url: str | None = None
    webhook_secret: str | None = None
    # CIDRs or host names that data-given webhook/Slack URLs may reach although private
    egress_allow: list[str] = []
    send_attempts: Positive = 5
    send_backoff: NonNegative = 1.0
    log_level: str = "info"
    # `text` (one human line per record) or `json` (one JSON object per line), every process
    log_format: Literal["text", "json"] = "text"
    # /healthz, /readyz and /metrics of `center`, `forwarder`, `bridge` and `wrap` on this
    # port (of `host`); unset: no such listener (the api serves them on its own port)
    metrics_port: Port | None = None

    def __post_init__(self) -> None:
        if not self.prefix:
            raise ValueError("prefix must not be empty")
        if self.redis_sentinels or self.redis_cluster:
            if self.redis_url is not None:
                raise ValueError("redis_url: set it or redis_sentinels/redis_cluster, not both")
            try:
                self.redis_url = redis_url.from_parts(
                    sentinels=self.redis_sentinels, primary=self.redis_master,
                    cluster=self.redis_cluster)
            except redis_url.RedisUrlError as e:
                raise ValueError(str(e)) from None
        elif self.redis_url is not None:
            try:
                redis_url.parse(self.redis_url)
            except redis_url.RedisUrlError as e:
                raise ValueError(f"redis_url {e}") from None
        if self.smtp_url is not None and not re.match(r"^smtps?://", self.smtp_url):
            raise ValueError("smtp_url must start with smtp:// or smtps://")
        for item in self.egress_allow:  # a CIDR typo must not become a host name
            if "/" in item and not _is_network(item):
                raise ValueError(f"egress_allow: {item!r} is not a CIDR (VESTNIK_EGRESS_ALLOW)")
        if "*" in self.cors_origins:
            raise ValueError("cors_origins must list origins, not `*`: the API allows "
                             "credentials (the vestnik_token cookie), so any site could use them")
        parse_rate(self.rate)
        for p in self.forward_work:
            if p >= self.forward_partitions:
                raise ValueError(f"forward_work: partition {p} is not below "
                                 f"forward_partitions ({self.forward_partitions})")


RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(raw: str) -> float | None:
    """`20000/s` → 20000.0 requests per second; `off` → None (no limit)."""
    if raw.strip().lower() == "off":
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*", raw)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"rate must look like `20000/s` (or /m, /h) or `off`, got {raw!r}")
    return float(m.group(1)) / RATE_UNITS[m.group(2)]


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


_FIELDS = {f.name: f for f in msgspec.structs.fields(Config)}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _split_pairs(key: str, raw: str) -> dict[str, str]:
    """`a=b,c=d` → {'a': 'b', 'c': 'd'} (the env form of a TOML table)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{env_name(key)}: expected name=value pairs, got {part!r}")
        out[name.strip()] = value.strip()
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Env values are strings; lists are comma-separated and tables are `k=v` pairs."""
    out: dict[str, Any] = {}
    for key, field in _FIELDS.items():
        raw = env.get(env_name(key))
        if raw is None:
            continue
        default = field.default
        if default is msgspec.NODEFAULT and field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        if isinstance(default, list):
            out[key] = [p.strip() for p in raw.split(",") if p.strip()]
        elif key == "topic_acl":
            pairs = _split_pairs(key, raw)
            out[key] = {t: [r for r in v.split("|") if r] for t, v in pairs.items()}
        elif isinstance(default, dict):
            out[key] = _split_pairs(key, raw)
        else:
            out[key] = raw
    return out


def _key_of(err: msgspec.ValidationError) -> str:
    m = re.search(r"at `\$\.([A-Za-z_]+)", str(err))
    if m:
        return m.group(1)
    m = re.match(r"([a-z_]+) ", str(err))  # __post_init__ messages start with the key
    return m.group(1) if m and m.group(1) in _FIELDS else ""


def load(env: Mapping[str, str] | None = None, path: str | Path | None = None) -> Config:
    """Build the Config from the TOML file at `path` (if any) overlaid with `env`.

    Raises ConfigError naming the env variable or TOML key and the reason.
    """
    env = os.environ if env is None else env
    path = path or env.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = {}
    source = "environment"
    if path:
        try:
            merged.update(tomllib.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except (OSError, UnicodeDecodeError) as e:  # a directory, no permission, not UTF-8
            raise ConfigError(f"config file {path}: cannot read it ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        source = f"{path} or environment"
    env_values = _from_env(env)
    merged.update(env_values)
    try:
        # strict=False: env values are strings ("8080", "true") and must coerce
        return msgspec.convert(merged, Config, strict=False)
    except msgspec.ValidationError as e:
        key = _key_of(e)
        where = env_name(key) if key in env_values else (f"{key} (in {path})" if key and path
                                                           else key or source)
        reason = str(e).split(" - at ")[0]
        if "Object contains unknown field" in reason:  # only the file can have unknown keys
            unknown = reason.rsplit(" ", 1)[-1]
            raise ConfigError(f"config file {path}: unknown key {unknown}") from None
        raise ConfigError(f"{where}: {reason}") from None
    except ValueError as e:  # from __post_init__
        raise ConfigError(f"{source}: {e}") from None
