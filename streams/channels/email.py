"""Email: multipart text + HTML from Jinja2 templates, over a small pool of SMTP connections.

`VESTNIK_SMTP_URL`: `smtp://user:pass@host:port` (STARTTLS when the server offers it),
`...?starttls=1` (STARTTLS required), `smtps://...` (implicit TLS); `?verify=0` skips
certificate checks (a local relay). Credentials are sent only over TLS: on a connection
that stayed in clear the login is refused (a `failed` delivery saying why, the password
never sent) unless `?insecure_auth=1` allows it.
Connections are kept open and reused (`POOL_SIZE` at most); a reused connection the server
has closed meanwhile is replaced once, transparently.

Templates: `streams/channels/templates/email.txt.j2` and `email.html.j2` (autoescaped), with an
optional per-locale override `email.<locale>.html.j2` / `email.<locale>.txt.j2`; the same for
an incident's resolved message (`resolved.*`) and a digest (`digest.*`).

Threads: every message has a stable Message-ID (`<notice id>.<user id>@<sender's domain>`),
returned as the send's `ref`; the resolved message of an incident replies to it
(`In-Reply-To`, `References`), so mail clients show both in one thread.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

import aiosmtplib
import httpx
import jinja2
from aiosmtplib import SMTPStatus

from vestnik.streams.channels.base import Channel, Digest, SendResult, fired_for, utc_time
from vestnik.streams.config import Config, ConfigError
from vestnik.streams.schemas import ChannelTarget, Notice, User

POOL_SIZE = 8
TEMPLATES = Path(__file__).resolve().parent / "templates"
SEVERITY_COLOR = {"info": "#0969da", "warning": "#9a6700", "critical": "#cf222e"}
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?\Z")
# every character str.splitlines() breaks at: the email package folds headers with it, so a
# \v or \u2028 left in a title would start a new header line (or make Header raise)
_CRLF = re.compile(r"[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\\\"]+@[^@\s<>()\[\],;:\\\"]+\Z")
# a Message-ID a reply may name: one `<...>` token of visible ASCII (no space, CR, LF, `<>`)
_MESSAGE_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,900}>\Z")  # a header line < 998


def reply_headers(reply_to: str | None) -> list[str]:
    """`In-Reply-To` and `References` naming `reply_to`, or none when it is not exactly one
    Message-ID token (a stored ref is data: it never adds a header or breaks a line)."""
    if reply_to is None or not _MESSAGE_ID.match(reply_to):
        return []
    return [f"In-Reply-To: {reply_to}", f"References: {reply_to}"]


_HTTP = re.compile(r"^https?://", re.I)


def one_line(text: str) -> str:
    """A header value: line breaks (and runs of them) become one space: no header injection.
    (Every character `_CRLF` names is unprintable: a printable text, the common case, has
    none, and `isprintable` tells at C speed.)"""
    if text.isprintable():
        return text.strip()
    return _CRLF.sub(" ", text).strip()


def encode_header(value: str, name: str) -> str:
    """A header value, folded, RFC 2047-encoded (UTF-8) when it is not ASCII."""
    # an ASCII title that looks like an encoded word (`=?utf-8?q?x?=`) is encoded too, so
    # mail clients show it as written instead of decoding it
    plain = value.isascii() and "=?" not in value
    if plain and len(name) + 2 + len(value) <= 78:
        return value  # what Header would return: one short ASCII line
    charset = "us-ascii" if plain else "utf-8"
    return Header(value, charset, header_name=name).encode(linesep="\r\n")


_date: tuple[int, str] = (0, "")


def date_header() -> str:
    """RFC 5322 `Date:` of now, formatted once a second (not per message)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


def safe_link(link: str | None) -> str | None:
    """Only http(s) links go into a message (no `javascript:` hrefs)."""
    if link and _HTTP.match(link):
        return link
    return None


def _flag(q: dict[str, str], name: str, default: str = "0") -> bool:
    return q.get(name, default).lower() in ("1", "true", "yes")


class CleartextAuth(aiosmtplib.SMTPException):
    """Credentials would go over a connection without TLS: refused (never retried)."""


class SmtpConfig:
    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        self.use_tls = u.scheme == "smtps"
        # None: aiosmtplib upgrades with STARTTLS whenever the server offers it
        self.start_tls: bool | None = True if _flag(q, "starttls") else \
            (False if self.use_tls else None)
        self.insecure_auth = _flag(q, "insecure_auth")
        if self.use_tls and self.start_tls:
            raise ConfigError("VESTNIK_SMTP_URL: smtps:// is implicit TLS; drop ?starttls=1")
        self.validate_certs = _flag(q, "verify", "1")
        self.host = u.hostname or "localhost"
        try:
            port = u.port
        except ValueError:
            raise ConfigError("VESTNIK_SMTP_URL: bad port") from None
        self.port = port or (465 if self.use_tls else 587 if self.start_tls else 25)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None

    def client(self) -> aiosmtplib.SMTP:
        """A client that does not log in by itself: `login` decides after the TLS step."""
        return aiosmtplib.SMTP(
            hostname=self.host, port=self.port, use_tls=self.use_tls,
            start_tls=self.start_tls, validate_certs=self.validate_certs, timeout=20,
        )

    async def login(self, smtp: aiosmtplib.SMTP) -> None:
        """AUTH with the URL's credentials, only over TLS unless `?insecure_auth=1`."""
        if self.username is None:
            return
        if smtp.get_transport_info("sslcontext") is None and not self.insecure_auth:
            smtp.close()
            raise CleartextAuth(
                f"SMTP AUTH refused: the connection to {self.host}:{self.port} is not "
                "encrypted (no STARTTLS offered); the password was not sent. Use smtps://, "
                "a server with STARTTLS, or add ?insecure_auth=1 to VESTNIK_SMTP_URL")
        await smtp.login(self.username, self.password or "")

    def __repr__(self) -> str:  # never the password
        return f"SmtpConfig({self.host}:{self.port}, user={self.username!r})"


def smtp_path(address: str) -> bytes:
    """`<address>` for MAIL FROM / RCPT TO, checked once (ASCII, no `<>`, spaces or
    quotes): aiosmtplib's sendmail parses each address twice per message (4 parses, 5 % of
    a forwarder's CPU per email in B5). Non-ASCII addresses would need SMTPUTF8."""
    if not address.isascii() or not _ADDRESS.match(address):
        raise ValueError(f"not an ASCII email address: {address!r}")
    return f"<{address}>".encode()


async def transaction(smtp: aiosmtplib.SMTP, mail_from: bytes, rcpt_to: bytes,
                      msg: bytes) -> None:
    """MAIL, RCPT, DATA (what `SMTP.sendmail` does for one recipient, without the SIZE
    option and its second pass over the message). A refusal raises aiosmtplib's error for
    it after an RSET, so the connection carries the next message."""
    try:
        r = await smtp.execute_command(b"MAIL", mail_from)
        if r.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(r.code, r.message, mail_from[6:-1].decode())
        r = await smtp.execute_command(b"RCPT", rcpt_to)
        if r.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            raise aiosmtplib.SMTPRecipientRefused(r.code, r.message, rcpt_to[4:-1].decode())
        await smtp.data(msg)
    except aiosmtplib.SMTPResponseException:
        try:
            await smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()  # in an unknown state: not reused
        raise


class SmtpPool:
    """At most `size` SMTP connections, each carrying one message at a time."""

    def __init__(self, config: SmtpConfig, size: int = POOL_SIZE) -> None:
        self.config = config
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(size)

    async def send(self, msg: bytes, mail_from: bytes, rcpt_to: bytes) -> None:
        """One message over an idle (or new) connection; `mail_from` / `rcpt_to` are the
        arguments of MAIL and RCPT (`FROM:<a@b>`, `TO:<c@d>`)."""
        async with self._slots:
            smtp = self._idle.pop() if self._idle else None
            reused = smtp is not None
            try:
                if smtp is None or not smtp.is_connected:
                    reused = False
                    smtp = await self._connect()
                try:
                    await transaction(smtp, mail_from, rcpt_to, msg)
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    # the server closed an idle connection: the message was not taken
                    smtp.close()
                    smtp = await self._connect()
                    await transaction(smtp, mail_from, rcpt_to, msg)
            except aiosmtplib.SMTPResponseException:
                # refused, and the envelope reset: the connection carries the next message
                if smtp is not None and smtp.is_connected:
                    self._idle.append(smtp)
                raise
            except BaseException:
                if smtp is not None:
                    smtp.close()
                raise
            self._idle.append(smtp)

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = self.config.client()
        await smtp.connect()
        if smtp.is_ehlo_or_helo_needed:  # (connect greets only for STARTTLS or a login)
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPHeloError:
                await smtp.helo()
        await self.config.login(smtp)
        return smtp

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for smtp in idle:
            try:
                await asyncio.wait_for(smtp.quit(), 2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()


def classify_smtp(e: Exception) -> SendResult:
    """5xx answers never succeed as they are; 4xx, disconnects and timeouts may later."""
    if isinstance(e, CleartextAuth):
        return SendResult.permanent(str(e))
    if isinstance(e, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in e.recipients]
        detail = "; ".join(f"{r.code} {r.message}" for r in e.recipients)
        if codes and all(c >= 500 for c in codes):
            return SendResult.permanent(f"recipient refused: {detail}")
        return SendResult.retry(f"recipient refused: {detail}")
    if isinstance(e, aiosmtplib.SMTPResponseException):
        detail = f"{type(e).__name__}: {e.code} {e.message}"
        return SendResult.permanent(detail) if e.code >= 500 else SendResult.retry(detail)
    if isinstance(e, aiosmtplib.SMTPNotSupported):
        return SendResult.permanent(f"{type(e).__name__}: {e}")
    return SendResult.retry(f"{type(e).__name__}: {e}")


class DigestItem(NamedTuple):
    """A notice as a digest mail lists it (the templates read these attributes: a tuple's
    are found at once, where a dict's cost Jinja a failed getattr each)."""

    title: str
    severity: str
    alert: str
    link: str | None
    time: str
    color: str


def digest_items(digest: Digest) -> list[DigestItem]:
    """The listed notices of `digest` as its templates show them (made once per digest)."""
    return [DigestItem(one_line(n.title), n.severity, n.alert, safe_link(n.link),
                       utc_time(n.created_at), SEVERITY_COLOR.get(n.severity, "#59636e"))
            for n in digest.notices]


class EmailChannel(Channel):
    name = "email"
    user_address = "email"

    def __init__(self, config: SmtpConfig, sender: str, templates: Path = TEMPLATES) -> None:
        self.pool = SmtpPool(config)
        self.sender = sender
        name, self.sender_addr = parseaddr(sender)
        self.mail_from = b"FROM:" + smtp_path(self.sender_addr)
        self.from_header = formataddr((name, self.sender_addr), charset="utf-8")
        self.domain = self.sender_addr.rpartition("@")[2] or "vestnik"
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(templates),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2", "html"),
                                                default_for_string=False, default=False),
            trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
            auto_reload=False,
        )
        self._templates: dict[tuple[str, str], jinja2.Template] = {}

    @classmethod
    def create(cls, settings: Config, http: httpx.AsyncClient) -> EmailChannel | None:
        if not settings.smtp_url:
            return None
        if not settings.smtp_from or not parseaddr(settings.smtp_from)[1]:
            raise ConfigError("VESTNIK_SMTP_FROM: required (a sender address) with "
                              "VESTNIK_SMTP_URL")
        try:
            return cls(SmtpConfig(settings.smtp_url), one_line(settings.smtp_from))
        except ValueError as e:
            raise ConfigError(f"VESTNIK_SMTP_FROM: {e}") from None

    def template(self, base: str, user: User | None, kind: str) -> tuple[jinja2.Template, str]:
        """`<base>.<locale>.<kind>.j2` when the user's locale has one, else `<base>.<kind>.j2`;
        and the locale used ("" for none)."""
        locale = user.locale if user and _LOCALE.match(user.locale or "") else ""
        template = self._templates.get((base, locale, kind))
        if template is None:
            names = [f"{base}.{locale}.{kind}.j2", f"{base}.{kind}.j2"] if locale \
                else [f"{base}.{kind}.j2"]
            template = self._templates[(base, locale, kind)] = self.env.select_template(names)
        return template, locale

    def render(self, notice: Notice, user: User | None, kind: str, base: str = "email") -> str:
        template, locale = self.template(base, user, kind)
        created = datetime.fromtimestamp((notice.created_at or 0) / 1000, UTC)
        ctx: dict[str, Any] = {
            "notice": notice, "user": user, "title": one_line(notice.title), "body": notice.body,
            "severity": notice.severity, "alert": notice.alert, "entity": notice.entity,
            "link": safe_link(notice.link), "locale": locale or "en",
            "created": created.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "color": SEVERITY_COLOR.get(notice.severity, "#59636e"),
        }
        if base == "resolved":
            ctx["fired_for"] = fired_for(notice)
            ctx["resolved"] = datetime.fromtimestamp((notice.resolved_at or 0) / 1000, UTC
                                                     ).strftime("%Y-%m-%d %H:%M:%S UTC")
        return template.render(ctx)

    def render_digest(self, digest: Digest, items: list[DigestItem], user: User | None,
                      kind: str) -> str:
        """One part (`txt` or `html`) of a digest mail; `items` made once for both
        (`digest_items`)."""
        template, locale = self.template("digest", user, kind)
        return template.render({"items": items, "more": digest.more, "user": user,
                                "total": len(items) + digest.more, "locale": locale or "en"})

    def message_id(self, key: str, user: User) -> str:
        """`<key>.<user id>@<domain>`: ids are free text from products, percent-encoded (a
        ULID stays as it is), so the header is ASCII and the Message-ID a valid, still
        unique, token."""
        return f"<{quote(key, safe='')}.{quote(user.id, safe='')}@{self.domain}>"

    def message(self, notice: Notice, user: User, to: str) -> bytes:
        """The whole RFC 5322 message of `notice`: see `compose`."""
        return self.compose(user, to, one_line(notice.title), self.message_id(notice.id, user),
                            notice.id, lambda kind: self.render(notice, user, kind))

    def compose(self, user: User, to: str, subject: str, msgid: str, notice_id: str,
                render: Callable[[str], str], extra: list[str] | None = None) -> bytes:
        """The whole RFC 5322 message: multipart/alternative, text then HTML, base64 UTF-8.

        Built by hand: the stdlib `EmailMessage` path costs ~1.7 ms per message, this ~35 us
        (B5). Every header value is one line (CR/LF removed) and RFC 2047-encoded when it
        is not ASCII, so a title can never add a header. `extra`: checked header lines.
        """
        boundary = f"=_vestnik_{secrets.token_hex(12)}"
        to_header = formataddr((one_line(user.name), to), charset="utf-8") if user.name else to
        head = [
            f"From: {self.from_header}",
            f"To: {to_header}",
            f"Subject: {encode_header(one_line(subject), 'Subject')}",
            f"Date: {date_header()}",
            f"Message-ID: {msgid}",
            *(extra or ()),
            f"X-Vestnik-Notice: {quote(notice_id, safe='')}",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
        ]
        out = ["\r\n".join(head), "\r\n\r\n"]
        for subtype, kind in (("plain", "txt"), ("html", "html")):
            body = base64.encodebytes(render(kind).encode())
            out += [f"--{boundary}\r\nContent-Type: text/{subtype}; charset=\"utf-8\"\r\n"
                    "Content-Transfer-Encoding: base64\r\n\r\n",
                    body.decode("ascii").replace("\n", "\r\n")]
        out.append(f"--{boundary}--\r\n")
        return "".join(out).encode("ascii")

    async def send(self, notice: Notice, user: User | None, target: ChannelTarget
                   ) -> SendResult:
        def make(u: User, to: str, msgid: str) -> bytes:
            return self.compose(u, to, one_line(notice.title), msgid, notice.id,
                                lambda kind: self.render(notice, u, kind))
        return await self._mail(user, notice.id, make)

    async def send_resolved(self, notice: Notice, user: User | None, target: ChannelTarget,
                            reply_to: str | None) -> SendResult:
        """"Resolved: <title>", how long it fired, the link; a reply to the firing mail."""
        def make(u: User, to: str, msgid: str) -> bytes:
            return self.compose(u, to, f"Resolved: {one_line(notice.title)}", msgid, notice.id,
                                lambda kind: self.render(notice, u, kind, "resolved"),
                                reply_headers(reply_to))
        return await self._mail(user, f"{notice.id}.resolved", make)

    async def send_digest(self, digest: Digest, user: User | None, target: ChannelTarget
                          ) -> SendResult:
        """"N notices": each listed newest first (severity, title, link, time), "and N more"."""
        total = len(digest.notices) + digest.more
        subject = f"{total} notice{'s' if total != 1 else ''}"

        items = digest_items(digest)

        def make(u: User, to: str, msgid: str) -> bytes:
            return self.compose(u, to, subject, msgid, digest.id,
                                lambda kind: self.render_digest(digest, items, u, kind))
        return await self._mail(user, digest.id, make)

    async def _mail(self, user: User | None, key: str,
                    make: Callable[[User, str, str], bytes]) -> SendResult:
        """Send `make(user, to, message_id)` to the user's address; the Message-ID (of
        `key` and the user) is the result's `ref`."""
        if user is None or not user.email:
            return SendResult.permanent("email needs a user with an address")
        to = user.email
        try:
            rcpt_to = b"TO:" + smtp_path(to)
        except ValueError:
            return SendResult.permanent(f"invalid email address {to!r} (an ASCII address is "
                                        "needed: SMTPUTF8 is not used)")
        msgid = self.message_id(key, user)
        try:
            await self.pool.send(make(user, to, msgid), self.mail_from, rcpt_to)
        except (aiosmtplib.SMTPException, OSError) as e:
            return classify_smtp(e)
        return SendResult.sent(f"to {to}", ref=msgid)

    async def aclose(self) -> None:
        await self.pool.aclose()
