"""`vestnik soak` (issue 24): an hour of mixed faults under load, every notice accounted for.

The design in twenty lines:
- stack.py starts, on loopback only, a private redis-server (AOF, `appendfsync always`),
  the six parts as processes of their own (api, center-1, center-2 without forwarding,
  forwarder, bridge, `vestnik wrap` of a tiny alert program) and, in one more process,
  an SMTP sink and a webhook receiver that record every message to a file (sink.py); it
  creates the users (`user` topic, emails at the sink) and three settings (the wrapped
  alert's, one forwarding by email, one by webhook). It stops everything it started.
- load.py drives a steady, bounded load: notices by XADD and by HTTP with
  Idempotency-Keys, topic events (some turned into notices by the wrapped alert, some
  through the bridge's keys), settings changes, 200 SSE clients resuming by
  Last-Event-ID, reads and read-alls; it remembers what was acknowledged.
- faults.py draws, from `random.Random(seed)`, a fault every 10-30 s: SIGKILL+restart of a
  part, Redis SIGKILL+restart from the AOF, CLIENT PAUSE, a sink down or slow, a burst of
  bad entries. The same seed gives the same plan; `Stack.events` logs what was done when.
- run.py runs load and faults for N minutes, ends the faults, restarts anything down,
  drains (bounded), asks ledger.py for the exact accounting and writes the JSON;
  exit 0 only when nothing is missing, duplicated (outside the documented window) or
  left down.
"""
