"""Browser tests: playwright (Python, async API) driving Debian's Chromium (`/usr/bin/chromium`,
installed by scripts/bootstrap.sh; never a downloaded browser). One browser per session, one
context per test; every test saves screenshots under artifacts/screenshots/."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from support import ROOT

CHROMIUM = os.environ.get("VESTNIK_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--disable-dev-shm-usage"]
SHOTS = ROOT / "artifacts" / "screenshots"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Keep each phase's report on the test item (the context fixture looks at it)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[object]:
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not executable:
        pytest.fail(f"{CHROMIUM} is missing: run scripts/bootstrap.sh with "
                    "VESTNIK_WITH_TEST_TOOLS=1 (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=executable, args=ARGS)
        yield b
        await b.close()


@pytest.fixture
async def context(browser, request: pytest.FixtureRequest) -> AsyncIterator[object]:
    ctx = await browser.new_context(viewport={"width": 1200, "height": 800},
                                    locale="en-US", color_scheme="light")
    ctx.set_default_timeout(15_000)
    yield ctx
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:  # what the pages showed when it failed
        SHOTS.mkdir(parents=True, exist_ok=True)
        test = re.sub(r"[^\w-]+", "_", request.node.name).strip("_")
        for i, page in enumerate(ctx.pages):
            await page.screenshot(path=str(SHOTS / f"{test}-FAILED-{i}.png"))
    await ctx.close()


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[object, str], Awaitable[Path]]:
    """`await shot(page, "name")` saves artifacts/screenshots/<test>-<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^\w-]+", "_", request.node.name).strip("_")

    async def take(page, name: str, full_page: bool = False) -> Path:
        path = SHOTS / f"{test}-{name}.png"
        await page.screenshot(path=str(path), full_page=full_page)
        return path

    return take
