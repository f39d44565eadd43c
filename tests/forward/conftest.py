"""Fixtures of the forward tests: a local HTTP server standing in for Telegram, Slack and
webhook receivers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fwd_support import HttpSink


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink().start()
    yield sink
    sink.stop()
