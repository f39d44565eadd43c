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

@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[object]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/bootstrap.sh with "
                    "VESTNIK_WITH_TEST_TOOLS=1 (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


@pytest.fixture
async def context(browser, request: pytest.FixtureRequest) -> AsyncIterator[object]:
    ctx = await browser.new_context(viewport={"width": 1200, "height": 800},
                                    locale="en-US", color_scheme="light")
    ctx.set_default_timeout(15_000)
    yield ctx
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
