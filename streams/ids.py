"""ULIDs (time-sortable ids) and Redis stream id helpers."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(ms: int | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds then 80 random bits."""
    ms = int(time.time() * 1000) if ms is None else ms
    n = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_stream_id(sid: str) -> tuple[int, int]:
    """'1700000000000-3' → (1700000000000, 3); raises ValueError on anything else."""
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def is_stream_id(sid: str) -> bool:
    try:
        ms, seq = parse_stream_id(sid)
    except ValueError:
        return False
    return ms >= 0 and seq >= 0


def stream_id_gt(a: str, b: str) -> bool:
    return parse_stream_id(a) > parse_stream_id(b)
