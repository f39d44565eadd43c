"""The soak's SMTP sink and webhook receiver, in a process of their own, switchable.

`python -m vestnik.app.soak.sink DIR SMTP_PORT HOOK_PORT CONTROL_PORT`. Every message the
SMTP sink accepts and every webhook body is appended to `DIR/mails.bin` / `DIR/hooks.bin`
as it arrives (a 4-byte big-endian length, then the bytes), so the ledger reads them
after the run even if this process died. `POST /mode/<smtp|webhook>/<up|down|slow>` on
the control port switches one: `down` closes its listener (connection refused, and open
connections cut), `slow` answers each message after SLOW_S (under the senders' timeouts:
slow, not failing). It runs beside, not inside, the soak's event loop, which carries the
load and must not be the bottleneck of what it accounts.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import threading
from pathlib import Path
from typing import Any

SLOW_S = 2.0
_LEN = struct.Struct(">I")


def read_records(path: Path) -> list[bytes]:
    """Every record of a sink file (a torn last record, from a kill mid-write, is left out)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[bytes] = []
    at = 0
    while at + 4 <= len(raw):
        (n,) = _LEN.unpack_from(raw, at)
        if at + 4 + n > len(raw):
            break
        out.append(raw[at + 4:at + 4 + n])
        at += 4 + n
    return out


class _Journal:
    """An append-only record file; writes from two threads (SMTP's and ours) serialized."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "ab")
        self._lock = threading.Lock()

    def add(self, body: bytes) -> None:
        with self._lock:
            self._f.write(_LEN.pack(len(body)) + body)
            self._f.flush()


class _Smtp:
    """aiosmtpd in its controller's thread; `down` stops the controller (port refused)."""

    def __init__(self, port: int, journal: _Journal) -> None:
        self.port, self.journal, self.mode = port, journal, "up"
        self.controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
                sink.journal.add(envelope.original_content or b"")
                if sink.mode == "slow":
                    await asyncio.sleep(SLOW_S)
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def set(self, mode: str) -> None:
        if mode == "down":
            self.stop()
        elif self.controller is None:
            self.start()
        self.mode = mode


class _Hooks:
    """A minimal HTTP/1.1 keep-alive receiver: every request with a body is recorded and
    answered 200 (after SLOW_S when slow)."""

    def __init__(self, port: int, journal: _Journal) -> None:
        self.port, self.journal, self.mode = port, journal, "up"
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                size = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        size = int(line.split(b":", 1)[1])
                body = await reader.readexactly(size)
                self.journal.add(body)
                if self.mode == "slow":
                    await asyncio.sleep(SLOW_S)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def set(self, mode: str) -> None:
        if mode == "down":
            if self.server is not None:
                self.server.close()
                for w in list(self.writers):
                    w.transport.abort()
                await self.server.wait_closed()
                self.server = None
        elif self.server is None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                     reuse_address=True)
        self.mode = mode


async def _main(root: Path, smtp_port: int, hook_port: int, control_port: int) -> None:
    smtp = _Smtp(smtp_port, _Journal(root / "mails.bin"))
    hooks = _Hooks(hook_port, _Journal(root / "hooks.bin"))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, smtp.start)
    await hooks.set("up")

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0].decode()
            parts = line.split(" ")[1].strip("/").split("/") if " " in line else []
            status = "200 OK"
            if len(parts) == 3 and parts[0] == "mode" and parts[2] in ("up", "down", "slow"):
                if parts[1] == "smtp":
                    await loop.run_in_executor(None, smtp.set, parts[2])
                elif parts[1] == "webhook":
                    await hooks.set(parts[2])
                else:
                    status = "404 Not Found"
            elif parts != ["ping"]:
                status = "404 Not Found"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close"
                         "\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(control, "127.0.0.1", control_port, reuse_address=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        smtp.stop()


def main(argv: list[str]) -> None:
    import uvloop

    uvloop.run(_main(Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])))


if __name__ == "__main__":
    main(sys.argv[1:])
