"""Email: multipart text + HTML from Jinja2 templates, over a small pool of SMTP connections.

`VESTNIK_SMTP_URL`: `smtp://user:pass@host:port` (plain), `...?starttls=1` (STARTTLS),
`smtps://...` (implicit TLS); `?verify=0` skips certificate checks (a local relay).
Connections are kept open and reused (`POOL_SIZE` at most); a reused connection the server
has closed meanwhile is replaced once, transparently.

Templates: `streams/templates/email.txt.j2` and `email.html.j2` (autoescaped), with an
optional per-locale override `email.<locale>.html.j2` / `email.<locale>.txt.j2`.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import httpx
import jinja2

from streams.config import ConfigError, Settings
from streams.schemas import Notice, User

from .base import Channel, SendResult

POOL_SIZE = 8
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SEVERITY_COLOR = {"info": "#0969da", "warning": "#9a6700", "critical": "#cf222e"}
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")
_CRLF = re.compile(r"[\r\n]+")


def one_line(text: str) -> str:
    """A header value: CR/LF (and runs of them) become one space, so no header injection."""
    return _CRLF.sub(" ", text).strip()


def safe_link(link: str | None) -> str | None:
    """Only http(s) links go into a message (no `javascript:` hrefs)."""
    if link and re.match(r"^https?://", link, re.I):
        return link
    return None


class SmtpConfig:
    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        self.use_tls = u.scheme == "smtps"
        self.start_tls = q.get("starttls", "0").lower() in ("1", "true", "yes")
        if self.use_tls and self.start_tls:
            raise ConfigError("VESTNIK_SMTP_URL: smtps:// is implicit TLS; drop ?starttls=1")
        self.validate_certs = q.get("verify", "1").lower() not in ("0", "false", "no")
        self.host = u.hostname or "localhost"
        try:
            port = u.port
        except ValueError:
            raise ConfigError("VESTNIK_SMTP_URL: bad port") from None
        self.port = port or (465 if self.use_tls else 587 if self.start_tls else 25)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None

    def client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.host, port=self.port, username=self.username,
            password=self.password, use_tls=self.use_tls, start_tls=self.start_tls,
            validate_certs=self.validate_certs, timeout=20,
        )


class SmtpPool:
    """At most `size` SMTP connections, each carrying one message at a time."""

    def __init__(self, config: SmtpConfig, size: int = POOL_SIZE) -> None:
        self.config = config
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(size)

    async def send(self, msg: EmailMessage, sender: str, to: str) -> None:
        async with self._slots:
            smtp = self._idle.pop() if self._idle else None
            reused = smtp is not None
            try:
                if smtp is None or not smtp.is_connected:
                    reused = False
                    smtp = await self._connect()
                try:
                    await smtp.send_message(msg, sender=sender, recipients=[to])
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    # the server closed an idle connection: the message was not taken
                    smtp.close()
                    smtp = await self._connect()
                    await smtp.send_message(msg, sender=sender, recipients=[to])
            except BaseException:
                if smtp is not None:
                    smtp.close()
                raise
            self._idle.append(smtp)

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = self.config.client()
        await smtp.connect()
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


class EmailChannel(Channel):
    name = "email"
    user_address = "email"

    def __init__(self, config: SmtpConfig, sender: str, templates: Path = TEMPLATES) -> None:
        self.pool = SmtpPool(config)
        self.sender = sender
        self.sender_addr = parseaddr(sender)[1]
        self.domain = self.sender_addr.rpartition("@")[2] or "vestnik"
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(templates),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2", "html"),
                                                default_for_string=False, default=False),
            trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        )

    @classmethod
    def create(cls, settings: Settings, http: httpx.AsyncClient) -> EmailChannel | None:
        if not settings.smtp_url:
            return None
        if not settings.smtp_from or not parseaddr(settings.smtp_from)[1]:
            raise ConfigError("VESTNIK_SMTP_FROM: required (a sender address) with "
                              "VESTNIK_SMTP_URL")
        return cls(SmtpConfig(settings.smtp_url), one_line(settings.smtp_from))

    def render(self, notice: Notice, user: User | None, kind: str) -> str:
        names = [f"email.{kind}.j2"]
        locale = user.locale if user else ""
        if locale and _LOCALE.match(locale):
            names.insert(0, f"email.{locale}.{kind}.j2")
        created = datetime.fromtimestamp((notice.created_at or 0) / 1000, UTC)
        ctx: dict[str, Any] = {
            "notice": notice, "user": user, "title": one_line(notice.title), "body": notice.body,
            "severity": notice.severity, "alert": notice.alert, "entity": notice.entity,
            "link": safe_link(notice.link), "locale": locale or "en",
            "created": created.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "color": SEVERITY_COLOR.get(notice.severity, "#59636e"),
        }
        return self.env.select_template(names).render(ctx)

    def message(self, notice: Notice, user: User, to: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = formataddr((one_line(user.name), to)) if user.name else to
        msg["Subject"] = one_line(notice.title)
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = f"<{notice.id}.{user.id}@{self.domain}>"
        msg["X-Vestnik-Notice"] = notice.id
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(self.render(notice, user, "txt"))
        msg.add_alternative(self.render(notice, user, "html"), subtype="html")
        return msg

    async def send(self, notice: Notice, user: User | None, target: dict[str, Any]
                   ) -> SendResult:
        if user is None or not user.email:
            return SendResult.permanent("email needs a user with an address")
        to = one_line(user.email)
        if to != user.email or parseaddr(to)[1] != to or "@" not in to:
            return SendResult.permanent(f"invalid email address {user.email!r}")
        msg = self.message(notice, user, to)
        try:
            await self.pool.send(msg, self.sender_addr, to)
        except (aiosmtplib.SMTPException, OSError) as e:
            return classify_smtp(e)
        return SendResult.sent(f"to {to}")

    async def aclose(self) -> None:
        await self.pool.aclose()
