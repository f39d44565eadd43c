"""docs/ops/prometheus-rules.yml and docs/ops/grafana-dashboard.json: valid, and naming only
metrics that real Vestnik processes export once a notice, a forward and a dead letter
went through them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import httpx
import pytest
import yaml
from ops_support import PROCESSES, start_ops
from prometheus_client.parser import text_string_to_metric_families

from support import ROOT, SSE, base_env, eventually, need_tool, vestnik_argv
from vestnik.streams.keys import USER_TOPIC
from vestnik.streams.schemas import User, json_encode

RULES = ROOT / "docs" / "ops" / "prometheus-rules.yml"
DASHBOARD = ROOT / "docs" / "ops" / "grafana-dashboard.json"
METRICS_DOC = ROOT / "docs" / "ops" / "metrics.md"
NAME = re.compile(r"\bvestnik_[a-z0-9_]+\b")
FROM_PROMETHEUS = {"up"}  # Prometheus's own series of every scrape target
# series that exist only once something happened: driven below, so they must be there
DRIVEN = {"vestnik_consumer_group_lag", "vestnik_consumer_group_pending", "vestnik_dead_letters",
          "vestnik_notices_dead_total", "vestnik_forward_backlog",
          "vestnik_forward_send_seconds_bucket", "vestnik_forward_attempts_total",
          "vestnik_sse_clients", "vestnik_wrapper_alert_up", "vestnik_build_info"}
SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def panel_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def test_promtool_accepts_the_rules(tmp_path):
    promtool = need_tool(shutil.which("promtool"), "no promtool (Debian's prometheus)")
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for r in rules:  # an alert says what happened and what to do
        assert r["annotations"]["summary"] and len(r["annotations"]["description"]) > 80, r
    assert any("up{" in r["expr"] for r in rules)  # a process down is an alert too


def test_dashboard_is_grafana_json_with_a_query_per_panel():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 39 and dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["title"] and p["type"] in {"timeseries", "stat", "table"}, p
        assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"]), p


async def test_every_metric_named_exists_in_a_real_process(start_api, start_proc, tmp_path,
                                                         redis, keys, redis_url, smtp,
                                                         user_token):
    mail = {"VESTNIK_SMTP_URL": smtp.url, "VESTNIK_SMTP_FROM": "vestnik@example.org"}
    api = start_api(**mail)
    running = [start_ops(start_proc, name, tmp_path, **mail) for name in PROCESSES]
    for ops in running:
        await ops.ready()
    # a notice forwarded by email, a dead letter (the wrapper's alert printed another),
    # an SSE client: the labelled series exist once these went through
    await redis.hset(keys.state(USER_TOPIC), "7", json_encode(User(id="7",
                                                                   email="u7@example.org")))
    sent = subprocess.run(vestnik_argv("send", "--alert", "disk", "--title", "full",
                                       "--recipients", "7", "--channels", '{"email": {}}',
                                       "--forward-after", "0"),
                          env=base_env(redis_url), cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert sent.returncode == 0, sent.stderr
    await redis.xadd(keys.notices, {"nonsense": "1"})
    sse = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={user_token('1')}").connect()
    await eventually(lambda: _mailed(smtp), timeout=30, what="the forward's email")

    wanted = {n for e in rule_exprs() + panel_exprs() for n in NAME.findall(e)}
    prose = set(NAME.findall(RULES.read_text())) | set(NAME.findall(METRICS_DOC.read_text()))

    ports = [api.port] + [ops.port for ops in running]

    async def missing() -> set[str]:
        names, families, samples = _scrape(ports)
        # expressions need a series' exact name (`_total`, `_bucket`); prose may name the
        # family (a histogram's base name)
        return (wanted - names) | (prose - names - families) | (DRIVEN - samples)

    async def all_there() -> bool:
        return not await missing()

    try:  # the center and forwarder sample their gauges every few seconds
        await eventually(all_there, timeout=30, interval=0.5, what="every named metric")
    except AssertionError:
        pytest.fail(f"named but not exported: {sorted(await missing())}")
    finally:
        if sse.writer is not None:
            sse.writer.close()
    _, families, _ = _scrape(ports)
    documented = set(NAME.findall(METRICS_DOC.read_text()))
    undocumented = {f for f in families if f.startswith("vestnik_")
                    and not f.endswith("_created")  # the text parser's view of a timestamp
                    and not {f, f + "_total"} & documented}
    assert not undocumented, f"add to docs/ops/metrics.md: {sorted(undocumented)}"
    selected = {n for e in rule_exprs() + panel_exprs()
                for n in re.findall(r"\b([a-z_][a-z0-9_]*)(?=\{|\[)", e)}
    assert {n for n in selected if not n.startswith("vestnik_")} <= FROM_PROMETHEUS


async def _mailed(smtp) -> bool:
    return len(smtp.mails) >= 1


def _scrape(ports: list[int]) -> tuple[set[str], set[str], set[str]]:
    """What a query may name (each family's series names by its type, e.g. a counter's
    `_total`, a histogram's `_bucket`: a family without series yet still declares them),
    the family names, and the series there are samples of, over every process's /metrics."""
    names: set[str] = set()
    families: set[str] = set()
    samples: set[str] = set()
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            families.add(family.name)
            names.update(family.name + s for s in SERIES.get(family.type, ("",)))
            samples.update(s.name for s in family.samples)
    return names | samples, families, samples
