#!/bin/sh
# Regenerate requirements.lock: the runtime dependencies of pyproject.toml (no extras: no
# bench, test or apprise packages), every one pinned with the sha256 of each file PyPI has
# for it, so the image (Dockerfile: `pip install --require-hashes`) installs exactly what
# was tested. pip-compile (pip-tools) resolves it; run this after changing `dependencies`
# (tests/test_dockerfile.py fails while the lock is out of step with them). Markers resolve
# for the Python that runs it: .venv's must be the image's (Dockerfile: python:3.11).
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/bootstrap.sh
.venv/bin/python -m piptools --version >/dev/null 2>&1 \
    || .venv/bin/python -m pip install -q 'pip-tools>=7.4'
# PyPI only: a local wheel directory or mirror of this machine must not end up in the lock
# (as a hash PyPI does not have, or an index line the image cannot reach)
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    CUSTOM_COMPILE_COMMAND=scripts/lock.sh \
    .venv/bin/python -m piptools compile --quiet --generate-hashes --strip-extras \
    --no-emit-index-url --no-emit-find-links --allow-unsafe \
    --output-file requirements.lock pyproject.toml
