"""The collector settings of a long-running Vestnik process, applied once start-up is done.

A service that holds thousands of long-lived objects (an SSE connection is a few dozen)
pays for CPython's default collector twice: every 700 allocations a young collection,
and, each time the long-lived heap grows by a quarter, a full collection that walks all
of it and frees nothing (measured: 16 -> 188 ms each while 5,000 clients connected, and
one in a broadcast to them doubled its p99). `settle_gc()` freezes what start-up made (never
garbage) and makes collections rarer: young ones every 20,000 allocations, full ones
after 100 middle ones. Cyclic garbage still goes, just in larger, rarer sweeps.
"""

from __future__ import annotations

import gc

THRESHOLDS = (20_000, 20, 100)


def settle_gc() -> None:
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
