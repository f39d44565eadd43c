"""`python -m vestnik.wrapper alert.toml`: the wrapper on a box that has only Redis and this package
(`vestnik wrap alert.toml` is the same through the main CLI)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from vestnik.streams.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vestnik.wrapper", description=__doc__)
    p.add_argument("config", help="the alert's TOML file")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--log-level", default=os.environ.get("VESTNIK_LOG_LEVEL", "info"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vestnik.wrapper.config import load
    from vestnik.wrapper.supervisor import run

    try:
        return run(load(args.config), metrics_port=args.metrics_port)
    except ConfigError as e:
        print(f"vestnik wrap: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
