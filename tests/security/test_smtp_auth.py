"""SMTP credentials never travel in clear: a real aiosmtpd server that requires AUTH, with
and without STARTTLS, and a relay in front of it recording every byte the client sends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from support import SmtpSink
from vestnik.streams.channels.email import EmailChannel, SmtpConfig
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.schemas import Notice, User

USER, PASSWORD = "mailer", "pw-7f3a9c-never-in-clear"
ALICE = User(id="1", name="Alice", email="alice@example.org")
# the point of two of these tests is a server that accepts AUTH without TLS
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


class AuthSink(SmtpSink):
    """SmtpSink that requires AUTH (over TLS too when given a context, offering STARTTLS)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.tls = tls
        self.logins: list[tuple[bytes, bytes]] = []

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        return AuthResult(success=(data.login, data.password) == (USER.encode(),
                                                                  PASSWORD.encode()))

    def start(self) -> AuthSink:
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, authenticator=self.authenticate,
            auth_required=True, auth_require_tls=self.tls is not None, tls_context=self.tls)
        self.controller.start()
        return self


@contextlib.asynccontextmanager
async def relay(port: int) -> AsyncIterator[tuple[int, bytearray]]:
    """A TCP relay to 127.0.0.1:`port`; yields its own port and what clients sent."""
    sent = bytearray()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if record:
                    sent.extend(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(cr, sw, True), pipe(sr, cw, False))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], sent
    finally:
        server.close()


def notice() -> Notice:
    return Notice(id=ulid(), alert="disk", title="Disk 95% on web-1", recipients=["1"],
                  created_at=now_ms())


async def send(url: str) -> Any:
    channel = EmailChannel(SmtpConfig(url), "Vestnik <vestnik@example.org>")
    try:
        return await channel.send(notice(), ALICE, {})
    finally:
        await channel.aclose()


@pytest.fixture
def clear_sink() -> Any:
    sink = AuthSink().start()
    yield sink
    sink.stop()


async def test_no_auth_in_clear_without_the_flag(clear_sink: AuthSink):
    async with relay(clear_sink.port) as (port, wire):
        result = await send(f"smtp://{USER}:{PASSWORD}@127.0.0.1:{port}")
    assert result.status == "permanent"
    assert "not encrypted" in result.detail and "insecure_auth=1" in result.detail
    assert PASSWORD not in result.detail
    assert clear_sink.mails == [] and clear_sink.logins == []
    for form in (PASSWORD.encode(), base64.b64encode(PASSWORD.encode()),
                 base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())):
        assert form not in wire
    assert b"AUTH" not in wire


async def test_insecure_auth_flag_allows_it(clear_sink: AuthSink):
    result = await send(f"smtp://{USER}:{PASSWORD}@127.0.0.1:{clear_sink.port}"
                        "?insecure_auth=1")
    assert result.ok, result.detail
    assert clear_sink.logins == [(USER.encode(), PASSWORD.encode())]
    assert [m.rcpt_tos for m in clear_sink.mails] == [["alice@example.org"]]


def server_tls(tmp: Path) -> ssl.SSLContext:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_starttls_is_used_when_offered_and_auth_goes_over_it(tmp_path: Path):
    """No `?starttls=1`: the server offers STARTTLS and requires TLS for AUTH; the mail goes
    out, and the wire carries neither the password nor the message in clear."""
    sink = AuthSink(server_tls(tmp_path)).start()
    try:
        async with relay(sink.port) as (port, wire):
            result = await send(f"smtp://{USER}:{PASSWORD}@127.0.0.1:{port}?verify=0")
    finally:
        sink.stop()
    assert result.ok, result.detail
    assert sink.logins == [(USER.encode(), PASSWORD.encode())] and len(sink.mails) == 1
    assert b"STARTTLS" in wire and b"AUTH" not in wire and PASSWORD.encode() not in wire
    assert b"alice@example.org" not in wire


def test_repr_of_the_config_has_no_password():
    assert PASSWORD not in repr(SmtpConfig(f"smtp://{USER}:{PASSWORD}@mail.example:587"))
