"""`python -m vestnik.wrapper alert.toml`: the wrapper on a box that has only Redis and this package
(`vestnik wrap alert.toml` is the same through the main CLI)."""

from __future__ import annotations

import argparse
import os
import sys

from vestnik.streams.config import ConfigError
from vestnik.streams.config import load as load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vestnik.wrapper", description=__doc__)
    p.add_argument("config", help="the alert's TOML file")
    p.add_argument("--metrics-port", type=int,
                   help="serve /healthz, /readyz and /metrics on this port "
                        "(default VESTNIK_METRICS_PORT; unset: none)")
    p.add_argument("--log-level", default=os.environ.get("VESTNIK_LOG_LEVEL", "info"),
                   help="debug, info, warning, error (default: VESTNIK_LOG_LEVEL or info)")
    p.add_argument("--log-format", choices=["text", "json"],
                   default=os.environ.get("VESTNIK_LOG_FORMAT", "text"),
                   help="one human line or one JSON object per record (VESTNIK_LOG_FORMAT)")
    args = p.parse_args(argv)
    from vestnik.streams import logs
    from vestnik.wrapper.config import load
    from vestnik.wrapper.supervisor import run

    try:
        if args.log_format not in ("text", "json"):  # from the environment: not checked yet
            raise ConfigError(f"VESTNIK_LOG_FORMAT: {args.log_format!r} is not text or json")
        settings = load_config()  # the box's VESTNIK_* (metrics port, host, secrets)
        logs.add_secrets(logs.config_secrets(settings))
        logs.setup(args.log_level, args.log_format)
        port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
        return run(load(args.config), metrics_port=port, metrics_host=settings.host)
    except ConfigError as e:
        print(f"vestnik wrap: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
