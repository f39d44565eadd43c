"""Prometheus Alertmanager as a source: a real Alertmanager's webhook reaches the inbox of the
user its setting names, and its resolve follows; the mapping of hostile payloads; auth."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from alertmanager_support import Alertmanager

from support import Api, eventually, run_keys
from vestnik.app.sources import map_payload
from vestnik.streams.errors import BadInput
from vestnik.streams.schemas import (
    MAX_ALERTS,
    AlertmanagerPayload,
    NoticeIn,
    ResolveIn,
    decode_json,
    resolve_fields,
)

K = run_keys()
ROUTE = "/api/v1/sources/alertmanager"
FP = "5ab1c2d3e4f50617"


def alert(status: str = "firing", **over: Any) -> dict[str, Any]:
    """One alert of a webhook payload, as Alertmanager 0.25 writes it."""
    out: dict[str, Any] = {
        "status": status,
        "labels": {"alertname": "DiskFull", "severity": "critical", "instance": "web-1"},
        "annotations": {"summary": "Disk 95% on web-1", "description": "/ is 95% full"},
        "startsAt": "2026-12-04T18:20:00.123456789Z",
        "endsAt": "2026-12-04T18:25:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=disk",
        "fingerprint": FP,
    }
    out.update(over)
    return out


def payload(*alerts: Any, version: Any = "4") -> dict[str, Any]:
    return {"version": version, "groupKey": '{}:{alertname="DiskFull"}', "truncatedAlerts": 0,
            "status": "firing", "receiver": "vestnik", "groupLabels": {"alertname": "DiskFull"},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am:9093",
            "alerts": list(alerts)}


def mapped(*alerts: Any):
    return map_payload(decode_json(json.dumps(payload(*alerts)).encode(), AlertmanagerPayload))


async def add_setting(api: Api, name: str, *users: str) -> None:
    async with api.client() as svc:
        r = await svc.post("/api/v1/settings",
                           json={"name": name, "channel": {"ui": {"users": list(users)}}})
        assert r.status_code == 201, r.text


async def inbox(api: Api, token: str) -> list[dict[str, Any]]:
    async with api.client(token) as http:
        r = await http.get("/api/v1/me/notices")
        assert r.status_code == 200, r.text
        return r.json()["items"]


async def resolve_entries(redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()}
            for _, f in await redis.xrange(K.notices) if f.get(b"op") == b"resolve"]


# ------------------------------------------------------------------ a real Alertmanager


async def test_a_real_alertmanager_fires_then_resolves_into_the_inbox(
        api: Api, redis, start_proc, user_token, start_alertmanager):
    await add_setting(api, "DiskFull", "1")
    start_proc("center", "--no-forward")
    am: Alertmanager = start_alertmanager(api)
    token = user_token("1")
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    labels = {"alertname": "DiskFull", "severity": "critical", "instance": "web-1"}
    fired = {"labels": labels, "startsAt": starts.isoformat(),
             "annotations": {"summary": "Disk 95% on web-1", "description": "/ is 95% full"},
             "generatorURL": "http://prometheus.example:9090/graph?g0.expr=disk"}
    async with httpx.AsyncClient(base_url=am.base, timeout=10) as http:
        assert (await http.post("/api/v2/alerts", json=[fired])).status_code == 200
        fingerprint = (await http.get("/api/v2/alerts")).json()[0]["fingerprint"]

        async def delivered() -> list[dict[str, Any]]:
            return await inbox(api, token)

        items = await eventually(delivered, timeout=30, what="the firing alert in the inbox")
        assert len(items) == 1
        n = items[0]
        assert (n["alert"], n["title"], n["severity"]) == ("DiskFull", "Disk 95% on web-1",
                                                           "critical")
        assert n["body"] == "/ is 95% full"
        assert n["link"] == "http://prometheus.example:9090/graph?g0.expr=disk"
        assert n["dedup_key"] == fingerprint
        assert n["created_at"] == int(starts.timestamp() * 1000)
        assert n["data"]["labels"] == labels and n["read"] is False
        assert n["status"] == "firing"

        # the same alert, ended a second ago: Alertmanager sends it as resolved
        ends = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        resolved = {**fired, "endsAt": ends.isoformat()}
        assert (await http.post("/api/v2/alerts", json=[resolved])).status_code == 200

        async def resolve_sent() -> list[dict[str, str]]:
            return await resolve_entries(redis)

        entries = await eventually(resolve_sent, timeout=30, what="the resolve on vn:notices")
        assert entries == [{"op": "resolve", "alert": "DiskFull", "dedup_key": fingerprint,
                            "at": str(int(ends.timestamp() * 1000))}]
    # the center applies the resolve: the inbox says so
    async def resolved_in_inbox() -> dict[str, Any] | None:
        got = await inbox(api, token)
        return got[0] if got and got[0].get("status") == "resolved" else None

    n = await eventually(resolved_in_inbox, timeout=30, what="status resolved in the inbox")
    assert n["id"] == items[0]["id"] and n["resolved_at"] == int(ends.timestamp() * 1000)
    # still one notice: neither the resolve nor Alertmanager's sends made another
    assert [i["id"] for i in await inbox(api, token)] == [items[0]["id"]]


# ------------------------------------------------------------- the route, real api + center


async def test_resends_are_one_notice_and_a_bad_alert_does_not_block_the_others(
        api: Api, redis, start_proc, user_token):
    await add_setting(api, "DiskFull", "1")
    start_proc("center", "--no-forward")
    token = user_token("1")
    bad = alert(labels={"alertname": "Disk Full!", "instance": "web-2"}, fingerprint="77")
    body = payload(bad, alert())
    async with api.client() as svc:
        for _ in range(3):  # Alertmanager sends a group again and again
            r = await svc.post(ROUTE, json=body)
            assert r.status_code == 200, r.text
            assert r.json() == {"accepted": 1, "skipped": [{
                "path": "$.alerts[0].labels.alertname",
                "detail": "alertname must be 1-200 letters, digits, `_`, `.`, `:` or `-`"}]}

        async def stored() -> int:
            return await redis.exists(K.notice(mapped(alert()).notices[0].id or ""))

        await eventually(stored, what="the notice stored")
        # a later send with a new value in the annotations folds into the same incident
        changed = alert(annotations={"summary": "Disk 97% on web-1"})
        assert (await svc.post(ROUTE, json=payload(changed))).json() == {"accepted": 1}

        async def folded() -> dict[str, Any] | None:
            items = await inbox(api, token)
            return items[0] if items and items[0].get("repeat") == 1 else None

        n = await eventually(folded, what="the changed send folded")
    items = await inbox(api, token)
    assert len(items) == 1 and items[0]["id"] == n["id"]
    assert n["title"] == "Disk 95% on web-1" and n["dedup_key"] == FP
    assert n["created_at"] == 1796408400123  # startsAt, in ms
    assert await redis.xlen(K.notices) == 4  # 3 sends of one alert, 1 changed one


async def test_version_size_and_auth_are_checked(api: Api, redis, user_token):
    async with api.client() as svc:
        r = await svc.post(ROUTE, json=payload(alert(), version="3"))
        assert r.status_code == 422 and r.json()["path"] == "$.version", r.text
        assert "version" in r.json()["detail"]
        r = await svc.post(ROUTE, json=payload(alert(), version=4))
        assert r.status_code == 422 and r.json()["path"] == "$.version"
        r = await svc.post(ROUTE, json={"alerts": []})
        assert r.status_code == 422 and r.json()["path"] == "$.version"
        r = await svc.post(ROUTE, json=payload(*[alert()] * (MAX_ALERTS + 1)))
        assert r.status_code == 422 and r.json()["path"] == "$.alerts"
        r = await svc.post(ROUTE, json={"version": "4", "alerts": {"0": alert()}})
        assert r.status_code == 422 and r.json()["path"] == "$.alerts"
        r = await svc.post(ROUTE, content=b"{not json", headers={"Content-Type": "text/plain"})
        assert r.status_code == 422
        huge = alert(annotations={"description": "x" * 2_000_000})
        assert (await svc.post(ROUTE, json=payload(huge))).status_code == 413
        assert (await svc.post(ROUTE, json=payload())).json() == {"accepted": 0}
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as anon:
        r = await anon.post(ROUTE, json=payload(alert()))
        assert r.status_code == 401 and "missing token" in r.json()["detail"]
        # the project's rule for service routes: a user token is refused as unauthorized
        r = await anon.post(ROUTE, json=payload(alert()),
                            headers={"Authorization": f"Bearer {user_token('1')}"})
        assert r.status_code == 401 and "service token is required" in r.json()["detail"]
        r = await anon.post(ROUTE, json=payload(alert()),
                            headers={"Cookie": f"vestnik_token={api.service_token}"})
        assert r.status_code == 401
    assert await redis.xlen(K.notices) == 0  # nothing refused was added


# --------------------------------------------------------------------- mapping, no I/O


def test_a_firing_alert_maps_to_a_notice_of_its_incident():
    out = mapped(alert())
    assert out.resolves == [] and out.skipped == []
    (n,) = out.notices
    assert (n.alert, n.title, n.severity, n.body) == ("DiskFull", "Disk 95% on web-1",
                                                     "critical", "/ is 95% full")
    assert n.dedup_key == FP and n.recipients is None and n.created_at == 1796408400123
    assert n.link == "http://prometheus.example:9090/graph?g0.expr=disk"
    assert n.data == {"labels": alert()["labels"], "annotations": alert()["annotations"],
                      "startsAt": "2026-12-04T18:20:00.123+00:00",
                      "generatorURL": "http://prometheus.example:9090/graph?g0.expr=disk"}
    # the id: a ULID at startsAt, the same for the same alert, another for other content
    assert n.id is not None and len(n.id) == 26
    assert mapped(alert()).notices[0].id == n.id
    assert mapped(alert(annotations={"summary": "97%"})).notices[0].id not in (None, n.id)
    assert mapped(alert(startsAt="2026-12-04T19:00:00Z")).notices[0].id[:10] > n.id[:10]
    # it is a notice as POST /notices takes it
    assert msgspec.convert(msgspec.to_builtins(n), NoticeIn) == n


def test_severity_title_and_link_from_what_prometheus_gives():
    def one(**over: Any) -> NoticeIn:
        return mapped(alert(**over)).notices[0]

    sev = {s: one(labels={"alertname": "a", "severity": s}).severity
           for s in ("info", "warning", "critical", "error", " ERROR ", "page", "")}
    assert sev == {"info": "info", "warning": "warning", "critical": "critical",
                   "error": "critical", " ERROR ": "critical", "page": "warning",
                   "": "warning"}
    assert one(labels={"alertname": "a"}).severity == "warning"
    # no summary: the alert name and its labels, sorted
    n = one(labels={"alertname": "Up", "job": "node", "instance": "h:9100"}, annotations={})
    assert n.title == "Up (instance=h:9100, job=node)" and n.body == ""
    assert one(labels={"alertname": "Up"}, annotations={"summary": " \r\n "}).title == "Up"
    # control characters: the title on one line, the body keeps its lines and tabs
    n = one(annotations={"summary": "Disk\r\nBcc: x@evil\x00 full\u2028!",
                         "description": "a\r\nb\rc\td\x00\x1b[31m"})
    assert n.title == "Disk Bcc: x@evil full !" and n.body == "a\nb\nc\td[31m"
    assert len(one(annotations={"summary": "x" * 5000}).title) == 1000
    for url in ("javascript:alert(1)", "data:text/html,x", "ftp://h/x", "//h/x", "/graph",
                "http://", "http://h/\r\nX-Evil: 1", "http://h/ x", "http://[::1/x", ""):
        n = one(generatorURL=url)
        assert n.link is None and "generatorURL" not in n.data, url
    assert one(generatorURL="HTTPS://h:1/x?a=b").link == "HTTPS://h:1/x?a=b"


def test_a_resolved_alert_maps_to_a_resolve_entry():
    out = mapped(alert("resolved"), alert())
    # firing entries first, then resolves, whatever the payload's order
    assert [e.get("op") for e in out.fields()] == [None, "resolve"]
    assert out.resolves == [ResolveIn(alert="DiskFull", dedup_key=FP, at=1796408700000)]
    assert resolve_fields(out.resolves[0]) == {"op": "resolve", "alert": "DiskFull",
                                               "dedup_key": FP, "at": "1796408700000"}
    # no usable endsAt: the center's time
    for ends in ("0001-01-01T00:00:00Z", None):
        got = mapped(alert("resolved", endsAt=ends)).resolves
        assert got == [ResolveIn(alert="DiskFull", dedup_key=FP)]
    assert resolve_fields(ResolveIn(alert="a", dedup_key="f", setting_id="s")) == {
        "op": "resolve", "alert": "a", "dedup_key": "f", "setting_id": "s"}


@pytest.mark.parametrize(("bad", "path"), [
    (alert(labels={"instance": "x"}), "$.alerts[0].labels.alertname"),
    (alert(labels={"alertname": ""}), "$.alerts[0].labels.alertname"),
    (alert(labels={"alertname": "a\nb"}), "$.alerts[0].labels.alertname"),
    (alert(labels={"alertname": "x" * 201}), "$.alerts[0].labels.alertname"),
    (alert(labels={"alertname": "vn:{u:1}"}), "$.alerts[0].labels.alertname"),
    (alert(labels={"alertname": 5}), "$.alerts[0].labels[...]"),
    (alert(labels={"alertname": "a", "n": None}), "$.alerts[0].labels[...]"),
    (alert(labels={"alertname": "a", "x\x00": "1"}), "$.alerts[0].labels"),
    (alert(labels={"alertname": "a", **{f"l{i}": "v" for i in range(100)}}),
     "$.alerts[0].labels"),
    (alert(labels={"alertname": "a", "big": "v" * 4097}), "$.alerts[0].labels[...]"),
    (alert(labels=["alertname"]), "$.alerts[0].labels"),
    (alert(annotations={str(i): "v" for i in range(101)}), "$.alerts[0].annotations"),
    (alert(annotations={"summary": {"a": 1}}), "$.alerts[0].annotations[...]"),
    (alert(fingerprint=""), "$.alerts[0].fingerprint"),
    (alert(fingerprint="abc\n"), "$.alerts[0].fingerprint"),
    (alert(fingerprint="../x"), "$.alerts[0].fingerprint"),
    (alert(fingerprint=12), "$.alerts[0].fingerprint"),
    (alert(status="pending"), "$.alerts[0].status"),
    (alert(startsAt="yesterday"), "$.alerts[0].startsAt"),
    (alert(startsAt="0001-01-01T00:00:00Z"), "$.alerts[0].startsAt"),
    (alert(startsAt="1969-12-31T23:59:59Z"), "$.alerts[0].startsAt"),
    (alert(generatorURL=["http://x"]), "$.alerts[0].generatorURL"),
    (alert(generatorURL="http://h/" + "x" * 5000), "$.alerts[0].generatorURL"),
    ({k: v for k, v in alert().items() if k != "fingerprint"}, "$.alerts[0].fingerprint"),
    ({k: v for k, v in alert().items() if k != "startsAt"}, "$.alerts[0].startsAt"),
    ({k: v for k, v in alert().items() if k != "labels"}, "$.alerts[0].labels"),
    ("firing", "$.alerts[0]"),
    (None, "$.alerts[0]"),
])
def test_a_bad_alert_is_skipped_by_its_path_and_the_others_go_on(bad, path):
    out = mapped(bad, alert(fingerprint="1"), alert("resolved", fingerprint="2"))
    assert [s.path for s in out.skipped] == [path]
    assert out.skipped[0].detail and "(at $.labels" not in out.skipped[0].detail
    assert [n.dedup_key for n in out.notices] == ["1"]
    assert [r.dedup_key for r in out.resolves] == ["2"]


def test_a_payload_of_another_version_is_refused():
    for version in ("3", "", "4.0", "x" * 10_000):
        with pytest.raises(BadInput) as e:
            mapped_version(version)
        assert e.value.field == "$.version" and len(e.value.detail) < 200


def mapped_version(version: str):
    return map_payload(decode_json(json.dumps(payload(alert(), version=version)).encode(),
                                   AlertmanagerPayload))


def test_unknown_fields_of_a_newer_alertmanager_are_ignored():
    out = map_payload(decode_json(json.dumps({
        **payload(alert(silencedBy=[], inhibitedBy=[], extra={"a": 1})),
        "newField": True}).encode(), AlertmanagerPayload))
    assert len(out.notices) == 1 and out.skipped == []


def test_with_ingest_partitions_an_alerts_firing_and_resolved_share_a_stream():
    """VESTNIK_INGEST_PARTITIONS > 1: each alert's entries go to the partition of its
    fingerprint (its dedup key), so its resolved entry follows its firing one in order;
    different alerts spread."""
    from vestnik.streams.keys import Keys

    keys = Keys("vn:", ingest_partitions=4)
    fps = [f"{i:016x}" for i in range(12)]
    firing = mapped(*(alert(fingerprint=fp) for fp in fps)).streams(keys)
    resolved = mapped(*(alert("resolved", fingerprint=fp) for fp in fps)).streams(keys)
    assert firing == resolved
    assert len(set(firing)) > 1
