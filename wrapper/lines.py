"""Split a child's output into lines without ever holding an oversized line whole.

`StreamReader.readline()` has a 64 KiB limit and raises on longer lines; raising the
limit only moves the problem. Here the caller reads chunks (`read(n)`) and feeds them
in: complete lines come out, and a line longer than `max_line` is discarded as it
streams past, leaving only its size and a short sample for the dead-letter entry.
"""

from __future__ import annotations

SAMPLE = 512


class Oversized:
    """A line longer than the limit: its size in bytes and its first bytes."""

    __slots__ = ("sample", "size")

    def __init__(self, sample: bytes, size: int) -> None:
        self.sample, self.size = sample, size

    def __repr__(self) -> str:
        return f"Oversized(size={self.size})"


Line = tuple[int, "bytes | Oversized"]


class LineSplitter:
    """Feed chunks, get `(line number, line)` pairs; line numbers count every line."""

    __slots__ = ("_buf", "_skip", "lineno", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.lineno = 0
        self._buf = b""
        self._skip: Oversized | None = None  # the oversized line being discarded

    def feed(self, chunk: bytes) -> list[Line]:
        out: list[Line] = []
        start = 0
        if self._skip is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._skip.size += len(chunk)
                return out
            self._skip.size += nl
            self.lineno += 1
            out.append((self.lineno, self._skip))
            self._skip = None
            start = nl + 1
        elif self._buf:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._hold(self._buf + chunk)
                return out
            line = self._buf + chunk[:nl]
            self._buf = b""
            self.lineno += 1
            out.append((self.lineno, self._check(line)))
            start = nl + 1
        parts = chunk[start:].split(b"\n") if start else chunk.split(b"\n")
        tail = parts.pop()
        max_line = self.max_line
        lineno = self.lineno
        for part in parts:
            lineno += 1
            out.append((lineno, part if len(part) <= max_line else self._oversized(part)))
        self.lineno = lineno
        if tail:
            self._hold(tail)
        return out

    def end(self) -> list[Line]:
        """At EOF: the last line if it had no newline."""
        out: list[Line] = []
        if self._skip is not None:
            self.lineno += 1
            out.append((self.lineno, self._skip))
            self._skip = None
        elif self._buf:
            self.lineno += 1
            out.append((self.lineno, self._buf))
            self._buf = b""
        return out

    def _hold(self, partial: bytes) -> None:
        if len(partial) > self.max_line:
            self._skip = self._oversized(partial)
            self._buf = b""
        else:
            self._buf = partial

    def _check(self, line: bytes) -> bytes | Oversized:
        return line if len(line) <= self.max_line else self._oversized(line)

    @staticmethod
    def _oversized(data: bytes) -> Oversized:
        return Oversized(bytes(data[:SAMPLE]), len(data))
