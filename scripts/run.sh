#!/bin/sh
# Run Vestnik: installs what is missing, then `vestnik up` (a private Redis unless
# VESTNIK_REDIS_URL is set). Extra arguments go to `vestnik up`, e.g. --port 9000.
set -eu
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/vestnik up "$@"
