"""ULIDs (time-sortable ids) and Redis stream id helpers."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> 2 characters


def encode_ulid(ms: int, rnd: int) -> str:
    """The 26 characters of a ULID: 48 bits of milliseconds (10 characters, 2 leading zero
    bits) then 80 bits of `rnd` (16), 10 bits a step, joined once. (base64.b32encode is a
    Python loop in 3.11: twice as slow, and this runs for every notice sent without an id.)"""
    p = _PAIRS
    return "".join((p[ms >> 40], p[(ms >> 30) & 1023], p[(ms >> 20) & 1023],
                    p[(ms >> 10) & 1023], p[ms & 1023],
                    p[rnd >> 70], p[(rnd >> 60) & 1023], p[(rnd >> 50) & 1023],
                    p[(rnd >> 40) & 1023], p[(rnd >> 30) & 1023], p[(rnd >> 20) & 1023],
                    p[(rnd >> 10) & 1023], p[rnd & 1023]))


def ulid(ms: int | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds then 80 random bits."""
    ms = int(time.time() * 1000) if ms is None else ms
    return encode_ulid(ms, int.from_bytes(os.urandom(10), "big"))


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
