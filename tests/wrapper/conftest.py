"""Fixtures of the wrapper tests: `wrap(path)` starts `vestnik wrap` with a metrics port."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import Proc
from vestnik.streams.redis_server import free_port


@dataclass
class Wrap:
    proc: Proc
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


@pytest.fixture
def wrap(start_proc: Callable[..., Proc]) -> Callable[..., Wrap]:
    def start(config: Path, **env: str) -> Wrap:
        port = free_port()
        proc = start_proc("wrap", str(config), "--metrics-port", str(port), **env)
        return Wrap(proc, port)

    return start
