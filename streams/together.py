"""Calls made together go out in one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class PerIteration(Generic[T, R]):
    """Calls made in one loop iteration go out as one `flush(items)` (a pipeline, a script
    call): the first queues a flush for the next iteration, by when the others of its
    iteration (the requests that arrived together, the jobs a poll started, the jobs that
    ended together) have queued theirs. `flush` returns each item's result or exception,
    in order; an error of the flush itself reaches every caller."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R | BaseException]]]
                 ) -> None:
        self._flush_items = flush
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, fut))
        if len(self._queue) == 1:
            task = loop.create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        return await fut

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        try:
            results = await self._flush_items([item for item, _ in batch])
        except BaseException as e:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        for (_, fut), res in zip(batch, results, strict=True):
            if fut.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)
