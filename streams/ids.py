"""ULIDs (time-sortable ids) and Redis stream id helpers."""

from __future__ import annotations

import base64
import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# RFC 4648 base32 (what base64.b32encode writes, in C) -> Crockford's (ULID's)
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())


def encode_ulid(n: int) -> str:
    """The 26 characters of a 128-bit ULID value: 160 bits are 32 base32 digits, the last 26
    of which are the value (with its 2 leading zero bits)."""
    return base64.b32encode(n.to_bytes(20, "big"))[6:].translate(_CROCKFORD).decode()


def ulid(ms: int | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds then 80 random bits."""
    ms = int(time.time() * 1000) if ms is None else ms
    return encode_ulid((ms << 80) | int.from_bytes(os.urandom(10), "big"))


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
