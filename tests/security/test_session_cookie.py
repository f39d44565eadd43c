"""The `vestnik_token` cookie Vestnik sets itself (`POST /api/v1/me/session`): HttpOnly,
SameSite=Lax, Secure over https, as long-lived as the token; only a Bearer header opens a
session; a cookie-only DELETE is a write held to the same-origin rule. Each against a real
`vestnik api` process."""

from __future__ import annotations

import time

import httpx
import jwt
import msgspec
import pytest

from support import SSE, Api
from vestnik.streams.config import Config
from vestnik.streams.keys import USER_TOPIC, Keys

SESSION = "/api/v1/me/session"
EVIL = "https://evil.example.test"


def cookie_of(r: httpx.Response) -> tuple[str, dict[str, str]]:
    """The one Set-Cookie of `r`: its value and its attributes (lower-case names)."""
    (raw,) = r.headers.get_list("set-cookie")
    pair, *attrs = (part.strip() for part in raw.split(";"))
    name, _, value = pair.partition("=")
    assert name == "vestnik_token", raw
    return value, {k.lower(): v for k, _, v in (a.partition("=") for a in attrs)}


def signed(settings: Config, **claims: object) -> str:
    assert settings.secret
    return jwt.encode({"sub": "1", **claims}, settings.secret, algorithm="HS256")


async def test_session_cookie_attributes_over_http_and_behind_a_tls_proxy(api: Api, user_token):
    token = user_token("1", ttl=3600)
    async with api.client(token) as http:
        r = await http.post(SESSION)
        assert r.status_code == 204, r.text
        value, attrs = cookie_of(r)
        assert value == token
        assert "httponly" in attrs and attrs["samesite"] == "Lax" and attrs["path"] == "/"
        assert "secure" not in attrs  # plain http: a browser would drop a Secure cookie
        assert 3600 - 30 <= int(attrs["max-age"]) <= 3600, attrs  # until the token's exp
        assert r.headers["cache-control"] == "no-store"
        r = await http.post(SESSION, headers={"X-Forwarded-Proto": "https"})
        assert r.status_code == 204, r.text
        assert "secure" in cookie_of(r)[1]


async def test_cookie_set_by_the_route_opens_the_stream_without_a_token_in_the_url(
        api: Api, user_token, start_proc, redis, keys: Keys):
    # user 7 as the topic hub materializes a published profile; a center stores notices
    await redis.hset(keys.state(USER_TOPIC), "7", msgspec.json.encode({"id": "7"}))
    start_proc("center", "--no-forward")
    async with api.client(user_token("7")) as http:  # a cookie jar, as a browser keeps
        assert (await http.post(SESSION)).status_code == 204
        jar = http.cookies.get("vestnik_token")
    assert jar
    sse = await SSE(f"{api.base}/api/v1/me/stream", headers={"Cookie": f"vestnik_token={jar}"}
                    ).connect()
    try:
        assert sse.status == 200, sse.body
        assert (await sse.next()).event == "count"
        async with api.client() as http:
            r = await http.post("/api/v1/notices",
                                json={"alert": "disk", "title": "full", "recipients": ["7"]})
            assert r.status_code == 202, r.text
        assert (await sse.take(1, 30, event="notice"))[0].json()["title"] == "full"
    finally:
        await sse.close()


async def test_only_a_bearer_header_opens_a_session(api: Api, user_token):
    token = user_token("1")
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        for kw in ({"headers": {"Cookie": f"vestnik_token={token}", "Origin": api.base}},
                   {"params": {"token": token}},
                   {"headers": {"Authorization": f"Bearer {api.service_token}"}}):
            r = await http.post(SESSION, **kw)
            assert r.status_code == 401, (kw, r.text)
            assert "set-cookie" not in r.headers, kw


@pytest.mark.parametrize("case", ["expired", "other secret", "garbage", "no exp"])
async def test_a_bad_token_gets_401_and_no_cookie(api: Api, settings: Config, case: str):
    now = int(time.time())
    token = {"expired": signed(settings, iat=now - 7200, exp=now - 3600),
             "other secret": jwt.encode({"sub": "1", "exp": now + 60}, "x" * 32,
                                        algorithm="HS256"),
             "garbage": "not.a.jwt",
             "no exp": signed(settings, iat=now)}[case]
    async with api.client(token) as http:
        r = await http.post(SESSION)
    assert r.status_code == 401, r.text
    assert "set-cookie" not in r.headers


async def test_delete_clears_the_cookie_and_a_cross_site_delete_is_refused(api: Api,
                                                                           user_token):
    token = user_token("1")
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        cookie = {"Cookie": f"vestnik_token={token}"}
        r = await http.delete(SESSION, headers={**cookie, "Origin": EVIL})
        assert r.status_code == 403 and r.json()["path"] == "Origin", r.text
        assert "set-cookie" not in r.headers
        for headers in ({**cookie, "Origin": api.base},
                        {"Authorization": f"Bearer {token}", "X-Forwarded-Proto": "https"}):
            r = await http.delete(SESSION, headers=headers)
            assert r.status_code == 204, r.text
            value, attrs = cookie_of(r)
            assert value in ("", '""') and attrs["max-age"] == "0", attrs
            assert "httponly" in attrs and attrs["samesite"] == "Lax" and attrs["path"] == "/"
            assert ("secure" in attrs) == ("X-Forwarded-Proto" in headers)
