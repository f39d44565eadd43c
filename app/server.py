"""The uvicorn server every Vestnik HTTP process runs (uvloop + httptools).

uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which kills the
process before our own cleanup (the private Redis, other parts) and makes a
clean stop exit with -15. We handle the signals on the loop instead and return.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette

from vestnik.streams.config import Config


class Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: object) -> None:
        """Also end open SSE streams at once, so shutdown does not wait on them."""
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        ctx = getattr(getattr(self.config.app, "state", None), "ctx", None)
        for part in getattr(ctx, "parts", {}).values():
            close = getattr(part, "close_subscribers", None)
            if close is not None:
                close()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM)
        for sig in sigs:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)


def make_server(app: Starlette, config: Config) -> Server:
    config = uvicorn.Config(
        app, host=config.host, port=config.port, loop="none", http="httptools",
        log_level=config.log_level, timeout_graceful_shutdown=3, access_log=False,
        lifespan="on", backlog=4096,
        # uvicorn's loggers propagate to the root handler of streams.logs.setup: one format
        log_config=None,
    )
    return Server(config)


def run(main: object) -> None:
    """Run a coroutine on uvloop (the fastest loop here), falling back to asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]
