"""Auth against a real `vestnik api`: service tokens vs user JWTs, where a token may travel,
what makes a JWT invalid, per-topic read ACLs and the audience check."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from starlette.requests import Request

from support import SSE, Api
from vestnik.app.context import Ctx
from vestnik.app.http import authenticate
from vestnik.streams.config import load
from vestnik.streams.errors import Unauthorized
from vestnik.streams.keys import Keys

SNAPSHOT = "/api/v1/topics/vm"
STREAM = "/api/v1/topics/vm/stream"


def make_token(secret: str, *, alg: str = "HS256", **claims: object) -> str:
    body: dict[str, object] = {"sub": "1", "exp": int(time.time()) + 600}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret if alg != "none" else None, algorithm=alg)


def client(api: Api, **kw: object) -> httpx.AsyncClient:
    """A client with no credentials at all."""
    return httpx.AsyncClient(base_url=api.base, timeout=10, **kw)  # type: ignore[arg-type]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(r: httpx.Response, what: str = "") -> None:
    assert r.status_code == 401, (what, r.status_code, r.text)
    assert r.json()["error"] == "unauthorized", what
    assert r.headers["www-authenticate"] == "Bearer"


async def test_bad_user_tokens_are_401(api: Api):
    secret = api.env["VESTNIK_SECRET"]
    now = int(time.time())
    bad = {
        "expired": make_token(secret, exp=now - 40),  # past the 30 s leeway
        "wrong secret": make_token("another-secret-" + "x" * 32),
        "alg none": make_token(secret, alg="none"),
        "alg HS512": make_token(secret + "x" * 40, alg="HS512"),
        "no exp": make_token(secret, exp=None),
        "no sub": make_token(secret, sub=None),
        "empty sub": make_token(secret, sub=""),
        "roles not a list": make_token(secret, roles=5),
        "malformed": "not-a-jwt",
        "three junk parts": "a.b.c",
        "tampered": make_token(secret)[:-4] + "AAAA",
    }
    async with client(api) as http:
        assert_401(await http.get(SNAPSHOT), "no token")
        assert_401(await http.get(SNAPSHOT, headers={"Authorization": "Bearer"}), "empty")
        assert_401(await http.get(SNAPSHOT, headers={"Authorization": "Basic dTpw"}), "basic")
        for what, token in bad.items():
            assert_401(await http.get(SNAPSHOT, headers=bearer(token)), what)
            assert_401(await http.get(f"{SNAPSHOT}?token={token}"), what)
        r = await http.get(SNAPSHOT, headers=bearer(bad["expired"]))
        assert "expired" in r.json()["detail"]
        sse = await SSE(f"{api.base}{STREAM}?token={bad['alg none']}").connect()
        assert sse.status == 401
        await sse.close()
        # a valid token passes
        assert (await http.get(SNAPSHOT, headers=bearer(make_token(secret)))).status_code == 200


async def test_token_as_header_cookie_or_query(api: Api, user_token):
    token = user_token("1")
    async with client(api) as http:
        assert (await http.get(SNAPSHOT, headers=bearer(token))).status_code == 200
        # a query token is read only by SSE GETs (EventSource cannot send headers)
        assert_401(await http.get(f"{SNAPSHOT}?token={token}"), "query token on a JSON route")
        r = await http.get(SNAPSHOT, headers={"Cookie": f"vestnik_token={token}"})
        assert r.status_code == 200
        r = await http.get(SNAPSHOT, headers={"Cookie": "vestnik_token=junk"})
        assert_401(r, "bad cookie")
    for how in ({"url": f"{STREAM}?token={token}"},
                {"url": STREAM, "headers": {"Cookie": f"vestnik_token={token}"}},
                {"url": STREAM, "headers": bearer(token)}):
        sse = await SSE(api.base + how["url"], headers=how.get("headers", {})).connect()
        assert sse.status == 200, how
        await sse.close()


async def test_service_and_user_tokens_are_not_interchangeable(api: Api, user_token):
    token = user_token("1")
    async with client(api) as http:
        for method, url, body in (
            ("POST", "/api/v1/settings", {"name": "disk"}),
            ("GET", "/api/v1/settings", None),
            ("PUT", "/api/v1/settings/X", {"name": "disk"}),
            ("PATCH", "/api/v1/settings/X", {}),
            ("DELETE", "/api/v1/settings/X", None),
            ("POST", "/api/v1/topics/vm/events", {"op": "create", "id": "1"}),
        ):
            for headers in (bearer(token), {"Cookie": f"vestnik_token={token}"}, {}):
                r = await http.request(method, url, json=body, headers=headers)
                assert_401(r, (method, url, headers))
        # the service token works where a service is required, by header (not by query)
        r = await http.get("/api/v1/settings", headers=bearer(api.service_token))
        assert r.status_code == 200
        assert_401(await http.get(f"/api/v1/settings?token={api.service_token}"), "query")
        # ... and reads topics (auth "any")
        r = await http.get(SNAPSHOT, headers=bearer(api.service_token))
        assert r.status_code == 200


async def test_user_routes_refuse_service_tokens(api: Api, user_token):
    """Every route that needs a user (from the OpenAPI document: /me/...) refuses a service
    token by name and accepts a user token."""
    async with client(api) as http:
        spec = (await http.get("/openapi.json")).json()
        me = [(m.upper(), p) for p, item in spec["paths"].items() for m in item
              if p.startswith("/api/v1/me/")]
        if not me:
            pytest.skip("no user routes in this build")
        for method, path in me:
            if path.endswith("/stream"):
                continue
            url = path.replace("{id}", "01HZZZZZZZZZZZZZZZZZZZZZZZ")
            r = await http.request(method, url, headers=bearer(api.service_token))
            assert_401(r, (method, path))
            assert "user token" in r.json()["detail"]
            r = await http.request(method, url, headers=bearer(user_token("1")))
            assert r.status_code != 401, (method, path, r.text)
        sse = await SSE(f"{api.base}/api/v1/me/stream?token={api.service_token}").connect()
        assert sse.status == 401
        await sse.close()


def _request(headers: dict[str, str] | None = None, query: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw,
                    "query_string": query.encode()})


def test_service_token_is_not_a_user(settings):
    """Where a user is required (the /me routes), a service token is refused by name."""
    ctx = Ctx(settings, Keys(), None)  # type: ignore[arg-type]
    service = settings.service_tokens[0]
    with pytest.raises(Unauthorized, match="user token is required"):
        authenticate(_request(bearer(service)), ctx, "user")
    from vestnik.app.tokens import issue_token

    user = issue_token(settings, "7", 60, ["ops"])
    p = authenticate(_request(query=f"token={user}"), ctx, "user", allow_query=True)
    assert (p.kind, p.user_id, p.roles) == ("user", "7", ("ops",))
    with pytest.raises(Unauthorized, match="missing token"):  # a query token: SSE GETs only
        authenticate(_request(query=f"token={user}"), ctx, "user")
    assert authenticate(_request(bearer(service)), ctx, "any").is_service
    with pytest.raises(Unauthorized, match="service token is required"):
        authenticate(_request(bearer(user)), ctx, "service")
    # no secret configured: user tokens are refused, clearly
    no_secret = Ctx(load({"VESTNIK_SERVICE_TOKENS": service}), Keys(), None)  # type: ignore[arg-type]
    with pytest.raises(Unauthorized, match="VESTNIK_SECRET"):
        authenticate(_request(bearer(user)), no_secret, "user")


async def test_topic_acl(start_api, user_token):
    api = start_api(VESTNIK_TOPIC_ACL="billing=admin|user:7,open=*,letters=a")
    secret = api.env["VESTNIK_SECRET"]
    async with client(api) as http:
        for url in ("/api/v1/topics/billing", "/api/v1/topics/billing/stream"):
            for token, allowed in ((user_token("1"), False),
                                   (user_token("1", roles=["viewer"]), False),
                                   (user_token("1", roles=["admin"]), True),
                                   (user_token("7"), True),
                                   (user_token("77"), False),
                                   (api.service_token, True)):
                if url.endswith("/stream"):
                    sse = await SSE(f"{api.base}{url}?token={token}").connect()
                    status, body = sse.status, sse.body
                    await sse.close()
                else:
                    r = await http.get(url, headers=bearer(token))
                    status, body = r.status_code, r.content
                assert status == (200 if allowed else 403), (url, token, body)
                if not allowed:
                    assert b'"error":"forbidden"' in body and b"billing" in body
        # a `roles` string is one role, not a list of its letters
        admin = make_token(secret, roles="admin")
        assert (await http.get("/api/v1/topics/billing", headers=bearer(admin))).status_code == 200
        r = await http.get("/api/v1/topics/letters", headers=bearer(admin))
        assert r.status_code == 403
        # topics without an ACL entry (or `*`) stay open to every user
        for url in ("/api/v1/topics/vm", "/api/v1/topics/open"):
            assert (await http.get(url, headers=bearer(user_token("1")))).status_code == 200


async def test_own_topics_are_private_unless_the_acl_names_them(api: Api, start_api,
                                                                 user_token):
    async with client(api) as http:
        for topic in ("settings", "user"):
            r = await http.get(f"/api/v1/topics/{topic}", headers=bearer(user_token("1")))
            assert r.status_code == 403 and "VESTNIK_TOPIC_ACL" in r.json()["detail"]
            r = await http.get(f"/api/v1/topics/{topic}", headers=bearer(api.service_token))
            assert r.status_code == 200
    api = start_api(VESTNIK_TOPIC_ACL="settings=admin,user=*")
    async with client(api) as http:
        url = "/api/v1/topics/settings"
        assert (await http.get(url, headers=bearer(user_token("1")))).status_code == 403
        r = await http.get(url, headers=bearer(user_token("1", roles=["admin"])))
        assert r.status_code == 200
        r = await http.get("/api/v1/topics/user", headers=bearer(user_token("1")))
        assert r.status_code == 200


async def test_audience_is_checked_when_configured(start_api):
    api = start_api(VESTNIK_JWT_AUDIENCE="vestnik")
    secret = api.env["VESTNIK_SECRET"]
    async with client(api) as http:
        for what, token in (("missing aud", make_token(secret)),
                            ("wrong aud", make_token(secret, aud="other")),
                            ("wrong aud list", make_token(secret, aud=["a", "b"]))):
            assert_401(await http.get(SNAPSHOT, headers=bearer(token)), what)
        for token in (make_token(secret, aud="vestnik"), make_token(secret, aud=["x", "vestnik"])):
            assert (await http.get(SNAPSHOT, headers=bearer(token))).status_code == 200


async def test_jwt_leeway_issuer_and_max_lifetime(start_api):
    """30 s of clock skew is forgiven, not more; `iss` is checked when configured; a token
    that lives longer than VESTNIK_JWT_MAX_TTL (30 days) is refused, also one without `iat`."""
    api = start_api(VESTNIK_JWT_ISSUER="https://login.example.test")
    secret, iss, day = api.env["VESTNIK_SECRET"], "https://login.example.test", 86400
    now = int(time.time())
    refused = {
        "expired 40 s ago": make_token(secret, iss=iss, exp=now - 40),
        "wrong iss": make_token(secret, iss="https://evil.example.test"),
        "no iss": make_token(secret),
        "iat to exp 31 days": make_token(secret, iss=iss, iat=now, exp=now + 31 * day),
        "no iat, exp in 31 days": make_token(secret, iss=iss, exp=now + 31 * day),
        "iat in the future": make_token(secret, iss=iss, iat=now + 120, exp=now + 600),
    }
    accepted = {
        "expired 20 s ago": make_token(secret, iss=iss, iat=now - 600, exp=now - 20),
        "30 days": make_token(secret, iss=iss, iat=now, exp=now + 30 * day),
        "no iat, exp in 29 days": make_token(secret, iss=iss, exp=now + 29 * day),
    }
    async with client(api) as http:
        for what, token in refused.items():
            r = await http.get(SNAPSHOT, headers=bearer(token))
            assert_401(r, what)
        r = await http.get(SNAPSHOT, headers=bearer(refused["iat to exp 31 days"]))
        assert "VESTNIK_JWT_MAX_TTL" in r.json()["detail"]
        for what, token in accepted.items():
            r = await http.get(SNAPSHOT, headers=bearer(token))
            assert r.status_code == 200, (what, r.text)


def test_issued_tokens_carry_iat_and_iss_and_respect_the_max_lifetime():
    from vestnik.app.tokens import issue_token
    from vestnik.streams.config import ConfigError

    settings = load({"VESTNIK_SECRET": "s" * 32, "VESTNIK_JWT_ISSUER": "vestnik"})
    claims = jwt.decode(issue_token(settings, "1", 60), "s" * 32, algorithms=["HS256"],
                        issuer="vestnik")
    assert claims["exp"] - claims["iat"] == 60
    with pytest.raises(ConfigError, match="VESTNIK_JWT_MAX_TTL"):
        issue_token(settings, "1", 31 * 86400)
