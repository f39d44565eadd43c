"""Redis black-holed: a TCP proxy between Vestnik and Redis stops carrying the bytes of
the connections it holds (as a NAT or firewall that forgot them: no reset, no answer),
while new connections pass. A pub/sub connection read with no timeout must notice the
silence within about a ping and VESTNIK_REDIS_TIMEOUT, and the user hub must reconnect,
tell its SSE connections to resync, and deliver live pushes again."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from vestnik.streams.center import UserHub
from vestnik.streams.keys import Keys
from vestnik.streams.redis import PUBSUB_PING_EVERY, reader
from vestnik.streams.schemas import LiveNotice, encode_live


class BlackHole:
    """127.0.0.1 proxy to Redis; `swallow()` black-holes every connection open now (their
    bytes are read and dropped, both ways, for good); later connections pass."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.live: list[dict[str, bool]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> BlackHole:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    def swallow(self) -> None:
        for state in self.live:
            state["swallowed"] = True

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        state = {"swallowed": False}
        self.live.append(state)
        for src, dst in ((r, uw), (ur, w)):
            task = asyncio.create_task(self._pump(src, dst, state))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    state: dict[str, bool]) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if not state["swallowed"]:
                    dst.write(data)
                    await dst.drain()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def hole(redis_server):
    proxy = await BlackHole(redis_server.port).start()
    yield proxy
    await proxy.close()


async def test_a_silent_pubsub_connection_fails_its_blocked_read(hole):
    timeout = 0.5
    client = reader(hole.url, name="t-hole", timeout=timeout, block=None)
    ps = client.pubsub()
    try:
        await ps.subscribe("t:chan")
        assert (await ps.get_message(timeout=5))["type"] == "subscribe"
        hole.swallow()
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(RedisConnectionError):
            # bounded: without the watchdog this read waits for TCP keepalive (hours)
            await asyncio.wait_for(ps.get_message(timeout=None), 15)
        waited = asyncio.get_running_loop().time() - t0
        assert waited < 2 * (PUBSUB_PING_EVERY + timeout) + 1, waited
    finally:
        await ps.aclose()
        await client.aclose()


async def test_user_hub_reconnects_and_resyncs_when_its_connection_goes_silent(hole,
                                                                             redis_url):
    keys = Keys("vn:")
    hub = UserHub(hole.url, keys, confirm_timeout=3.0)
    await hub.start()
    r = Redis.from_url(redis_url)
    try:
        sub = await hub.subscribe("1")
        first = await asyncio.wait_for(sub.get(), 5)
        assert first is not None and first.event == "resync"  # the hub connected
        hole.swallow()
        # the hub finds the silence (ping + 2 s), reconnects through the proxy, resyncs
        item = await asyncio.wait_for(sub.get(), 15)
        assert item is not None and item.event == "resync"
        for _ in range(100):  # bounded: the new connection's SUBSCRIBE may still be on its way
            if await r.publish(keys.live("1"), encode_live(LiveNotice(7, '{"id":"n7"}'))) == 1:
                break
            await asyncio.sleep(0.05)
        item = await asyncio.wait_for(sub.get(), 5)
        assert item is not None and item.event == "notice" and item.seq == 7
    finally:
        await hub.stop()
        await r.aclose()
