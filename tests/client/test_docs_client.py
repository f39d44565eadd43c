"""docs/client.md runs: each fenced python block, in order and in one namespace (as a
reader would paste them), against a real api and its Redis, with the variables the page
names; then what the examples did is where a user would look for it."""

from __future__ import annotations

import os
import re

import pytest

from support import ROOT, Api
from vestnik.streams.keys import Keys
from vestnik.streams.redis import blocking

PAGE = ROOT / "docs" / "client.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_the_page_has_examples_of_every_call():
    code = "\n".join(BLOCK.findall(PAGE.read_text()))
    for call in ("send(", "resolve(", "publish(", "settings.create(", "settings.patch(",
                 "settings.replace(", "settings.get(", "settings.list(", "settings.delete(",
                 "deliveries(", "Client.redis(", "AsyncClient.http(", "AsyncClient.redis("):
        assert call in code, f"docs/client.md has no example of {call}"


def test_the_examples_run_against_a_real_api(api: Api, redis_url: str,
                                             monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("VESTNIK_API_URL", api.base)
    monkeypatch.setenv("VESTNIK_TOKEN", api.service_token)
    monkeypatch.setenv("VESTNIK_REDIS_URL", redis_url)
    namespace: dict[str, object] = {"__name__": "docs_client"}
    blocks = BLOCK.findall(PAGE.read_text())
    assert len(blocks) >= 8
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{PAGE}:block{i + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"docs/client.md block {i + 1} failed: {e!r}\n{block}") from e
    out = capsys.readouterr().out
    assert "$.severity" in out  # the errors example caught BadRequest naming the field
    assert os.environ["VESTNIK_TOKEN"] not in out
    r, keys = blocking(redis_url, name="test"), Keys.for_url("vn:", redis_url)
    try:
        entries = [f for _, f in r.xrange(keys.notices)]
        titles = {f[b"title"] for f in entries if b"title" in f}
        assert {b"Disk 95% on web-1", b"Backup of db-1 failed", b"Disk 95% on web-2",
                b"Disk 95% on web-3"} <= titles
        assert sum(f.get(b"op") == b"resolve" for f in entries) == 2
        assert r.hlen(keys.settings) == 0  # every example deleted what it created
    finally:
        r.close()
    import httpx
    snap = httpx.get(f"{api.base}/api/v1/topics/vm", timeout=10,
                     headers={"Authorization": f"Bearer {api.service_token}"}).json()
    assert snap["items"]["42"]["status"] == "running"
    assert snap["items"]["43"]["name"] == "web-3"
