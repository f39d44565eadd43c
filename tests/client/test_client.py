"""vestnik.client against a real api and a real center, sync and async alike: what a product
sends over HTTP or straight to Redis lands in the recipient's feed, resolves flip the
incident, published entities are in the snapshot, settings go round trip with If-Match,
and every refusal is the exception a product catches, naming the field."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from clients import KINDS, call, close, feed

from support import Api, eventually
from vestnik.client import (
    BadRequest,
    Conflict,
    NotFound,
    NotSupported,
    PreconditionFailed,
    Unauthorized,
    Unavailable,
)


def target(transport: str, api: Api, redis_url: str) -> str:
    return api.base if transport == "http" else redis_url


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("transport", ["http", "redis"])
async def test_send_lands_in_the_feed_and_resolve_flips_it(
        clients, kind: str, transport: str, api: Api, redis_url: str, start_proc,
        user_token: Callable[..., str]):
    start_proc("center", "--no-forward")
    client = clients(kind, transport, target(transport, api, redis_url), api.service_token)
    nid = await call(client.send, "disk", "Disk 95% on web-1", recipients=["1"],
                     severity="warning", dedup_key="web-1", data={"pct": 95},
                     entity={"topic": "vm", "id": "42"})
    [item] = await feed(api, user_token("1"))
    assert (item["id"], item["title"], item["severity"], item["status"]) == (
        nid, "Disk 95% on web-1", "warning", "firing")
    assert item["data"] == {"pct": 95} and item["entity"] == {"topic": "vm", "id": "42"}

    sid = await call(client.resolve, "disk", "web-1")
    assert "-" in sid  # a stream id on vn:notices

    async with api.client(user_token("1")) as http:
        async def resolved() -> bool:
            items = (await http.get("/api/v1/me/notices")).json()["items"]
            return items[0]["status"] == "resolved"

        await eventually(resolved, timeout=20, what="the incident resolved")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("transport", ["http", "redis"])
async def test_an_idempotency_key_sends_once(clients, kind: str, transport: str, api: Api,
                                             redis_url: str):
    client = clients(kind, transport, target(transport, api, redis_url), api.service_token)
    first = await call(client.send, "disk", "once", recipients=["1"],
                       idempotency_key="k-1")
    again = await call(client.send, "disk", "once", recipients=["1"],
                       idempotency_key="k-1")
    assert again == first
    with pytest.raises(Conflict) as e:
        await call(client.send, "disk", "other", recipients=["1"], idempotency_key="k-1")
    assert e.value.field == "Idempotency-Key"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("transport", ["http", "redis"])
async def test_publish_shows_in_the_topic_snapshot(clients, kind: str, transport: str, api: Api,
                                                   redis_url: str):
    client = clients(kind, transport, target(transport, api, redis_url), api.service_token)
    await call(client.publish, "vm", "create", "42", {"id": 42, "name": "web-1"})
    await call(client.publish, "vm", "update", "42", {"id": 42, "name": "web-2"})
    await call(client.publish, "vm", "create", "7", {"id": 7})
    await call(client.publish, "vm", "delete", "7")
    async with api.client() as http:
        snap = (await http.get("/api/v1/topics/vm")).json()
    assert snap["items"] == {"42": {"id": 42, "name": "web-2"}}
    with pytest.raises(BadRequest) as e:
        await call(client.publish, "no spaces", "create", "1", {})
    assert e.value.field == "topic"


@pytest.mark.parametrize("kind", KINDS)
async def test_settings_round_trip_with_if_match(clients, kind: str, api: Api):
    client = clients(kind, "http", api.base, api.service_token)
    s = client.settings
    made = await call(s.create, {"name": "disk", "channel": {"ui": {"users": [1]}}})
    assert made.channel.targets["ui"].users == ("1",)
    assert (await call(s.get, made.id)).version == made.version
    assert [x.id for x in (await call(s.list, "disk")).items] == [made.id]

    patched = await call(s.patch, made.id, {"enabled": False}, version=made)
    assert (patched.enabled, patched.version) == (False, made.version + 1)
    with pytest.raises(PreconditionFailed) as e:  # `made` is stale now
        await call(s.replace, made.id, {"name": "disk"}, version=made)
    assert isinstance(e.value, Conflict) and e.value.status == 412
    replaced = await call(s.replace, made.id, {"name": "disk", "send_resolved": True,
                                               "resolve_after": 600},
                          version=patched.version)
    # a replace resets what it leaves out; the incident fields are kept (they were not)
    assert (replaced.send_resolved, replaced.resolve_after, replaced.enabled) == (
        True, 600, True)
    assert (await call(s.get, made.id)).send_resolved

    await call(s.delete, made.id, version=replaced)
    with pytest.raises(NotFound):
        await call(s.get, made.id)


@pytest.mark.parametrize("kind", KINDS)
async def test_deliveries_of_a_notice(clients, kind: str, api: Api, start_proc):
    start_proc("center", "--no-forward")
    client = clients(kind, "http", api.base, api.service_token)
    nid = await call(client.send, "disk", "no channel", recipients=["1"])

    async def stored() -> bool:
        try:
            return (await call(client.deliveries, nid)).items == []
        except NotFound:
            return False

    await eventually(stored, timeout=20, what="the notice stored")
    with pytest.raises(NotFound) as e:
        await call(client.deliveries, "no-such-notice")
    assert e.value.field == "$.id"


@pytest.mark.parametrize("kind", KINDS)
async def test_bad_input_names_the_field(clients, kind: str, start_api, redis_url: str):
    api = start_api(VESTNIK_MAX_RECIPIENTS="2")
    for client in (clients(kind, "http", api.base, api.service_token),
                   clients(kind, "redis", redis_url)):
        with pytest.raises(BadRequest) as e:  # checked before anything is sent
            await call(client.send, "disk", "t", severity="loud")
        assert e.value.field == "$.severity"
        with pytest.raises(BadRequest) as e:
            await call(client.send, "disk", "")
        assert e.value.field == "$.title"
    client = clients(kind, "http", api.base, api.service_token)
    with pytest.raises(BadRequest) as e:  # only the api knows its limit
        await call(client.send, "disk", "t", recipients=["1", "2", "3"])
    assert (e.value.field, e.value.status) == ("$.recipients", 422)
    with pytest.raises(BadRequest) as e:
        await call(client.settings.create, {"name": "disk", "enabled": "maybe"})
    assert e.value.field == "$.enabled"


@pytest.mark.parametrize("kind", KINDS)
async def test_settings_and_deliveries_over_redis_say_http_only(clients, kind: str,
                                                                redis_url: str):
    client = clients(kind, "redis", redis_url)
    for method, args in ((client.settings.list, ()), (client.deliveries, ("x",))):
        with pytest.raises(NotSupported, match="only over HTTP"):
            await call(method, *args)


@pytest.mark.parametrize("kind", KINDS)
async def test_secrets_stay_out_of_errors_and_reprs(clients, kind: str, api: Api):
    token = "wrong-token-s3cr3t"
    client = clients(kind, "http", api.base, token)
    with pytest.raises(Unauthorized) as e:
        await call(client.send, "disk", "t", recipients=["1"])
    assert token not in f"{e.value} {e.value!r} {client!r}"
    client = clients(kind, "redis", "redis://:hunter2pw@127.0.0.1:1/0")  # nothing listens on 1
    with pytest.raises(Unavailable) as u:
        await call(client.send, "disk", "t", recipients=["1"])
    assert "hunter2pw" not in f"{u.value} {u.value!r} {client!r}"
    assert "127.0.0.1:1" in str(u.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_over_redis_with_partitions_sends_spread_and_resolves_follow(
        kind: str, api: Api, redis_url: str, redis, start_proc,
        user_token: Callable[..., str]):
    """`Client.redis(..., ingest_partitions=N)`: plain sends spread over the N streams as
    Vestnik's own writers spread them, an incident's resolve follows its notice into its
    stream, a retry under one Idempotency-Key lands once; a center with the same count
    serves them all."""
    from vestnik.client import AsyncClient, Client
    from vestnik.streams.keys import Keys

    cls = Client if kind == "sync" else AsyncClient
    client = cls.redis(redis_url, ingest_partitions=4)
    keys = Keys.for_url("vn:", redis_url, ingest_partitions=4)
    try:
        for i in range(8):
            await call(client.send, "disk", f"plain {i}", recipients=["1"])
        first = await call(client.send, "disk", "once", recipients=["1"], idempotency_key="k")
        assert await call(client.send, "disk", "once", recipients=["1"],
                          idempotency_key="k") == first
        nid = await call(client.send, "disk", "incident", recipients=["1"], dedup_key="web-1")
        await call(client.resolve, "disk", "web-1")
    finally:
        await close(client)
    lengths = [await redis.xlen(s) for s in keys.ingest_streams]
    assert all(lengths) and sum(lengths) == 11, lengths
    start_proc("center", "--no-forward", VESTNIK_INGEST_PARTITIONS="4")
    items = await feed(api, user_token("1"), want=10)
    assert sorted(i["title"] for i in items) == sorted(
        [*(f"plain {i}" for i in range(8)), "once", "incident"])
    async with api.client(user_token("1")) as http:
        async def resolved() -> bool:
            got = (await http.get("/api/v1/me/notices")).json()["items"]
            return any(i["id"] == nid and i["status"] == "resolved" for i in got)

        await eventually(resolved, timeout=20, what="the incident resolved")
