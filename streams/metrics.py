"""Prometheus metrics of every Vestnik part (one registry per process, the default one)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# no `*_created` series beside every counter and histogram: they double what a scrape
# reads and no rule or panel of docs/ops uses them
disable_created_metrics()

EVENTS_PUBLISHED = Counter(
    "vestnik_events_published_total", "Topic events published through Vestnik", ["topic", "via"]
)
EVENTS_APPLIED = Counter(
    "vestnik_events_applied_total", "Topic events applied to state snapshots", ["topic"]
)
EVENTS_DELIVERED = Counter(
    "vestnik_events_delivered_total", "Events written to SSE clients", ["stream"]
)
EVENTS_BAD = Counter(
    "vestnik_events_bad_total", "Topic stream entries that failed to decode", ["topic"]
)
SSE_CLIENTS = Gauge("vestnik_sse_clients", "Connected SSE clients", ["stream"])
TOPICS_FOLLOWED = Gauge("vestnik_topics_followed", "Topic streams the process's hub tails")
SSE_DROPPED = Counter(
    "vestnik_sse_slow_dropped_total", "SSE clients disconnected because they fell behind",
    ["stream"],
)
HYDRATIONS = Counter(
    "vestnik_hydrations_total", "Thin events hydrated from their source", ["topic", "result"]
)
BRIDGE_EVENTS = Counter(
    "vestnik_bridge_events_total", "Keyspace notifications turned into topic events", ["topic"]
)
READER_RECONNECTS = Counter(
    "vestnik_reader_reconnects_total", "Reconnects of a process's Redis reader", ["reader"]
)
FORWARD_ATTEMPTS = Counter(
    "vestnik_forward_attempts_total", "Forward send attempts, by channel and outcome",
    ["channel", "status"],
)
NOTICES_INGESTED = Counter(
    "vestnik_notices_ingested_total", "Notices added to the ingest stream by Vestnik", ["via"]
)
NOTICES_STORED = Counter(
    "vestnik_notices_stored_total", "Notices stored by the center (one per notice, not per user)"
)
NOTICES_DELIVERED = Counter(
    "vestnik_notice_feed_entries_total", "Feed entries made (one per notice and user)"
)
NOTICES_FOLDED = Counter(
    "vestnik_notices_folded_total", "Notices folded into an earlier one by their dedup_key"
)
NOTICES_SILENCED = Counter(
    "vestnik_notices_silenced_total",
    "Notices an admin silence matched: stored, neither pushed live nor forwarded"
)
INCIDENTS_RESOLVED = Counter(
    "vestnik_incidents_resolved_total",
    "Resolves of incidents by how they came (entry: stream, HTTP, wrapper; timer:"
    " resolve_after) and outcome (resolved; noop: unknown or already resolved)",
    ["via", "outcome"],
)
NOTICES_DEAD = Counter(
    "vestnik_notices_dead_total", "Ingest entries (or recipients) dead-lettered", ["reason"]
)
CENTER_BATCH = Histogram(
    "vestnik_center_batch_seconds", "Time to handle one batch of the notice stream",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
CONSUMER_ERRORS = Counter(
    "vestnik_consumer_errors_total", "Consumer-group loop failures (batch left pending)",
    ["group", "kind"],
)

# what an operator alerts on (docs/ops/metrics.md, docs/ops/prometheus-rules.yml)
GROUP_LAG = Gauge(
    "vestnik_consumer_group_lag",
    "Entries of a stream not yet read by a consumer group (XINFO GROUPS `lag`; sampled)",
    ["stream", "group"],
)
GROUP_PENDING = Gauge(
    "vestnik_consumer_group_pending",
    "Entries read by a consumer group and not yet acked (sampled)", ["stream", "group"],
)
DEAD_LETTERS = Gauge(
    "vestnik_dead_letters", "Entries kept in a dead-letter stream (XLEN; sampled)", ["stream"]
)
FORWARD_BACKLOG = Gauge(
    "vestnik_forward_backlog",
    "Forward jobs waiting: `due` (their time has come) or `scheduled` (later), per forward "
    "partition; sampled",
    ["state", "partition"],
)
SEND_SECONDS = Histogram(
    "vestnik_forward_send_seconds", "Time one channel send took (any outcome)", ["channel"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
REDIS_ERRORS = Counter(
    "vestnik_redis_errors_total",
    "Failed Redis command tries by kind (timeout, connection, loading) and outcome"
    " (retried; failed: the time budget was spent and the caller got the error)",
    ["kind", "outcome"],
)
for _kind in ("timeout", "connection", "loading"):  # series from 0: rate() sees the first
    for _outcome in ("retried", "failed"):
        REDIS_ERRORS.labels(_kind, _outcome)
REDIS_STALLS = Counter(
    "vestnik_redis_stalls_total",
    "Redis connections aborted because Redis did not answer within the command timeout",
)
BUILD_INFO = Gauge("vestnik_build_info", "Always 1: the versions this process runs",
                   ["version", "python", "redis_py"])


def _build_info() -> None:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import redis

    try:
        ours = version("vestnik")
    except PackageNotFoundError:  # a source tree that is not installed
        ours = "0"
    BUILD_INFO.labels(ours, platform.python_version(), redis.__version__).set(1)


_build_info()
