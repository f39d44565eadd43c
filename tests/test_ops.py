"""Operations against a real `vestnik api`: liveness, readiness (and what makes it fail),
Prometheus metrics, an OpenAPI document covering every route, and no 500 for bad input."""

from __future__ import annotations

import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from support import SSE, Api, eventually
from vestnik.app.api import create_app
from vestnik.streams.keys import CENTER_GROUP
from vestnik.streams.redis_server import RedisServer


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_healthz_and_readyz(api: Api, redis, keys):
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        r = await http.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        r = await http.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ok", "checks": {"redis": "ok", "group:center": "ok",
                                                       "topic-hub": "ok"}}

        await redis.xgroup_destroy(keys.notices, CENTER_GROUP)
        r = await http.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert r.json()["checks"]["group:center"].startswith("missing")
        assert r.json()["checks"]["redis"] == "ok"

        await redis.xgroup_create(keys.notices, CENTER_GROUP, id="0")
        assert (await http.get("/readyz")).status_code == 200

        await redis.delete(keys.notices)
        r = await http.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["group:center"].startswith("missing")
        assert (await http.get("/healthz")).status_code == 200  # alive, just not ready


async def test_readyz_names_redis_when_unreachable(start_api, tmp_path):
    server = RedisServer(tmp_path / "own-redis", appendonly=False).start()
    try:
        api = start_api(VESTNIK_REDIS_URL=server.url)
    finally:
        server.stop()
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as http:
        started = time.monotonic()
        r = await http.get("/readyz")
        took = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["checks"]["redis"].startswith("unreachable")
        assert (await http.get("/healthz")).status_code == 200
    assert took < 5, f"readyz took {took:.1f}s with Redis down"


async def test_metrics_count_published_and_delivered(api: Api, user_token):
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        async def scrape() -> dict:
            r = await http.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            return samples(r.text)

        sse = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={user_token('1')}").connect()
        clients = ("vestnik_sse_clients", (("stream", "topic"),))
        await eventually(lambda: _at_least(scrape, clients, 1), what="sse client counted")
        r = await http.post("/api/v1/topics/vm/events", json={"op": "create", "id": "1",
                                                              "data": {"a": 1}},
                            headers={"Authorization": f"Bearer {api.service_token}"})
        assert r.status_code == 201
        ev = await sse.next()
        assert ev.json()["data"] == {"a": 1}
        m = await scrape()
        assert m[("vestnik_events_published_total", (("topic", "vm"), ("via", "http")))] == 1
        assert m[("vestnik_events_delivered_total", (("stream", "topic"),))] >= 1
        assert m[clients] == 1
        await sse.close()
        await eventually(lambda: _at_most(scrape, clients, 0), what="sse client gone")


async def _at_least(scrape, key, n) -> bool:
    return (await scrape()).get(key, 0) >= n


async def _at_most(scrape, key, n) -> bool:
    return (await scrape()).get(key, 0) <= n


def _resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.removeprefix("#/components/schemas/")
    assert name in spec["components"]["schemas"], ref
    return spec["components"]["schemas"][name]


async def test_openapi_describes_every_route(api: Api, settings):
    app = create_app(settings)
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        spec = (await http.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    # every route, except those that say they are not API (HTML pages: include_in_schema=False)
    routes = [r for r in app.routes if isinstance(r, Route) and r.include_in_schema]
    assert len(routes) >= 10
    for route in routes:
        for method in route.methods or ():
            if method == "HEAD":
                continue
            op = spec["paths"].get(route.path, {}).get(method.lower())
            assert op is not None, (f"{method} {route.path} is not in /openapi.json (register it "
                                    "with an app.http.Router, or pass include_in_schema=False "
                                    "if it is not part of the API)")
            ok = {c: v for c, v in op["responses"].items() if c.startswith("2")}
            assert ok, f"{method} {route.path} has no success response"
            for code, resp in ok.items():
                if code != "204":
                    assert resp.get("content"), f"{method} {route.path} {code}: no schema"
                    for media in resp["content"].values():
                        _resolve(spec, media["schema"])
            if "requestBody" in op:
                body = op["requestBody"]["content"]["application/json"]
                _resolve(spec, body["schema"])
            elif method in ("PUT", "PATCH"):
                raise AssertionError(f"{method} {route.path} has no request body schema")
    post = spec["paths"]["/api/v1/settings"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SettingIn"}
    created = post["responses"]["201"]["content"]["application/json"]["schema"]
    assert _resolve(spec, created)["required"] == ["id", "name"]
    assert "enabled" in _resolve(spec, post["requestBody"]["content"]["application/json"]
                                 ["schema"])["properties"]
    item = spec["paths"]["/api/v1/settings/{id}"]
    assert {"get", "put", "patch", "delete"} <= item.keys()
    assert "412" in item["patch"]["responses"] and "204" in item["delete"]["responses"]
    for method in ("put", "patch", "delete"):
        assert {"name": "If-Match", "in": "header"}.items() <= next(
            p for p in item[method]["parameters"] if p["name"] == "If-Match").items()
    assert item["patch"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SettingPatch"}
    assert {p["name"] for p in spec["paths"]["/api/v1/settings"]["get"]["parameters"]} == {
        "name", "cursor", "limit"}


def _wrong_types(spec: dict, schema: dict) -> dict[str, Any]:
    """An object whose every declared property has a type it cannot take."""
    props = _resolve(spec, schema).get("properties", {})
    return {name: ([] if p.get("type") in ("string", "integer", "number", "boolean") else 12.5)
            for name, p in props.items()}


async def test_no_500_for_bad_bodies(start_api, user_token):
    limit = 4096
    api = start_api(VESTNIK_MAX_BODY=str(limit))
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        spec = (await http.get("/openapi.json")).json()
        tried = 0
        for path, item in spec["paths"].items():
            for method, op in item.items():
                if "requestBody" not in op:
                    continue
                url = path.replace("{topic}", "vm").replace("{id}", "01HZZZZZZZZZZZZZZZZZZZZZZZ")
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                token = api.service_token
                probe = await http.request(method.upper(), url, content=b"{",
                                           headers={"Authorization": f"Bearer {token}"})
                if probe.status_code == 401:  # a user route
                    token = user_token("1")
                headers = {"Authorization": f"Bearer {token}",
                           "Content-Type": "application/json"}
                bad: list[bytes] = [b"", b"{", b"[1,", b"null", b"[]", b"7", b'"x"', b"\xff\xfe",
                                    b'{"no_such_field_anywhere": 1}',
                                    b'{"data": ' + b"[" * 1800 + b"]" * 1800 + b"}",
                                    httpx.Request("GET", "/", json=_wrong_types(spec, schema))
                                    .content]
                for content in bad:
                    r = await http.request(method.upper(), url, content=content, headers=headers)
                    assert 400 <= r.status_code < 500, (method, url, content, r.status_code,
                                                        r.text)
                    assert r.json()["error"], (method, url, content)
                    tried += 1
                huge = b'{"x": "' + b"a" * (limit + 10) + b'"}'
                r = await http.request(method.upper(), url, content=huge, headers=headers)
                assert r.status_code == 413 and r.json()["error"] == "too_large", (method, url)

                async def chunks():
                    for _ in range(limit // 1000 + 2):
                        yield b" " * 1000
                r = await http.request(method.upper(), url, content=chunks(), headers=headers)
                assert r.status_code == 413, (method, url, "chunked", r.status_code)
        assert tried >= 4 * 10  # topic events, settings POST, PUT, PATCH at least
        r = await http.get("/no/such/route")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = await http.request("PATCH", "/api/v1/settings",
                               headers={"Authorization": f"Bearer {api.service_token}"})
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert "Traceback" not in api.proc.output()
