"""Hostile Apprise URLs. They come from data (a setting's `apprise.urls`, a user's
`apprise_urls`), so: every address they would reach passes the egress policy (the URL's
host, and whatever the plugin resolves while sending: a redirect), local plugins are
refused, bad lists fail naming the field, and the tokens they carry never reach a delivery
record or a log line (a real api, center and forwarder at debug level)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from support import base_env, eventually
from vestnik.streams.channels import Channel
from vestnik.streams.config import Config, load
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.schemas import ChannelTarget, Notice, User, json_encode

pytest.importorskip("apprise")

TOKEN = "tok-93b1d7e2aa"  # in every hostile URL: must never come back


class Receiver:
    """An HTTP server on `host`; records each request; `redirect` answers 307 there."""

    def __init__(self, host: str = "127.0.0.1", status: int = 200,
                 redirect: str | None = None) -> None:
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.paths.append(self.path)
                self.send_response(307 if redirect else status)
                if redirect:
                    self.send_header("location", redirect)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


async def channel_for(settings: Config) -> Channel:
    from vestnik.streams.channels.apprise import AppriseChannel

    async with httpx.AsyncClient() as http:
        ch = AppriseChannel.create(settings, http)
    assert ch is not None
    return ch


@pytest.fixture
async def strict(redis_url: str) -> AsyncIterator[Channel]:
    """The channel under the default policy (no VESTNIK_EGRESS_ALLOW)."""
    ch = await channel_for(load(base_env(redis_url)))
    yield ch
    await ch.aclose()


NOTICE = Notice(id="n-hostile", alert="disk", title="Disk 95%", body="b")


@pytest.mark.parametrize("template", [
    "json://user:{t}@127.0.0.1:{port}/",
    "json://localhost:{port}/{t}",
    "json://2130706433:{port}/?token={t}",  # 127.0.0.1 as one number
    "json://[::1]:{port}/{t}",
    "jsons://10.1.2.3/{t}",
    "form://192.168.1.1:{port}/{t}",
    "xml://169.254.169.254/latest/meta-data?{t}",  # the cloud metadata address
    "ntfy://127.0.0.1:{port}/{t}",
    "gotify://127.0.0.1:{port}/{t}abcdefgh",
    "apprise://127.0.0.1:{port}/{t}",
    "rsyslog://127.0.0.1",
])
async def test_private_and_loopback_targets_are_refused(strict: Channel, receiver: Receiver,
                                                        template: str):
    url = template.format(t=TOKEN, port=receiver.port)
    result = await strict.send(NOTICE, User(id="1", apprise_urls=[url]), ChannelTarget())
    assert result.status == "permanent", result
    assert "egress refused" in result.detail
    assert TOKEN not in result.detail and url.split("://")[0] + "://***" in result.detail
    assert receiver.paths == []


@pytest.mark.parametrize("url", [
    "syslog://", "dbus://", "gnome://", "windows://", "macosx://", "kde://",
    f"json://{TOKEN}@", "json://", f"{TOKEN}", f"nosuchscheme://{TOKEN}/x",
    f"json://127.0.0.1:99999/{TOKEN}"])
async def test_local_and_unusable_urls_are_refused(strict: Channel, url: str):
    result = await strict.send(NOTICE, User(id="1", apprise_urls=[url]), ChannelTarget())
    assert result.status == "permanent", result
    assert TOKEN not in result.detail


async def test_a_redirect_to_a_refused_address_is_not_followed(redis_url: str,
                                                               receiver: Receiver):
    """127.0.0.1 is allowed; its answer redirects to 127.0.0.2 (not allowed): the plugin's
    second connection is refused while it sends."""
    inner = Receiver("127.0.0.2")
    outer = Receiver(redirect=f"http://127.0.0.2:{inner.port}/steal")
    ch = await channel_for(load(base_env(redis_url, VESTNIK_EGRESS_ALLOW="127.0.0.1/32")))
    try:
        url = f"json://127.0.0.1:{outer.port}/{TOKEN}"
        result = await ch.send(NOTICE, User(id="1", apprise_urls=[url]), ChannelTarget())
        assert outer.paths == [f"/{TOKEN}"] and inner.paths == []
        assert result.status == "permanent", result
        assert "egress refused: 127.0.0.2 is loopback" in result.detail
        assert TOKEN not in result.detail
    finally:
        await ch.aclose()
        inner.stop()
        outer.stop()


@pytest.mark.parametrize("urls,field", [
    ([f"json://a/{TOKEN}"] * 21, "apprise.urls"),
    ([f"json://a/{TOKEN}" + "x" * 2100], "apprise.urls"),
    (f"json://a/{TOKEN}", "apprise.urls"),
    ([f"json://a/{TOKEN}", 7], "apprise.urls"),
    ([], "apprise.urls"),
])
async def test_a_bad_list_of_a_setting_fails_naming_the_field(strict: Channel, urls: Any,
                                                              field: str):
    target = ChannelTarget(extra={"urls": urls})
    pairs = strict.shared_targets(target)
    assert len(pairs) == 1  # one send, which says why
    result = await strict.send(NOTICE, None, pairs[0][1])
    assert result.status == "permanent" and field in result.detail
    assert TOKEN not in result.detail
    user = User(id="1", apprise_urls=urls if isinstance(urls, list) else [urls] * 21)
    result = await strict.send(NOTICE, user, ChannelTarget())
    assert result.status == "permanent" and "user 1: apprise_urls" in result.detail


@pytest.mark.timeout(120)
async def test_tokens_never_reach_deliveries_or_logs(start_api, start_proc, redis: Redis,
                                                     keys: Keys, receiver: Receiver):
    """A whole flow at debug level: a notice posted over HTTP, stored by the center, its
    Apprise sends run by a forwarder process (sent, refused, failing, unusable); the
    deliveries API and every log are searched for the token."""
    failing = Receiver(status=500)
    env = {"VESTNIK_LOG_LEVEL": "debug", "VESTNIK_EGRESS_ALLOW": "127.0.0.1/32",
           "VESTNIK_SEND_ATTEMPTS": "2", "VESTNIK_SEND_BACKOFF": "0.05"}
    try:
        await redis.hset(keys.state(USER_TOPIC), "1", json_encode(User(id="1", apprise_urls=[
            f"json://me:{TOKEN}@127.0.0.1:{receiver.port}/user"])))
        api = start_api(**env)
        procs = [api.proc, start_proc("center", "--no-forward", **env),
                 start_proc("forwarder", **env)]
        urls = [f"json://bot:{TOKEN}@127.0.0.1:{receiver.port}/shared?+X-Token={TOKEN}",
                f"json://127.0.0.1:{failing.port}/{TOKEN}",
                f"json://10.9.8.7/{TOKEN}",
                f"json://{TOKEN}@"]
        async with api.client() as http:
            r = await http.post("/api/v1/notices", json={
                "alert": "disk", "title": "t", "recipients": ["1"], "forward_after": 0,
                "channels": {"apprise": {"urls": urls}}})
            assert r.status_code == 202, r.text
            nid = r.json()["id"]

            async def settled() -> list[dict[str, Any]] | None:
                got = await http.get(f"/api/v1/notices/{nid}/deliveries")
                if got.status_code != 200:  # 404 until the center has stored it
                    return None
                items = got.json()["items"]
                last = [d for d in items if d["attempt"] == 2 and "not delivered" in d["detail"]]
                return items if last and last[0]["status"] == "failed" else None

            items = await eventually(settled, timeout=60, what="every send settled")
            raw = (await http.get(f"/api/v1/notices/{nid}/deliveries")).text
        assert sorted(p.split("?")[0] for p in receiver.paths) == ["/shared", "/user"]
        final = {(d["uid"], d["detail"].split(": ")[0]): d["status"] for d in items}
        assert sorted(final.values()) == ["failed", "failed", "failed", "sent", "sent"]
        assert TOKEN not in raw
        for p in procs:
            p.stop()
        logs = {p.log_path.name: p.output() for p in procs}
        assert "channels on: apprise" in procs[2].output()  # the forwarder sent with it
        assert [name for name, text in logs.items() if TOKEN in text] == []
    finally:
        failing.stop()
