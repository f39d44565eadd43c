"""Where Redis is: one URL names a single server, a Sentinel-watched primary or a Cluster.

Every Vestnik process takes one string (`VESTNIK_REDIS_URL`, an alert's `redis_url`) and
passes it on unchanged, so a deployment grows from one Redis to Sentinel or Cluster by
changing that string alone:

- `redis://[user:password@]host:port/db`, `rediss://…`, `unix:///path?db=0`: one server;
- `redis+sentinel://[user:password@]host:port[,host:port…]/<primary name>[/db]`: the
  primary the sentinels at those addresses name, followed across failovers (`rediss+…`:
  TLS to the data nodes; `?sentinel_password=`: the sentinels' own AUTH);
- `redis+cluster://[user:password@]host:port[,host:port…]`: a Redis Cluster, found from any
  of those nodes (`rediss+…`: TLS).

`VESTNIK_REDIS_SENTINELS` + `VESTNIK_REDIS_MASTER` and `VESTNIK_REDIS_CLUSTER` are the same
addresses spelled as separate settings (`from_parts`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

Kind = Literal["single", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False), "rediss": ("single", True), "unix": ("single", False),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}
_NODE = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]{1,253})):(\d{1,5})$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")  # a Sentinel primary's name
SENTINEL_PORT = 26379


class RedisUrlError(ValueError):
    """The Redis address cannot be used; the message says which part and why (never the
    password)."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A parsed Redis URL. `nodes`: the sentinels (sentinel), the seed nodes (cluster);
    empty for a single server, whose `url` redis-py reads itself."""

    kind: Kind
    url: str
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    primary: str = ""  # the Sentinel name of the primary
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def scheme_of(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def is_redis_url(url: str) -> bool:
    return scheme_of(url) in _SCHEMES


def parse(url: str) -> RedisAddress:
    """`url` split into what a client needs; RedisUrlError names the bad part."""
    scheme = scheme_of(url)
    if scheme not in _SCHEMES:
        raise RedisUrlError("must start with redis://, rediss://, unix://, redis+sentinel:// "
                            "or redis+cluster:// (rediss+… for TLS)")
    kind, tls = _SCHEMES[scheme]
    if kind == "single":
        return RedisAddress("single", url, tls, db=_single_db(url))
    rest = url.split("://", 1)[1]
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    if "?" in netloc:  # no path: `redis+cluster://h:1?x=y`
        netloc, _, query = netloc.partition("?")
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(part, kind) for part in hosts.split(","))
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - {"sentinel_password"})
    if unknown:
        raise RedisUrlError(f"unknown parameter {unknown[0]!r} (only sentinel_password)")
    parts = [p for p in path.split("/") if p]
    if kind == "cluster":
        if parts:
            raise RedisUrlError("a cluster URL has no path: a cluster has one database (0)")
        return RedisAddress("cluster", url, tls, nodes, username=username, password=password)
    if not parts or not _NAME.match(parts[0]):
        raise RedisUrlError("a sentinel URL names the primary after the nodes: "
                            "redis+sentinel://host:26379,host:26380/<name>[/db]")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise RedisUrlError("after the primary's name comes only the database number")
    return RedisAddress("sentinel", url, tls, nodes, unquote(parts[0]),
                        int(parts[1]) if len(parts) == 2 else 0, username, password,
                        params.get("sentinel_password") or None)


def _single_db(url: str) -> int:
    """The database of a redis:// (path `/N`) or unix:// (`?db=N`) URL, as redis-py reads it."""
    try:
        u = urlsplit(url)
    except ValueError:
        return 0
    db = parse_qs(u.query).get("db", [""])[-1]
    path = u.path.strip("/") if u.scheme != "unix" else ""
    for text in (db, path):
        if text.isdigit():
            return int(text)
    return 0


def _node(text: str, kind: Kind) -> tuple[str, int]:
    m = _NODE.match(text.strip())
    if not m:
        raise RedisUrlError(f"{kind} node {text.strip()[:100]!r} is not host:port")
    port = int(m.group(3))
    if not 0 < port < 65536:
        raise RedisUrlError(f"{kind} node port {port} is out of range")
    return (m.group(1) or m.group(2), port)


def from_parts(*, sentinels: list[str], primary: str | None, cluster: list[str]) -> str:
    """The URL `VESTNIK_REDIS_SENTINELS` + `VESTNIK_REDIS_MASTER` or `VESTNIK_REDIS_CLUSTER`
    stand for (a sentinel without a port: 26379)."""
    if sentinels and cluster:
        raise RedisUrlError("redis_sentinels and redis_cluster: set one, not both")
    if sentinels:
        if not primary:
            raise RedisUrlError("redis_master: required with redis_sentinels "
                                "(the name the sentinels monitor)")
        hosts = ",".join(s if _NODE.match(s) else f"{s}:{SENTINEL_PORT}"
                         for s in (s.strip() for s in sentinels))
        url = f"redis+sentinel://{hosts}/{primary}"
    else:
        url = f"redis+cluster://{','.join(cluster)}"
    parse(url)  # the same errors as a URL given whole
    return url


def redacted(url: str) -> str:
    """`url` fit for a log line: user and password (also `?password=`, `?sentinel_password=`)
    replaced by `***`."""
    if scheme_of(url) in _SCHEMES and _SCHEMES[scheme_of(url)][0] != "single":
        scheme, _, rest = url.partition("://")
        netloc, slash, tail = rest.partition("/")
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        if "password" in tail.lower() or "password" in netloc.lower():
            tail = tail.partition("?")[0] + "?***" if "?" in tail else tail
            if "?" in netloc:
                netloc = netloc.partition("?")[0] + "?***"
        return f"{scheme}://{netloc}{slash}{tail}"
    try:
        u = urlsplit(url)
        if u.password is not None or u.username is not None:
            host = u.hostname or ""
            host = f"[{host}]" if ":" in host else host
            port = f":{u.port}" if u.port else ""
            u = u._replace(netloc=f"***@{host}{port}")
        if "password" in u.query.lower():
            u = u._replace(query="***")
        return urlunsplit(u)
    except ValueError:  # a bad port: say nothing about it rather than leak it
        return "(redis url)"
