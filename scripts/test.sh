#!/bin/sh
# Run the whole test suite: installs what is missing (redis-server, jq, Node.js, Chromium via
# apt-get; Python deps in .venv), then pytest. The suite starts its own redis-server, SMTP,
# HTTP and Vestnik processes on free loopback ports. Extra arguments go to pytest (and then
# only that run is made).
#
# Without arguments the end-to-end tests run again against a local 3-master Redis Cluster
# (`--redis-cluster`) and a local Sentinel deployment (`--redis-sentinel`: a primary, a
# replica, three sentinels): ingest -> feed -> SSE -> forward -> email, topics, settings,
# the wrapper, the bridge; tests that cannot run there are marked `single_redis` with the
# reason. Then a 2-minute `vestnik soak` (fixed seed; its summary in artifacts/soak.json).
set -eu
cd "$(dirname "$0")/.."
VESTNIK_WITH_TEST_TOOLS=1 ./scripts/bootstrap.sh
.venv/bin/ruff check --quiet .
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
fi
# every step runs even after a failure; the script exits with the first failure's code
status=0
step() {
    "$@" || { code=$?; [ "$status" -ne 0 ] || status=$code; }
}
step .venv/bin/python -m pytest -q -p no:cacheprovider
# the end-to-end files, run again on each deployment beyond one Redis (issue 23)
E2E="tests/test_settings.py tests/forward/test_end_to_end.py tests/wrapper/test_wrapper.py
    tests/notifier/test_topics.py tests/notifier/test_fanout.py tests/notifier/test_hydrate.py
    tests/notifier/test_bridge.py tests/center/test_ingest.py tests/center/test_inbox_api.py
    tests/center/test_center_store.py tests/center/test_silences.py tests/center/test_incidents.py
    tests/center/test_center_edges.py tests/center/test_snooze.py tests/center/test_consumer_live.py
    tests/center/test_ingest_partitions.py tests/client/test_client.py
    tests/client/test_docs_client.py tests/forward/test_digest.py tests/forward/test_channel_digest.py
    tests/forward/test_partitions.py"
# shellcheck disable=SC2086 # E2E is a list of paths
step .venv/bin/python -m pytest -q -p no:cacheprovider --redis-cluster $E2E \
    tests/test_redis_cluster.py tests/forward/test_digest_cluster.py \
    tests/notifier/test_bridge_cluster.py
# shellcheck disable=SC2086
step .venv/bin/python -m pytest -q -p no:cacheprovider --redis-sentinel $E2E
# two minutes of load under random faults with a fixed seed (issue 24): any missing notice,
# SSE gap or duplicate, missing forward or process left down fails the run
step .venv/bin/vestnik soak --minutes 2 --seed 1 --json artifacts/soak.json
exit "$status"
