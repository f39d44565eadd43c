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
    p.add_argument("--metrics-port", type=int,
                   help="serve /healthz, /readyz and /metrics on this port "
                        "(default VESTNIK_METRICS_PORT; unset: none)")
    p.add_argument("--log-level", default=os.environ.get("VESTNIK_LOG_LEVEL", "info"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vestnik.streams.config import load as load_settings
    from vestnik.wrapper.config import load
    from vestnik.wrapper.supervisor import run

    try:
        settings = load_settings()
        port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
        return run(load(args.config), metrics_port=port, metrics_host=settings.host)
    except ConfigError as e:
        print(f"vestnik wrap: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
