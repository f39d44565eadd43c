"""The Apprise channel through the forwarder: Apprise's own `json://` plugin posting to a
local HTTP receiver, for a user's `apprise_urls` and a setting's `apprise.urls` (one send
and retry per URL), a refused private target, and a receiver that never answers (a retry,
while the forwarder's loop goes on with other sends)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fwd_support import HttpSink, deliveries, store_notice, store_user
from redis.asyncio import Redis

from support import base_env, eventually
from vestnik.streams.channels import Channels, available, user_addresses
from vestnik.streams.config import Config, load
from vestnik.streams.forward import (
    BROADCAST,
    ForwardJob,
    add_forward_jobs,
    forward_jobs_for,
    run_forwarder,
)
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import Keys
from vestnik.streams.schemas import ChannelMap, ChannelTarget, Notice, User

pytest.importorskip("apprise")

TOKEN = "tok-7f3a9c1e5b"  # what an Apprise URL carries: never in a record


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink(respond=lambda req: (200, {"ok": True})).start()
    yield sink
    sink.stop()


class Silent:
    """A TCP server that accepts and never answers; `close()` drops every connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)

    def drop(self) -> None:
        """Close the connections accepted so far (their sends end), keep listening."""
        for c in list(self.conns):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def close(self) -> None:
        self.sock.close()
        self.drop()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def make_settings(redis_url: str, **env: str) -> Config:
    return load(base_env(redis_url, **{"VESTNIK_SEND_BACKOFF": "0.05",
                                       "VESTNIK_EGRESS_ALLOW": "127.0.0.1/32", **env}))


def notice(**kw: Any) -> Notice:
    base: dict[str, Any] = dict(id=ulid(), alert="disk", title="Disk 95% on web-1",
                                body="Only 5% left on /var.", severity="critical",
                                recipients=["1"], channels={"apprise": {}},
                                created_at=now_ms(), link="https://panel.example/vm/42")
    base.update(kw)
    base["channels"] = ChannelMap.decode(base["channels"])
    return Notice(**base)


async def schedule(redis: Redis, keys: Keys, *jobs: ForwardJob) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        add_forward_jobs(pipe, keys, list(jobs))
        await pipe.execute()


async def burst(settings: Config) -> None:
    await asyncio.wait_for(run_forwarder(settings, burst=True), 60)


def json_url(sink: HttpSink, path: str) -> str:
    return f"json://user:{TOKEN}@127.0.0.1:{sink.port}/{path}"


async def test_a_users_apprise_urls_get_the_notice(redis: Redis, keys: Keys, redis_url,
                                                   http_sink: HttpSink):
    settings = make_settings(redis_url)
    await store_user(redis, keys, User(id="1", apprise_urls=[json_url(http_sink, "alice"),
                                                             json_url(http_sink, "phone")]))
    n = notice()
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    await burst(settings)
    assert sorted(r.path for r in http_sink.requests) == ["/alice", "/phone"]
    body = http_sink.requests[0].json()
    assert body["title"] == "Disk 95% on web-1" and body["type"] == "failure"
    assert body["message"] == "Only 5% left on /var.\nhttps://panel.example/vm/42"
    (d,) = await deliveries(redis, keys, n.id)
    assert (d.uid, d.channel, d.status) == ("1", "apprise", "sent")
    assert d.detail == "json://***: sent; json://***: sent"


async def test_a_settings_urls_are_one_send_each_retried_alone(redis: Redis, keys: Keys,
                                                               redis_url,
                                                               http_sink: HttpSink):
    """The shared URLs get the `*` job; one answering 500 is retried and fails on its own,
    the other is sent once."""
    http_sink.respond = lambda req: (500, b"down") if req.path == "/down" else (200, b"{}")
    settings = make_settings(redis_url, VESTNIK_SEND_ATTEMPTS="3")
    n = notice(recipients=["1"], channels={"apprise": {
        "users": ["nobody"], "urls": [json_url(http_sink, "ops"), json_url(http_sink, "down")]}})
    addresses = user_addresses(available())
    jobs = forward_jobs_for(n, [User(id="1")], addresses, 0)
    assert [j.uid for j in jobs] == [BROADCAST]
    await store_notice(redis, keys, n)
    await schedule(redis, keys, *jobs)
    await burst(settings)
    paths = [r.path for r in http_sink.requests]
    assert paths.count("/ops") == 1 and paths.count("/down") == 3
    log = await deliveries(redis, keys, n.id)
    assert sorted((d.uid, d.status) for d in log) == [
        ("*", "failed"), ("*", "retrying"), ("*", "retrying"), ("*", "sent")]
    assert all(d.channel == "apprise" for d in log)
    down = [d for d in log if d.status != "sent"]
    assert all("json://***: not delivered" in d.detail for d in down)


async def test_a_private_target_is_refused_once(redis: Redis, keys: Keys, redis_url,
                                                http_sink: HttpSink):
    settings = load(base_env(redis_url, VESTNIK_SEND_ATTEMPTS="3"))  # no egress_allow
    await store_user(redis, keys, User(id="1", apprise_urls=[json_url(http_sink, "me")]))
    n = notice(channels={"apprise": {"urls": [
        f"json://localhost:{http_sink.port}/shared"]}})
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()),
                   ForwardJob(n.id, BROADCAST, now_ms()))
    await burst(settings)
    assert http_sink.requests == []
    log = sorted(await deliveries(redis, keys, n.id), key=lambda d: d.uid)
    assert [(d.uid, d.attempt, d.status) for d in log] == [("*", 1, "failed"),
                                                            ("1", 1, "failed")]
    assert "json://***: egress refused: 127.0.0.1 is loopback" in log[0].detail
    assert "json://***: egress refused: 127.0.0.1 is loopback" in log[1].detail


async def test_a_receiver_that_never_answers_is_a_retry_and_the_loop_goes_on(
        redis: Redis, keys: Keys, redis_url, http_sink: HttpSink, silent: Silent,
        monkeypatch: pytest.MonkeyPatch):
    """While an Apprise send waits on a silent receiver (in the channel's thread), the
    forwarder takes another job and sends it; the stuck send times out into a retry."""
    from vestnik.streams.channels import apprise as apprise_channel

    monkeypatch.setattr(apprise_channel, "READ_TIMEOUT_S", 4.0)
    settings = make_settings(redis_url, VESTNIK_SEND_ATTEMPTS="1")
    stuck = notice(channels={"apprise": {
        "urls": [f"json://127.0.0.1:{silent.port}/never"]}})
    other = notice(channels={"webhook": {"url": f"{http_sink.base}/hook"}})
    await store_notice(redis, keys, stuck)
    await store_notice(redis, keys, other)
    await schedule(redis, keys, ForwardJob(stuck.id, BROADCAST, now_ms()))
    forwarder = asyncio.create_task(run_forwarder(settings))
    try:
        await eventually(lambda: _true(len(silent.conns) == 1), timeout=20,
                         what="the apprise send connected")
        await schedule(redis, keys, ForwardJob(other.id, BROADCAST, now_ms()))
        await eventually(lambda: _true(len(http_sink.requests) == 1), timeout=20,
                         what="the other job's webhook")
        assert await deliveries(redis, keys, stuck.id) == []  # still waiting meanwhile
        (d,) = await eventually(lambda: deliveries(redis, keys, stuck.id), timeout=30,
                                what="the stuck send's record")
        assert (d.channel, d.status) == ("apprise", "failed")  # one attempt: retry -> failed
        assert d.detail.endswith(": json://***: not delivered (Apprise said no)")
    finally:
        forwarder.cancel()
        await asyncio.gather(forwarder, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


async def test_sends_wait_for_one_of_the_channels_threads(redis_url, silent: Silent):
    """The pool is bounded: a third send to a silent receiver waits for one of two threads,
    and goes once one is free."""
    from vestnik.streams.channels.apprise import AppriseChannel
    from vestnik.streams.egress import Egress

    ch = AppriseChannel(Egress(["127.0.0.1/32"]), workers=2)
    url = f"json://127.0.0.1:{silent.port}/x"
    sends = [asyncio.create_task(ch.send(notice(), User(id=str(i), apprise_urls=[url]),
                                         ChannelTarget())) for i in range(3)]
    try:
        await eventually(lambda: _true(len(silent.conns) == 2), timeout=20)
        await asyncio.sleep(0.5)
        assert len(silent.conns) == 2 and not any(t.done() for t in sends)
        silent.drop()  # the first two end (no answer: retry); the third gets a thread
        await eventually(lambda: _true(len(silent.conns) == 3), timeout=20)
        silent.drop()
        results = await asyncio.wait_for(asyncio.gather(*sends), 30)
        assert [r.status for r in results] == ["retry"] * 3
    finally:
        for t in sends:
            t.cancel()
        await ch.aclose()


async def test_without_the_package_the_channel_is_not_configured(
        redis: Redis, keys: Keys, redis_url, http_sink: HttpSink,
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "apprise", None)  # `import apprise` fails
    settings = make_settings(redis_url)
    channels = Channels.from_settings(settings)
    try:
        assert "apprise" in channels.classes and channels.get("apprise") is None
        assert {"email", "telegram", "slack", "webhook"} <= set(channels.classes)
    finally:
        await channels.aclose()
    await store_user(redis, keys, User(id="1", apprise_urls=[json_url(http_sink, "a")]))
    n = notice(channels={"apprise": {}, "webhook": {"url": f"{http_sink.base}/hook"}})
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()),
                   ForwardJob(n.id, BROADCAST, now_ms()))
    await burst(settings)
    assert [r.path for r in http_sink.requests] == ["/hook"]
    log = {d.channel: d for d in await deliveries(redis, keys, n.id)}
    assert log["apprise"].status == "failed" and "not configured" in log["apprise"].detail
    assert log["webhook"].status == "sent"
