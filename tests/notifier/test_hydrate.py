"""Thin events (op + id only) are hydrated once per event from the product's source, however
many clients follow the topic; hydration never leaves the configured hosts."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from support import SSE, RawHttpServer, eventually, run_keys
from vestnik.streams.channels.base import ReplyTooLarge, capped_request
from vestnik.streams.notifier.hydrate import MAX_ENTITY

K = run_keys()

HUGE = 4 * 1024 * 1024


class ProductApi:
    """A stand-in for the product's HTTP API: GET /vms/<id> → the VM, counting calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.calls.append(self.path)
                vid = self.path.rsplit("/", 1)[-1]
                if vid == "404":
                    self.send_response(404)
                    self.end_headers()
                    return
                entity = {"id": vid, "status": "running", "via": "product"}
                if vid == "huge":  # a misbehaving source: 4 MiB for one VM
                    entity["blob"] = "x" * HUGE
                body = json.dumps(entity).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the reader stopped early
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def product() -> Iterator[ProductApi]:
    p = ProductApi()
    yield p
    p.close()


async def test_thin_event_hydrated_once_for_50_subscribers(start_api, product, redis,
                                                           user_token):
    api = start_api(VESTNIK_HYDRATE=f"vm=http://127.0.0.1:{product.port}/vms/{{id}}",
                    VESTNIK_SSE_PER_USER="50")  # 50 streams of one user
    token = user_token()
    clients = await asyncio.gather(*(
        SSE(f"{api.base}/api/v1/topics/vm/stream?token={token}").connect() for _ in range(50)
    ))
    await redis.xadd(K.topic("vm"), {"op": "update", "id": "42"})
    events = await asyncio.gather(*(c.next() for c in clients))
    for ev in events:
        assert ev.json()["data"] == {"id": "42", "status": "running", "via": "product"}
    assert product.calls == ["/vms/42"]
    async with api.client() as http:
        snap = (await http.get("/api/v1/topics/vm")).json()
    assert snap["items"]["42"]["via"] == "product"
    assert product.calls == ["/vms/42"]  # the snapshot did not call the product again
    await asyncio.gather(*(c.close() for c in clients))


async def test_crafted_id_cannot_leave_the_path(start_api, product, redis, user_token):
    api = start_api(VESTNIK_HYDRATE=f"vm=http://127.0.0.1:{product.port}/vms/{{id}}")
    sse = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={user_token()}").connect()
    await redis.xadd(K.topic("vm"), {"op": "update", "id": "../../admin?x=@evil.example:80/"})
    ev = (await sse.next()).json()
    assert ev["data"]["id"] == "..%2F..%2Fadmin%3Fx%3D%40evil.example%3A80%2F"
    assert product.calls == ["/vms/..%2F..%2Fadmin%3Fx%3D%40evil.example%3A80%2F"]
    await sse.close()


def test_hydration_host_outside_allow_list_is_refused_at_start(start_api, product):
    with pytest.raises(RuntimeError, match="hydrate_hosts"):
        start_api(VESTNIK_HYDRATE="vm=http://169.254.169.254/latest/{id}")


async def test_redis_key_source(start_api, redis, user_token):
    api = start_api(VESTNIK_HYDRATE="vm=redis:panel:vm:{id}")
    await redis.hset("panel:vm:5", mapping={"status": "stopped"})
    await redis.xadd(K.topic("vm"), {"op": "update", "id": "5"})

    async def state():
        async with api.client(user_token()) as http:
            return (await http.get("/api/v1/topics/vm")).json()["items"].get("5")

    assert await eventually(state, what="hydrated state") == {"status": "stopped"}


async def test_a_4_mib_reply_fails_that_event_only(start_api, product, redis, user_token):
    api = start_api(VESTNIK_HYDRATE=f"vm=http://127.0.0.1:{product.port}/vms/{{id}}")
    sse = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={user_token()}").connect()
    try:
        await redis.xadd(K.topic("vm"), {"op": "update", "id": "huge"})
        await redis.xadd(K.topic("vm"), {"op": "update", "id": "43"})
        huge, small = [ev.json() for ev in await sse.take(2, 30)]
    finally:
        await sse.close()
    # the over-cap entity is not passed on (nor held): the event says only what changed
    assert HUGE > MAX_ENTITY and huge["id"] == "huge" and "data" not in huge, str(huge)[:200]
    assert small["data"] == {"id": "43", "status": "running", "via": "product"}
    async with api.client() as http:
        metrics = (await http.get("/metrics")).text
    assert 'vestnik_hydrations_total{result="too_large",topic="vm"} 1.0' in metrics, [
        ln for ln in metrics.splitlines() if "hydrations" in ln]
    assert f"is larger than {MAX_ENTITY} bytes" in api.proc.output()


@pytest.mark.parametrize("size", [999, 1000, 1001])
async def test_a_whole_reply_is_read_up_to_its_cap_and_no_further(size: int):
    server = RawHttpServer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n"
                           b"\r\n%s" % (size, b"x" * size))
    try:
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{server.port}/e"
            if size > 1000:
                with pytest.raises(ReplyTooLarge, match="larger than 1000 bytes"):
                    await capped_request(http, "GET", url, limit=1000, whole=True)
            else:
                resp = await capped_request(http, "GET", url, limit=1000, whole=True)
                assert resp.content == b"x" * size
            cut = await capped_request(http, "GET", url, limit=1000)  # a channel's reply
            assert cut.content == b"x" * min(size, 1000)
    finally:
        server.close()
