"""Apprise: the 100+ services Apprise reaches by URL (ntfy, Discord, Matrix, Pushover, a
JSON endpoint...), with the optional extra `vestnik[apprise]`. Without the package the
channel is off ("not configured") and the rest of Vestnik works.

Targets: a user's `apprise_urls` (a list) for a per-user forward; a setting's
`"apprise": {"urls": [...]}` for the shared ones, one send (and retry) per URL. Either list
has at most `MAX_URLS` strings of at most `MAX_URL_BYTES` bytes.

Apprise is blocking: each send runs in this channel's own pool of `WORKERS` threads (a send
waits for a free one; the event loop never blocks), with Apprise's socket timeouts capped
and `SEND_TIMEOUT_S` over the whole send. Apprise's `False` is `retry`; a URL it cannot
parse, a desktop/OS plugin (`LOCAL_SCHEMES`) or a refused address is `permanent`.

Egress: the URLs come from data. The URL is parsed by Apprise; when its plugin connects to
the URL's host (`{host}` in its templates: json://, xml://, form://, ntfy://, mailto://...)
that host is checked by the egress policy before the send. During the send, every name the
plugin's thread resolves (an SMTP server it looked up, a redirect, a DNS answer that
changed) is checked again (`guard`), so loopback and private addresses are refused unless
`VESTNIK_EGRESS_ALLOW` lists them.

Apprise URLs carry tokens: a URL never goes into a delivery detail, a log line or an error;
it is named `scheme://***`, and the key of a shared send is a hash of it. Apprise's own log
is off for the same reason (its lines can name the URLs), and so are the lines the HTTP
libraries under it (urllib3, requests) log from this channel's threads (`quiet`).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgspec

from vestnik.streams.channels.base import Channel, SendResult, resolved_notice
from vestnik.streams.channels.email import safe_link
from vestnik.streams.config import Config
from vestnik.streams.egress import Egress
from vestnik.streams.schemas import ChannelTarget, Notice, User

WORKERS = 4
MAX_URLS = 20
MAX_URL_BYTES = 2048
CONNECT_TIMEOUT_S = 4.0  # Apprise's per-request socket timeouts, capped (a URL's cto/rto)
READ_TIMEOUT_S = 8.0
SEND_TIMEOUT_S = 20.0  # one whole send, below the forwarder's own 30 s
# plugins that act on the forwarder's own host (desktop, D-Bus, syslog, USB), not a service
LOCAL_SCHEMES = frozenset({"dbus", "kde", "qt", "glib", "gnome", "macosx", "windows",
                           "syslog", "blink1"})
KIND = {"info": "info", "warning": "warning", "critical": "failure"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://")
THREADS = "vestnik-apprise"  # the name prefix of this channel's threads
# loggers of the libraries Apprise sends with: their debug lines name request URLs
LIBRARY_LOGGERS = ("urllib3", "urllib3.connectionpool", "urllib3.connection",
                   "urllib3.poolmanager", "urllib3.response", "urllib3.util.retry",
                   "requests", "paho", "paho.mqtt", "paho.mqtt.client")
log = logging.getLogger("vestnik.channels.apprise")


def redact(url: str) -> str:
    """How a URL is named anywhere we write: its scheme only (`ntfy://***`)."""
    m = _SCHEME.match(url)
    return f"{m.group(1).lower()}://***" if m else "<not a url>"


def url_key(url: str) -> str:
    """The key of a shared send (its sent marker, its /deliveries line): not the URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def check_urls(urls: object, where: str) -> list[str] | str:
    """`urls` as a list of URLs, or why it cannot be used (naming `where`, never a URL)."""
    if not isinstance(urls, list | tuple) or not urls or len(urls) > MAX_URLS or not all(
            isinstance(u, str) and 0 < len(u.encode()) <= MAX_URL_BYTES for u in urls):
        return (f"{where} must be a list of 1 to {MAX_URLS} URLs, each at most "
                f"{MAX_URL_BYTES} bytes")
    return list(urls)


def capped(seconds: object, cap: float) -> float:
    """A URL's own timeout (`cto`, `rto`) when it is a positive number below `cap`, else
    `cap`: a URL cannot hold one of the channel's threads longer."""
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return min(float(seconds), cap)
    return cap


# ------------------------------------------------------------------ the egress guard

_local = threading.local()  # .egress: the policy of this thread's send; .refused: why
_real_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
    """socket.getaddrinfo, its answers checked by the egress policy in a thread that is
    sending for this channel (`_local.egress` set); every other thread is left alone."""
    infos = _real_getaddrinfo(host, port, *args, **kw)
    egress: Egress | None = getattr(_local, "egress", None)
    if egress is None:
        return infos
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name.lower().rstrip(".") in egress.names:
        return infos
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        why = egress.refusal(ip, str(ip))  # names the address only: a host can be a secret
        if why is not None:
            _local.refused = why
            raise socket.gaierror(socket.EAI_NONAME, why)
    return infos


def guard() -> None:
    """Install the check (once per process; a no-op in threads that do not send here)."""
    if socket.getaddrinfo is not _guarded_getaddrinfo:
        socket.getaddrinfo = _guarded_getaddrinfo


class _NotFromSends(logging.Filter):
    """Drops the records a library logs from this channel's threads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.threadName.startswith(THREADS)


def quiet() -> None:
    """Apprise's log off; the HTTP libraries' lines from our threads dropped (each logger
    filters only its own records: every one is named)."""
    apprise_log = logging.getLogger("apprise")
    apprise_log.disabled, apprise_log.propagate = True, False
    names = set(LIBRARY_LOGGERS) | {n for n in logging.root.manager.loggerDict
                                    if n.split(".", 1)[0] in ("urllib3", "requests")}
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NotFromSends) for f in logger.filters):
            logger.addFilter(_NotFromSends())


# ------------------------------------------------------------------ the channel


class AppriseChannel(Channel):
    name = "apprise"
    user_address = "apprise_urls"

    def __init__(self, egress: Egress, workers: int = WORKERS) -> None:
        import apprise  # the optional extra: `create` checked it is there

        self.apprise = apprise
        self.asset = apprise.AppriseAsset(storage_mode="memory", secure_logging=True)
        self.egress = egress
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=THREADS)
        self.slots = asyncio.Semaphore(workers)  # a send waits here for a free thread
        guard()
        quiet()

    @classmethod
    def create(cls, settings: Config, http: httpx.AsyncClient) -> AppriseChannel | None:
        quiet()  # before the import: Apprise logs as it loads
        try:
            import apprise  # noqa: F401
        except ImportError:
            return None  # off: `pip install 'vestnik[apprise]'`
        return cls(Egress.from_settings(settings))

    def shared_targets(self, target: ChannelTarget) -> list[tuple[str, ChannelTarget]]:
        """One send per URL of `urls`, keyed by its hash; a bad list is one send that
        fails saying why."""
        if "urls" not in target.extra:
            return []
        urls = check_urls(target.extra["urls"], "apprise.urls")
        if isinstance(urls, str):
            return [("", target)]
        return [(url_key(u), msgspec.structs.replace(target, extra={**target.extra,
                                                                    "urls": [u]}))
                for u in urls]

    async def send(self, notice: Notice, user: User | None, target: ChannelTarget
                   ) -> SendResult:
        return await self._send(notice, user, target, KIND.get(notice.severity, "info"))

    async def send_resolved(self, notice: Notice, user: User | None, target: ChannelTarget,
                            reply_to: str | None) -> SendResult:
        return await self._send(resolved_notice(notice), user, target, "success")

    async def _send(self, notice: Notice, user: User | None, target: ChannelTarget,
                    kind: str) -> SendResult:
        urls = check_urls(user.apprise_urls, f"user {user.id}: apprise_urls") if user \
            else check_urls(target.extra.get("urls"), "apprise.urls")
        if isinstance(urls, str):
            return SendResult.permanent(urls)
        link = safe_link(notice.link)
        body = "\n".join(p for p in (notice.body, link) if p) or notice.title
        results = await asyncio.gather(*(self._one(u, notice.title, body, kind) for u in urls))
        bad = [r for r in results if not r.ok]
        if not bad:
            return SendResult.sent("; ".join(r.detail for r in results))
        worst = next((r for r in bad if r.status == "retry"), bad[0])
        return SendResult(worst.status, "; ".join(r.detail for r in bad))

    async def _one(self, url: str, title: str, body: str, kind: str) -> SendResult:
        """One URL, in a pool thread; the slot is held until the thread is done, even when
        this send has stopped waiting for it."""
        await self.slots.acquire()
        try:
            job = asyncio.wrap_future(self.pool.submit(self._notify, url, title, body, kind))
        except BaseException:
            self.slots.release()
            raise
        job.add_done_callback(lambda _: self.slots.release())
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                status, why = await asyncio.shield(job)
        except TimeoutError:
            return SendResult.retry(f"{redact(url)}: no answer in {SEND_TIMEOUT_S:g}s")
        return SendResult(status, f"{redact(url)}: {why}")

    def _notify(self, url: str, title: str, body: str, kind: str) -> tuple[str, str]:
        """Apprise's blocking send (a pool thread): (status, detail without the URL)."""
        _local.egress, _local.refused = self.egress, None
        try:
            scheme = _SCHEME.match(url)
            if scheme is None or scheme.group(1).lower() in LOCAL_SCHEMES:
                return "permanent", "not a URL of a network service Apprise supports"
            plugin = self.apprise.Apprise.instantiate(url, asset=self.asset)
            if plugin is None:
                return "permanent", "Apprise cannot use this URL"
            why = self._check_host(plugin)
            if why is not None:
                return ("permanent", why) if _local.refused else ("retry", why)
            plugin.socket_connect_timeout = capped(plugin.socket_connect_timeout,
                                                   CONNECT_TIMEOUT_S)
            plugin.socket_read_timeout = capped(plugin.socket_read_timeout, READ_TIMEOUT_S)
            ok = plugin.notify(body=body, title=title, notify_type=kind, body_format="text")
            if _local.refused:
                return "permanent", _local.refused
            return ("ok", "sent") if ok else ("retry", "not delivered (Apprise said no)")
        except Exception as e:  # a plugin's bug: its text may hold the URL, so not kept
            log.warning("apprise send failed: %s", type(e).__name__)
            return "retry", f"failed: {type(e).__name__}"
        finally:
            _local.egress = _local.refused = None

    def _check_host(self, plugin: Any) -> str | None:
        """Why the host the plugin connects to (the URL's, for plugins whose templates
        name `{host}`) may not be sent to now, or None."""
        if not any("{host}" in t for t in getattr(plugin, "templates", ())):
            return None
        host = getattr(plugin, "host", None)
        host = host.strip("[]") if isinstance(host, str) else ""  # `[::1]` is `::1`
        if not host:
            return None
        port = plugin.port if isinstance(plugin.port, int) else \
            (443 if getattr(plugin, "secure", False) else 80)
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # checked by the guard
        except OSError as e:
            return _local.refused or f"cannot resolve its host: {type(e).__name__}"
        return None

    async def aclose(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
