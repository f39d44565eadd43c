"""Egress as an attacker would try it: a setting's or notice's URL aimed at loopback, the
metadata service or the private network, in every spelling resolvers accept; a settings
write with such a literal address; replies too large to hold. Real local servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support import RawHttpServer
from vestnik.streams.channels.base import MAX_REPLY, capped_post
from vestnik.streams.channels.http1 import MAX_BODY, HttpPool
from vestnik.streams.egress import Egress, EgressRefused, pinned_client

REFUSED = [
    ("127.0.0.1", "loopback"), ("127.1", "loopback"), ("0x7f.1", "loopback"),
    ("2130706433", "loopback"), ("0177.0.0.1", "loopback"), ("017700000001", "loopback"),
    ("[::1]", "loopback"), ("[::ffff:127.0.0.1]", "loopback"), ("[::ffff:7f00:1]", "loopback"),
    ("[::127.0.0.1]", "loopback"), ("[64:ff9b::7f00:1]", "loopback"),
    ("[2002:7f00:1::]", "loopback"), ("0.0.0.0", "unspecified"), ("0", "unspecified"),
    ("[::]", "unspecified"), ("169.254.169.254", "link-local"), ("[fe80::1]", "link-local"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("[fc00::1]", "private"), ("[::ffff:10.1.2.3]", "private"), ("100.64.0.1", "not global"),
    ("224.0.0.1", "multicast"), ("239.1.2.3", "multicast"), ("[ff02::1]", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
]


@pytest.mark.parametrize("host,why", REFUSED)
async def test_non_public_literal_addresses_are_refused(host: str, why: str):
    with pytest.raises(EgressRefused, match=why):
        await Egress().resolve(host, 80)


async def test_public_literal_passes_and_allow_list_opens_only_what_it_names():
    assert await Egress().resolve("8.8.8.8", 443) == "8.8.8.8"  # no DNS for a literal
    egress = Egress(["127.0.0.0/8", "::1"])
    assert await egress.resolve("127.1", 80) == "127.0.0.1"
    assert await egress.resolve("[::1]", 80) == "::1"
    assert await egress.resolve("[::ffff:127.0.0.1]", 80) == "::ffff:7f00:1"
    with pytest.raises(EgressRefused, match="private"):
        await egress.resolve("10.0.0.1", 80)


async def test_a_name_resolving_to_loopback_is_refused_and_the_decision_cached():
    egress = Egress()
    with pytest.raises(EgressRefused, match=r"localhost resolves to .* is loopback"):
        await egress.resolve("localhost", 80)
    assert "localhost" in egress._cache  # the next send does no DNS lookup
    with pytest.raises(EgressRefused):
        await egress.resolve("LOCALHOST.", 80)
    assert await Egress(["localhost"]).resolve("localhost", 80) in ("127.0.0.1", "::1")


# ----------------------------------------------------------------- local servers


def http_answer(status: int, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            .encode() + body)


@pytest.fixture
def big() -> Iterator[RawHttpServer]:
    server = RawHttpServer(http_answer(200, b"x" * (4 * 1024 * 1024)))
    yield server
    server.close()


async def test_http1_reply_is_read_with_a_cap(big: RawHttpServer):
    pool = HttpPool(per_host=1)
    try:
        resp = await pool.post(f"http://127.0.0.1:{big.port}/h", b"{}", {})
    finally:
        await pool.aclose()
    assert resp.status_code == 200 and len(resp.content) == MAX_BODY == 64 * 1024


async def test_httpx_reply_is_read_with_a_cap(big: RawHttpServer):
    async with httpx.AsyncClient() as http:
        resp = await capped_post(http, f"http://127.0.0.1:{big.port}/h", json={})
    assert resp.status_code == 200 and len(resp.content) == MAX_REPLY == 64 * 1024


class RebindingEgress(Egress):
    """A name that no DNS knows, 'resolved' by the policy to our server: a request that
    arrives proves the client connected to the checked address, not to a second lookup."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    async def _decide(self, host: str, port: int) -> str | EgressRefused:
        return self.address


@pytest.fixture
def ok_server() -> Iterator[RawHttpServer]:
    server = RawHttpServer(http_answer(204, b""))
    yield server
    server.close()


async def test_both_clients_connect_to_the_checked_address(ok_server: RawHttpServer):
    egress = RebindingEgress("127.0.0.1")
    url = f"http://hook.invalid:{ok_server.port}/path"
    pool = HttpPool(per_host=1, resolve=egress.resolve)
    try:
        assert (await pool.post(url, b"{}", {})).status_code == 204
    finally:
        await pool.aclose()
    async with pinned_client(egress) as http:
        assert (await http.post(url, json={})).status_code == 204
    assert len(ok_server.received) == 2
    assert all(b"Host: hook.invalid:" in r or b"host: hook.invalid:" in r
               for r in ok_server.received)


async def test_pinned_client_refuses_loopback_without_connecting(ok_server: RawHttpServer):
    async with pinned_client(Egress()) as http:
        with pytest.raises(EgressRefused, match="loopback"):
            await http.post(f"http://127.0.0.1:{ok_server.port}/x", json={})
    assert ok_server.received == []


async def test_settings_refuse_a_literal_private_url_naming_the_field(api: Any):
    async with api.client() as c:
        for url in ("http://127.1:8080/x", "http://[::ffff:169.254.169.254]/latest",
                    "https://10.0.0.7/hook"):
            r = await c.post("/api/v1/settings", json={
                "name": "disk", "channel": {"webhook": {"url": url}}})
            assert r.status_code == 422, r.text
            assert r.json()["path"] == "$.channel.webhook.url"
            assert "egress refused" in r.json()["detail"]
        r = await c.post("/api/v1/settings", json={
            "name": "disk", "channel": {"slack": {"url": "https://hooks.example.org/T/B"}}})
        assert r.status_code == 201, r.text


def test_a_bad_cidr_in_the_allow_list_stops_the_start():
    from vestnik.streams.config import ConfigError, load

    with pytest.raises(ConfigError, match="VESTNIK_EGRESS_ALLOW"):
        load({"VESTNIK_EGRESS_ALLOW": "10.0.0.0/33"})
    assert load({"VESTNIK_EGRESS_ALLOW": "10.0.0.0/8, hooks.internal"}).egress_allow == [
        "10.0.0.0/8", "hooks.internal"]
