"""/openapi.json of a real api: every query parameter has a concrete type (bounds, pattern,
length or enum: what the route accepts), every operation documents the error answers it
can give with the error body and its headers; and the api does what the document says: a
bad value of each query parameter is a documented 400 whose body names the parameter."""

from __future__ import annotations

from typing import Any

import pytest

from support import Api

ERROR_REF = "#/components/schemas/ErrorBody"
NOT_API = {"pages"}  # HTML pages and static JSON: no token, no error answers of their own


@pytest.fixture
async def spec(api: Api) -> dict[str, Any]:
    async with api.client() as c:
        r = await c.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in spec["paths"].items()
            for method, op in item.items() if not NOT_API & set(op.get("tags", ()))
            and path != "/openapi.json"]


def query_params(op: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in op.get("parameters", ()) if p["in"] == "query"]


def untyped(schema: dict[str, Any]) -> str | None:
    """Why a query parameter's schema says too little, or None when it is concrete."""
    kind = schema.get("type")
    if kind == "boolean" or "enum" in schema or "const" in schema:
        return None
    if kind in ("integer", "number"):
        missing = [k for k in ("minimum", "maximum") if k not in schema]
        return f"{kind} without {' and '.join(missing)}" if missing else None
    if kind == "string":
        return None if "pattern" in schema or "maxLength" in schema else "string, unbounded"
    return f"no concrete type: {schema}"


async def test_every_query_parameter_has_a_concrete_type(spec: dict[str, Any]):
    seen, bad = 0, []
    for method, path, op in operations(spec):
        for p in query_params(op):
            seen += 1
            why = untyped(p["schema"])
            if why or not p.get("description"):
                bad.append(f"{method.upper()} {path} ?{p['name']}: {why or 'no description'}")
    assert bad == []
    assert seen >= 10  # settings, feed, both streams, snooze: the walk saw them


def expected_errors(method: str, op: dict[str, Any]) -> set[str]:
    """What any such operation can answer, whatever the route (app/http.py's contract)."""
    codes = {"503"}
    if op.get("security"):
        codes |= {"401", "403"} | ({"429"} if method in ("post", "put", "patch", "delete")
                                   else set())
    if "requestBody" in op:
        codes |= {"400", "413", "422"}
    if query_params(op):
        codes.add("400")
    if any(p["in"] == "path" for p in op.get("parameters", ())):
        codes |= {"404", "422"}
    return codes


async def test_every_operation_documents_its_errors_with_body_and_headers(
        spec: dict[str, Any]):
    assert {"error", "detail"} <= set(spec["components"]["schemas"]["ErrorBody"]["required"])
    bad = []
    for method, path, op in operations(spec):
        name = f"{method.upper()} {path}"
        responses = op["responses"]
        missing = expected_errors(method, op) - set(responses)
        if missing:
            bad.append(f"{name}: no {sorted(missing)}")
        for code, answer in responses.items():
            if int(code) < 400 or (path, code) == ("/readyz", "503"):  # readyz: its checks
                continue
            schema = answer.get("content", {}).get("application/json", {}).get("schema")
            if schema != {"$ref": ERROR_REF}:
                bad.append(f"{name} {code}: body {schema}, not ErrorBody")
            if not answer.get("description") or answer["description"] == "Error":
                bad.append(f"{name} {code}: says nothing of what went wrong")
            headers = answer.get("headers", {})
            want = {"401": "WWW-Authenticate", "429": "Retry-After", "503": "Retry-After"}
            if code in want and not headers.get(want[code], {}).get("required"):
                bad.append(f"{name} {code}: no {want[code]} header")
    assert bad == []


def bad_values(schema: dict[str, Any]) -> list[str]:
    """Values the schema refuses (each one alone is enough to refuse the request)."""
    if schema["type"] == "boolean":
        return ["maybe"]
    if schema["type"] == "integer":
        return ["x", "1.5", str(schema["maximum"] + 1), str(schema["minimum"] - 1)]
    values = ["bad\x01value"]  # every string pattern here refuses control characters
    if "maxLength" in schema:
        values.append("a" * (schema["maxLength"] + 1))
    return values


async def test_a_bad_query_value_is_a_documented_400_naming_the_parameter(
        api: Api, spec: dict[str, Any], user_token):
    user = user_token("1")
    tried = []
    for method, path, op in operations(spec):
        if not query_params(op):
            continue
        url = path.replace("{topic}", "vm")
        token = user if path.startswith("/api/v1/me/") else api.service_token
        async with api.client(token) as c:
            for p in query_params(op):
                for value in bad_values(p["schema"]):
                    r = await c.request(method.upper(), url, params={p["name"]: value})
                    what = f"{method.upper()} {path} ?{p['name']}={value[:20]!r}"
                    assert r.status_code == 400, (what, r.status_code, r.text)
                    assert "400" in op["responses"], what
                    body = r.json()
                    assert body["error"] == "bad_request", (what, body)
                    assert body["path"] == p["name"], (what, body)
                    assert f"`{p['name']}`" in body["detail"], (what, body)
                    tried.append(what)
    assert len(tried) >= 20, tried


async def test_an_empty_or_unknown_query_parameter_changes_nothing(api: Api):
    """`?limit=` is the default and `?utm_source=x` is ignored: links with them still work."""
    async with api.client() as c:
        for i in range(3):
            assert (await c.post("/api/v1/settings", json={"name": f"q{i}"})).status_code == 201
        plain = (await c.get("/api/v1/settings")).json()
        odd = (await c.get("/api/v1/settings", params={"limit": "", "name": "",
                                                        "utm_source": "x"})).json()
        two = await c.get("/api/v1/settings", params={"limit": "2"})
    assert odd == plain and len(plain["items"]) == 3
    assert len(two.json()["items"]) == 2 and two.json()["next"]

