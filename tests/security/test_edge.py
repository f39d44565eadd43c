"""The HTTP edge tried as an attacker would: a cross-site form riding the `vestnik_token`
cookie, `VESTNIK_CORS_ORIGINS=*`, tokens in URLs, one token flooding writes, one user
opening streams without end. Each against a real `vestnik api` process."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from support import SSE, Api, base_env, vestnik_argv, wait_http
from vestnik.streams.redis_server import free_port

READ_ALL = "/api/v1/me/notices/read-all"
APP = "https://app.example.test"
EVIL = "https://evil.example.test"


@pytest.mark.parametrize("command", [["api", "--port", "1"], ["center", "--burst"]])
def test_cors_star_is_refused_at_start_by_every_process(redis_url: str, tmp_path, command):
    env = base_env(redis_url, VESTNIK_CORS_ORIGINS=f"{APP},*")
    r = subprocess.run(vestnik_argv(*command), env=env, capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "VESTNIK_CORS_ORIGINS" in r.stderr and "Traceback" not in r.stderr


async def test_cookie_only_writes_need_our_origin_or_a_listed_one(start_api, user_token):
    api: Api = start_api(VESTNIK_CORS_ORIGINS=APP)
    cookie = {"Cookie": f"vestnik_token={user_token('1')}"}
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:

        async def post(**headers: str) -> httpx.Response:
            return await http.post(READ_ALL, headers={**cookie, **headers})

        # a form or fetch from another site carries the cookie: refused, naming the header
        for headers, named in (({"Origin": EVIL}, "Origin"),
                               ({"Origin": "null"}, "Origin"),  # sandboxed frame, file://
                               ({"Origin": api.base.replace("http:", "https:")}, "Origin"),
                               ({"Referer": f"{EVIL}/page?x=1"}, "Referer"),
                               ({}, "Origin")):  # neither header: refused (see README)
            r = await post(**headers)
            assert r.status_code == 403, (headers, r.text)
            assert r.json()["error"] == "forbidden" and r.json()["path"] == named, r.text
            assert named in r.json()["detail"]
        # our own pages and the listed app may write with the cookie
        for headers in ({"Origin": api.base}, {"Origin": APP}, {"Referer": f"{api.base}/"},
                        {"Origin": api.base.replace("http:", "https:"),
                         "X-Forwarded-Proto": "https"}):  # behind a TLS proxy
            r = await post(**headers)
            assert r.status_code == 200, (headers, r.text)
        # a Bearer header is never sent by a browser on its own: no Origin rule
        r = await http.post(READ_ALL, headers={"Authorization": f"Bearer {user_token('1')}",
                                               "Origin": EVIL})
        assert r.status_code == 200, r.text
        # reads with the cookie are not writes
        r = await http.get("/api/v1/me/unread-count", headers={**cookie, "Origin": EVIL})
        assert r.status_code == 200, r.text


async def test_query_token_is_read_only_by_sse_gets(api: Api, user_token):
    token = user_token("1")
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        for method, url in (("GET", "/api/v1/me/notices"), ("GET", "/api/v1/topics/vm"),
                            ("POST", READ_ALL), ("GET", "/api/v1/settings")):
            r = await http.request(method, url, params={"token": token})
            assert r.status_code == 401, (method, url, r.text)
        r = await http.get("/api/v1/settings", params={"token": api.service_token})
        assert r.status_code == 401, r.text
    for url in ("/api/v1/me/stream", "/api/v1/topics/vm/stream"):
        sse = await SSE(f"{api.base}{url}?token={token}").connect()
        assert sse.status == 200, url
        await sse.close()


async def test_write_rate_per_token_answers_429_with_retry_after(start_api, user_token):
    api: Api = start_api(VESTNIK_RATE="1/m", VESTNIK_RATE_BURST="3")
    notice = {"alert": "disk", "title": "t", "recipients": ["1"]}
    async with api.client() as http:
        codes = [(await http.post("/api/v1/notices", json=notice)).status_code
                 for _ in range(4)]
        assert codes == [202, 202, 202, 429], codes
        r = await http.post("/api/v1/notices", json=notice)
        assert r.status_code == 429
        assert r.json()["error"] == "rate_limited" and "VESTNIK_RATE" in r.json()["detail"]
        wait = r.headers["retry-after"]
        assert wait.isdigit() and 1 <= int(wait) <= 60, wait
        # reads are not limited; another token has its own bucket
        assert (await http.get("/api/v1/settings")).status_code == 200
    async with api.client(user_token("1")) as http:
        assert (await http.post(READ_ALL)).status_code == 200


async def test_one_stream_too_many_closes_that_users_oldest(start_api, user_token):
    api: Api = start_api(VESTNIK_SSE_PER_USER="2")
    alice, bob = user_token("1"), user_token("2")
    me = await SSE(f"{api.base}/api/v1/me/stream?token={alice}").connect()
    assert (await me.next()).event == "count"
    topic = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={alice}").connect()
    bobs = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={bob}").connect()
    services = [await SSE(f"{api.base}/api/v1/topics/vm/stream",  # not a user: not counted
                          headers={"Authorization": f"Bearer {api.service_token}"}).connect()
                for _ in range(3)]
    newest = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={alice}").connect()
    try:
        # Alice's oldest stream ends cleanly, saying why; she may resume it
        closed = (await me.take(1, event="closed"))[0]
        assert closed.json() == {"reason": "too_many_streams"}
        with pytest.raises(EOFError):
            await me.next()
        # every other stream still runs
        async with api.client() as http:
            r = await http.post("/api/v1/topics/vm/events", json={"op": "create", "id": "9"})
            assert r.status_code == 201, r.text
        for sse in (topic, bobs, newest, *services):
            assert (await sse.next()).event == "entity"
    finally:
        for sse in (me, topic, bobs, newest, *services):
            await sse.close()


DEMO = ("/demo/vms", "/demo/mail", "/demo/mail.json")


async def _demo_routes(base: str) -> tuple[list[int], bool, list[str]]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        codes = [(await http.get(path)).status_code for path in DEMO]
        site = (await http.get("/site.json")).json()
        paths = [p for p in (await http.get("/openapi.json")).json()["paths"]
                 if p.startswith("/demo/")]
    return codes, site["demo"], paths


async def test_demo_routes_exist_only_under_up_demo(api: Api, start_proc, tmp_path):
    assert await _demo_routes(api.base) == ([404, 404, 404], False, [])
    for args, expected in ((["up"], ([404, 404, 404], False, [])),
                           (["up", "--demo"], ([200, 200, 200], True, list(DEMO)))):
        port = free_port()
        proc = start_proc(*args, "--port", str(port),
                          VESTNIK_DATA_DIR=str(tmp_path / "-".join(args)))
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=40, proc=proc)
        assert await _demo_routes(f"http://127.0.0.1:{port}") == expected, args
        assert proc.stop() == 0, proc.output()[-2000:]
