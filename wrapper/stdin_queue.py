"""The bounded, coalescing queue in front of the alert's stdin.

Pending messages are keyed: an entity update replaces the pending one of the same
`(topic, id)` in place (latest wins, position kept), a settings list replaces the
pending settings list. So an alert that stops reading costs at most `size` pending
messages; when that many distinct keys are pending, `put` waits, the notify watcher
stops reading Redis, and the topic stream itself holds the rest.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Hashable

from vestnik.wrapper.protocol import Outgoing


class StdinQueue:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Outgoing] = OrderedDict()
        self._seq = 0
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self.coalesced = 0
        self.waits = 0

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, msg: Outgoing, key: Hashable | None = None) -> None:
        """Queue `msg`; a message with the `key` of a pending one replaces it."""
        items = self._items
        if key is not None and key in items:
            items[key] = msg
            self.coalesced += 1
            return
        if len(items) >= self.size:
            self.waits += 1
            while len(items) >= self.size:
                self._not_full.clear()
                await self._not_full.wait()
            if key is not None and key in items:
                items[key] = msg
                self.coalesced += 1
                return
        if key is None:
            self._seq += 1
            key = ("", self._seq)
        items[key] = msg
        self._not_empty.set()

    async def get_batch(self, limit: int) -> list[Outgoing]:
        """Wait for at least one message; take up to `limit`, oldest first."""
        items = self._items
        while not items:
            self._not_empty.clear()
            await self._not_empty.wait()
        out: list[Outgoing] = []
        popitem = items.popitem
        for _ in range(min(limit, len(items))):
            out.append(popitem(last=False)[1])
        self._not_full.set()
        return out
