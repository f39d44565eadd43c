#!/bin/sh
# Run the whole test suite: installs what is missing (redis-server, jq, Node.js, Chromium via
# apt-get; Python deps in .venv), then pytest. The suite starts its own redis-server, SMTP,
# HTTP and Vestnik processes on free loopback ports. Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")/.."
VESTNIK_WITH_TEST_TOOLS=1 ./scripts/bootstrap.sh
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
