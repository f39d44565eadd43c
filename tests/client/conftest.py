"""The client tests' fixture: a factory of clients (sync or async, HTTP or Redis), each
closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from clients import close, make

from vestnik.client import AsyncClient, Client


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Client | AsyncClient]]:
    made: list[Client | AsyncClient] = []

    def open_one(*args: Any, **kwargs: Any) -> Client | AsyncClient:
        made.append(make(*args, **kwargs))
        return made[-1]

    yield open_one
    for client in made:
        await close(client)
