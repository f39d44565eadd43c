"""Vestnik: a self-hosted notification service for products that already run on Redis.

The repository keeps its parts side by side (`app/`, `streams/`, `wrapper/`); the wheel maps
them under this one import package, so installing Vestnik adds `vestnik` to a user's
site-packages and nothing else: `vestnik.streams` (the core, no HTTP), `vestnik.app` (the
HTTP api, the CLI, the bench) and `vestnik.wrapper` (the alert wrapper, which needs only
Redis).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vestnik")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0"
