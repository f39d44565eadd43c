#!/bin/sh
# Install what Vestnik needs on a fresh Debian/Ubuntu machine (run as root or with sudo):
# redis-server (and jq, Chromium, openssl for the tests) via apt-get when missing, then a
# virtualenv in .venv with Vestnik and its dependencies (with VESTNIK_WITH_TEST_TOOLS=1 also
# the `test` and `bench` extras). Safe to run again: it only adds what is missing.
set -eu
cd "$(dirname "$0")/.."

want=""
command -v redis-server >/dev/null 2>&1 || want="$want redis-server"
if [ "${VESTNIK_WITH_TEST_TOOLS:-0}" = 1 ]; then
    command -v jq >/dev/null 2>&1 || want="$want jq"
    command -v node >/dev/null 2>&1 || want="$want nodejs"
    command -v chromium >/dev/null 2>&1 || want="$want chromium"
    # tests/security/test_smtp_auth.py makes a self-signed certificate for STARTTLS
    command -v openssl >/dev/null 2>&1 || want="$want openssl"
    # tests/deploy/test_systemd.py checks the units with `systemd-analyze verify`
    command -v systemd-analyze >/dev/null 2>&1 || want="$want systemd"
    # tests/sources/test_alertmanager.py runs a real Alertmanager (Debian names its binary
    # prometheus-alertmanager; an upstream install calls it alertmanager)
    command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
        || want="$want prometheus-alertmanager"
    # tests/ops/test_alerting_docs.py checks docs/ops/prometheus-rules.yml with promtool
    # (shipped in Debian's prometheus package)
    command -v promtool >/dev/null 2>&1 || want="$want prometheus"
fi
if [ -n "$want" ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "bootstrap: installing$want" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $want >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed
extras="."
# the tests run `vestnik bench` too, so they get its extra (rich) as well, and the optional
# Apprise channel's (tests/forward/test_channel_apprise.py)
[ "${VESTNIK_WITH_TEST_TOOLS:-0}" = 1 ] && extras=".[test,bench,apprise]"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! grep -qx "$extras" "$stamp"; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e "$extras"
    echo "$extras" > "$stamp"
fi
