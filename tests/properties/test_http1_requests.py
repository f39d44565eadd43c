"""The home-made HTTP/1.1 client against hostile ids, paths and header values: it either
refuses with a clear error (BadRequest naming the part) or sends exactly one well-formed
request, as h11 (httpx's parser) reads the bytes a raw local server recorded."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from urllib.parse import unquote

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import RawHttpServer
from vestnik.streams.channels.http1 import BadRequest, HttpPool

# characters that break HTTP framing, and ordinary ones around them
HOSTILE = st.text(alphabet=st.sampled_from(
    [*"\r\n\0\t \x0b\x7f#?%/@:;=&\"'\\<>ü€aZ9-._~", "\u2028", "\ufeff"]), max_size=24)
ANY_TEXT = st.one_of(HOSTILE, st.text(max_size=24))
CONFIG = settings(max_examples=120, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server() -> Iterator[RawHttpServer]:
    s = RawHttpServer()
    yield s
    s.close()


def post(url: str, headers: dict[str, str]) -> None:
    async def go() -> None:
        pool = HttpPool(per_host=1, headers={"User-Agent": "vestnik"})
        try:
            async with asyncio.timeout(10):
                resp = await pool.post(url, b'{"a":1}', headers)
            assert resp.status_code == 204
        finally:
            await pool.aclose()
    asyncio.run(go())


def parse_one(raw: bytes) -> tuple[h11.Request, bytes]:
    """The one request in `raw`, as h11 reads it (it raises on anything malformed), and
    its body; nothing may follow it."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    conn.receive_data(b"")  # the client's end: anything after the request is an error
    req = conn.next_event()
    assert isinstance(req, h11.Request), req
    body = b""
    while isinstance(ev := conn.next_event(), h11.Data):
        body += ev.data
    assert isinstance(ev, h11.EndOfMessage), ev
    assert conn.trailing_data[0] == b""  # no second request smuggled in
    return req, body


def sent_since(server: RawHttpServer, before: int) -> list[bytes]:
    return server.received[before:]


@CONFIG
@given(nid=ANY_TEXT, value=ANY_TEXT)
def test_hostile_ids_in_the_path_query_and_header(server: RawHttpServer, nid: str,
                                                  value: str):
    before = len(server.received)
    url = f"http://127.0.0.1:{server.port}/hooks/{nid}"
    try:
        post(url, {"webhook-id": nid, "x-value": value})
    except BadRequest as e:
        assert "webhook-id" in str(e) or "x-value" in str(e) or "url" in str(e)
        assert sent_since(server, before) == []
        return
    (raw,) = sent_since(server, before)
    req, body = parse_one(raw)
    assert req.method == b"POST" and body == b'{"a":1}'
    headers = dict(req.headers)
    assert headers[b"webhook-id"].decode("latin-1") == nid
    assert headers[b"x-value"].decode("latin-1") == value
    target = req.target.decode("ascii")
    assert " " not in target and "#" not in target
    path = target.split("?", 1)[0]
    expect = url.split("#", 1)[0].split("?", 1)[0].split(str(server.port), 1)[1]
    assert unquote(path) == unquote(expect)


@CONFIG
@given(name=st.text(min_size=1, max_size=16))
def test_hostile_header_names(server: RawHttpServer, name: str):
    before = len(server.received)
    try:
        post(f"http://127.0.0.1:{server.port}/h", {name: "v"})
    except BadRequest as e:
        assert "header name" in str(e)
        assert sent_since(server, before) == []
        return
    (raw,) = sent_since(server, before)
    req, _ = parse_one(raw)
    assert (name.lower().encode(), b"v") in list(req.headers)


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://127.0.0.1:70/", "http://127.0.0.1:0/",
    "http://127.0.0.1:99999/", "http://127.0.0.1:-1/", "http://127.0.0.1:8o/",
    "http://ex ample.org/", "http://a\r\nb/", "http://x/\r\nX-Injected: 1", "http://[::1/",
    "http:///path", "http://b\u00fccher.example/",
])
def test_bad_schemes_ports_and_hosts_are_refused(url: str):
    with pytest.raises(BadRequest):
        post(url, {})


def test_userinfo_becomes_basic_auth_and_leaves_the_host(server: RawHttpServer):
    before = len(server.received)
    post(f"http://al%40ice:p%3Aw@127.0.0.1:{server.port}/h", {})
    (raw,) = sent_since(server, before)
    req, _ = parse_one(raw)
    headers = dict(req.headers)
    assert headers[b"authorization"] == b"Basic " + base64.b64encode(b"al@ice:p:w")
    assert headers[b"host"] == f"127.0.0.1:{server.port}".encode()
    assert b"al%40ice" not in raw
