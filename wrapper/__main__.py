"""`python -m vestnik.wrapper alert.toml`: the wrapper on a box that has only Redis and this package
(`vestnik wrap alert.toml` is the same through the main CLI)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from vestnik.streams.config import ConfigError
from vestnik.streams.config import load as load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vestnik.wrapper", description=__doc__)
    p.add_argument("config", help="the alert's TOML file")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
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
        with contextlib.suppress(ConfigError):  # the box's VESTNIK_* secrets, if it has any
            logs.add_secrets(logs.config_secrets(load_config()))
        logs.setup(args.log_level, args.log_format)
        return run(load(args.config), metrics_port=args.metrics_port)
    except ConfigError as e:
        print(f"vestnik wrap: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
