"""Prometheus metrics of `vestnik wrap` (label `alert` = the alert's name), served by
streams.ops_http (no web framework, no thread)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LINES_IN = Counter("vestnik_wrapper_lines_in_total",
                   "Lines read from the alert's stdout", ["alert", "type"])
LINES_OUT = Counter("vestnik_wrapper_lines_out_total",
                    "Lines written to the alert's stdin", ["alert", "type"])
BAD_LINES = Counter("vestnik_wrapper_bad_lines_total",
                    "Alert stdout lines rejected and dead-lettered", ["alert", "reason"])
NOTICES = Counter("vestnik_wrapper_notices_total", "Notices added to the ingest stream", ["alert"])
ALERT_ERRORS = Counter("vestnik_wrapper_alert_errors_total",
                       "`error` lines printed by the alert", ["alert"])
STDERR_LINES = Counter("vestnik_wrapper_stderr_lines_total",
                       "Lines the alert logged on stderr", ["alert", "level"])
RESTARTS = Counter("vestnik_wrapper_restarts_total", "Restarts of the alert", ["alert", "reason"])
COALESCED = Counter("vestnik_wrapper_coalesced_total",
                    "Entity updates replaced by a newer one before the alert read them", ["alert"])
PENDING = Gauge("vestnik_wrapper_stdin_pending", "Messages waiting for the alert's stdin",
                ["alert"])
UP = Gauge("vestnik_wrapper_alert_up", "1 while the alert process runs", ["alert"])

