"""deploy/alerts/disk-usage.toml, the alert deploy/compose.yaml wraps, runs as shipped: the
package's demo alert program (`python -m vestnik.app.demo_alert`), found on PATH the way
the image has it, turns a VM's disk crossing the setting's threshold into a notice."""

from __future__ import annotations

import os
import sys

from wrapping import metric, notices, publish, put_setting, setting

from support import ROOT, eventually

ALERT = ROOT / "deploy" / "alerts" / "disk-usage.toml"


async def test_the_deployed_alert_sends_a_notice_when_a_disk_fills(redis, keys, wrap):
    await put_setting(redis, keys, setting("s1", "disk-usage", {"threshold": 90}))
    await publish(redis, keys, "vm", "7", {"id": 7, "name": "web-7", "disk": 40}, op="create")
    # `python` is this venv's, as in the image it is the one Vestnik is installed in
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    w = wrap(ALERT, PATH=path)

    async def ready():
        assert w.proc.proc.poll() is None, w.proc.output()
        return metric(w.metrics_port, "vestnik_wrapper_lines_out_total", type="ready") >= 1

    await eventually(ready, timeout=20, what="the alert's snapshot")
    assert await notices(redis, keys) == []  # 40 %: under the threshold
    await publish(redis, keys, "vm", "7", {"id": 7, "name": "web-7", "disk": 95})

    async def notice():
        assert w.proc.proc.poll() is None, w.proc.output()
        found = await notices(redis, keys)
        return found[0] if found else None

    n = await eventually(notice, timeout=20, what="the disk notice")
    assert n.get("alert") == "disk-usage" and n.get("setting_id") == "s1", n
    assert "web-7" in n["title"] and n["severity"] == "warning"
