"""Vendored browser files (app/static/vendor/<name>-<version>/) are byte for byte what
their script fetched: each folder's SHA256SUMS pins every file in it, a licence travels
with them, the script pins the same version, and /docs loads only files that are there."""

from __future__ import annotations

import hashlib
import re

from support import ROOT

VENDOR = ROOT / "app" / "static" / "vendor"
SCRIPT = ROOT / "scripts" / "vendor-swagger-ui.sh"


def pinned(folder) -> dict[str, str]:
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split(maxsplit=1) for line in lines)}


def test_every_vendored_file_matches_its_pinned_sha256():
    folders = [f for f in VENDOR.iterdir() if f.is_dir()]
    assert folders, "nothing vendored"
    for folder in folders:
        sums = pinned(folder)
        present = {p.name for p in folder.iterdir()} - {"SHA256SUMS"}
        assert present == set(sums), (folder.name, present ^ set(sums))
        assert "LICENSE" in sums, folder.name
        for name, digest in sums.items():
            got = hashlib.sha256((folder / name).read_bytes()).hexdigest()
            assert got == digest, f"{folder.name}/{name} changed: re-run its vendor script"


def test_the_script_pins_the_vendored_version_and_docs_loads_it():
    version = re.search(r'^VERSION="\$\{VERSION:-([0-9.]+)\}"$', SCRIPT.read_text(), re.M)
    assert version is not None
    folder = VENDOR / f"swagger-ui-dist-{version.group(1)}"
    assert folder.is_dir(), folder
    html = (ROOT / "app" / "static" / "docs.html").read_text()
    loaded = re.findall(r'(?:src|href)="(/static/vendor/[^"]+)"', html)
    assert len(loaded) == 2, loaded  # the bundle and its stylesheet
    for url in loaded:
        assert url.startswith(f"/static/vendor/{folder.name}/"), url
        assert (ROOT / "app" / url.removeprefix("/")).is_file(), url
    assert "://" not in html  # nothing from elsewhere
