"""Fixtures of the source tests: a real Prometheus Alertmanager (Debian's
`prometheus-alertmanager`, installed by scripts/bootstrap.sh) whose webhook receiver points at
a Vestnik api."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alertmanager_support import Alertmanager, alertmanager_binary

from support import Api, Proc, need_tool, wait_http
from vestnik.streams.redis_server import free_port


@pytest.fixture
def start_alertmanager(tmp_path: Path) -> Iterator[Callable[[Api], Alertmanager]]:
    """Factory: an Alertmanager on a free port, clustering off, that sends every group to
    `api`'s `/api/v1/sources/alertmanager` with its service token, within a second of a
    change (group_wait 0s, group_interval 1s), resolved alerts too."""
    binary = need_tool(alertmanager_binary(),
                       "no Alertmanager binary (Debian's prometheus-alertmanager)")
    started: list[Proc] = []

    def start(api: Api) -> Alertmanager:
        port = free_port()
        # YAML is a superset of JSON: no YAML library needed to write the config
        config = {
            "route": {"receiver": "vestnik", "group_by": ["alertname", "instance"],
                      "group_wait": "0s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "vestnik", "webhook_configs": [{
                "url": f"{api.base}/api/v1/sources/alertmanager", "send_resolved": True,
                "max_alerts": 1000,
                "http_config": {"authorization": {"credentials": api.service_token}}}]}],
        }
        cfg = tmp_path / f"alertmanager-{port}.yml"
        cfg.write_text(json.dumps(config))
        storage = tmp_path / f"alertmanager-{port}"
        storage.mkdir()
        proc = Proc([binary, f"--config.file={cfg}", f"--storage.path={storage}",
                     f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                     "--log.level=debug"], {"PATH": "/usr/bin:/bin"},
                    tmp_path / f"alertmanager-{port}.log").start()
        started.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/-/ready", timeout=30, proc=proc)
        return Alertmanager(base, proc)

    yield start
    for p in started:
        p.stop()
