"""`vestnik up --demo` with nothing configured: it gets ready, its alert (under the wrapper)
produces a notice the inbox shows, an unread one is emailed to the demo SMTP sink and shown
at /demo/mail, and a SIGTERM leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
from browser_support import console_errors
from playwright.async_api import expect

from support import Proc, eventually, vestnik_argv, wait_http
from vestnik.streams.redis_server import free_port, running

pytestmark = pytest.mark.browser


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out += [int(child), *descendants(int(child))]
    except OSError:  # the process ended meanwhile
        pass
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def test_up_demo_end_to_end(tmp_path: Path, context, shot):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    env["VESTNIK_FORWARD_AFTER"] = "8"  # the demo's 20 s, shortened for the test
    proc = Proc(vestnik_argv("up", "--demo", "--port", str(port)), env, tmp_path / "up.log",
                cwd=tmp_path).start()
    base = f"http://127.0.0.1:{port}"
    pids: list[int] = []
    try:
        wait_http(base + "/readyz", timeout=40, proc=proc)

        async def printed() -> re.Match[str] | None:
            return re.search(r"inbox \(Alice\)\s+(\S+)", proc.output())

        inbox_url = (await eventually(printed, timeout=20, what="the demo's URLs")).group(1)
        assert inbox_url.startswith(base + "/?token=")
        out = proc.output()
        for line in ("inbox (Bob)", "live VMs", "admin", "mail"):
            assert re.search(rf"^\s+{re.escape(line)}\s+{re.escape(base)}/", out, re.M), line

        async def family() -> list[int] | None:
            """The private redis-server, the wrapper and the alert under it, once all run."""
            pids = descendants(proc.pid)
            cmdlines = b"\n".join(_cmdline(p) for p in pids)
            wanted = (b"redis-server", b"wrap", b"demo_alert.py")
            return pids if all(w in cmdlines for w in wanted) else None

        pids = await eventually(family, timeout=20, what="redis, wrapper and alert running")

        page = await context.new_page()
        errors = console_errors(page)
        await page.goto(inbox_url)
        inbox = page.locator("vestnik-inbox")
        notice = inbox.locator("li", has_text=re.compile(r"Disk \d+% full on "))
        await expect(notice.first).to_be_visible(timeout=45_000)
        await expect(inbox.locator(".head-bell .badge")).not_to_have_text("0")
        await shot(page, "inbox")
        # Alice reads the first one at once (its link leads to the VM table); Bob does not
        read_id = await notice.first.get_attribute("data-id")
        await notice.first.locator(".hit").click()
        await page.wait_for_url(base + "/demo/vms")

        # the live VM table of the demo (the token is kept for the tab)
        await expect(page.locator("#vms tbody tr")).to_have_count(6)
        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.locator('#vms tbody tr[data-id="7"] [data-status]')).to_have_text(
            "running", timeout=20_000)
        await shot(page, "vms")

        # unread after forward_after: emailed to the sink, shown at /demo/mail
        await page.goto(base + "/demo/mail")
        mail = page.locator(".mail", has_text=re.compile(r"Disk \d+% full on "))
        await expect(mail.first).to_be_visible(timeout=60_000)
        # Bob left it unread: his copy was emailed
        await expect(page.locator(".mail", has_text="bob@example.test").first).to_be_visible()
        await mail.first.locator("summary").click()
        await expect(mail.first.locator("iframe, pre").first).to_be_visible()
        await shot(page, "mail")
        # the notice Alice read was emailed to Bob only
        admin_url = re.search(r"^\s+admin\s+(\S+)", proc.output(), re.M).group(1)
        service = admin_url.split("token=", 1)[1]
        async with httpx.AsyncClient(base_url=base, headers={
                "Authorization": f"Bearer {service}"}) as http:

            async def forwarded() -> dict[str, str] | None:
                r = await http.get(f"/api/v1/notices/{read_id}/deliveries")
                got = {d["uid"]: d["status"] for d in r.json().get("items", [])
                       if d["channel"] == "email"}
                return got if got.get("2") == "sent" and "1" in got else None

            statuses = await eventually(forwarded, timeout=30, what="the read notice handled")
        assert statuses == {"1": "skipped_read", "2": "sent"}
        # the admin page (service token from the banner) shows that delivery log
        await page.goto(admin_url)
        await expect(page.locator("#settings tbody tr", has_text="disk-usage")).to_have_count(1)
        await page.get_by_label("Notice id").fill(read_id)
        await page.get_by_role("button", name="Show").click()
        rows = page.locator("#deliveries tbody tr")
        await expect(rows.filter(has_text="skipped (read)")).to_contain_text("email")
        await expect(rows.filter(has_text="sent")).to_contain_text("bob@example.test")
        await shot(page, "admin-deliveries", full_page=True)
        assert not errors, errors
    finally:
        code = proc.stop(signal.SIGTERM, timeout=30)
    assert code == 0, proc.output()[-3000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if running(p)], "a demo process was left running"
