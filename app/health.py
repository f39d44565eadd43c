"""`vestnik health`: one readiness probe for every container (Docker HEALTHCHECK).

It runs every few seconds in each container, so it uses only the stdlib's urllib and
asks the process next to it: the ops listener on VESTNIK_METRICS_PORT when that is set
(center, forwarder, bridge, wrap), else the api's own port.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from vestnik.streams.config import Config, ConfigError

ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}
# no proxy from the environment: the process asked is in this container
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def readyz_url(config: Config) -> str:
    """/readyz of this container's process: the metrics port when set, else the api's."""
    host = "127.0.0.1" if config.host in ANY_ADDRESS else config.host
    host = f"[{host}]" if ":" in host else host
    port = config.metrics_port if config.metrics_port is not None else config.port
    return f"http://{host}:{port}/readyz"


def shown(url: str) -> str:
    """`url` without user, password and query (a token may be in either), for the one
    line on stderr."""
    u = urlsplit(url)
    return urlunsplit(u._replace(netloc=u.netloc.rpartition("@")[2], query=""))


def _not_ok(body: bytes) -> str:
    """The checks of a Health answer that are not "ok", as `name: reason, ...`."""
    try:
        checks = json.loads(body).get("checks", {})
        return ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """GET `url`: (True, "") on 200, else (False, why) in one line."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"--url: must be an http:// or https:// URL, not {shown(url)!r}")
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            if r.status == 200:
                return True, ""
            return False, f"{shown(url)} answered {r.status}"
    except urllib.error.HTTPError as e:
        detail = _not_ok(e.read())
        return False, f"{shown(url)} answered {e.code}" + (f" ({detail})" if detail else "")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        return False, f"{shown(url)} did not answer ({reason})"
