"""Egress policy: where a URL that comes from data (a setting's or a notice's webhook or
Slack `url`) may send a request.

After resolution, an address that is loopback, link-local, private, shared (100.64/10),
multicast, reserved or unspecified — also hidden in an IPv4-mapped, IPv4-compatible, 6to4,
NAT64 or Teredo IPv6 address — is refused unless `VESTNIK_EGRESS_ALLOW` lists it (a CIDR)
or the host name. Numeric host forms that resolvers accept (`127.1`, `0x7f.1`,
`2130706433`, `0177.0.0.1`) are literal addresses: checked without a DNS lookup.

The caller connects to the address `resolve` returned (never the name again), so a DNS
answer cannot change between the check and the connect (rebinding). Decisions on names are
cached for `TTL_S` (B5 sends ~8,000 webhooks a second: no DNS lookup per send). URLs the
operator configured in the environment (Telegram/Slack API bases, SMTP, the Slack webhook)
are trusted and never pass through here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
import typing
from urllib.parse import urlsplit

import httpcore
import httpx

from vestnik.streams.config import Config

__all__ = ["Egress", "EgressRefused", "literal_ip", "pinned_client"]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
TTL_S = 30.0
MAX_CACHED = 4096
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_V4_COMPAT = ipaddress.ip_network("::/96")
# what inet_aton accepts: 1 to 4 parts, each decimal, octal (0...) or hex (0x...)
_NUMERIC_V4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.I)


class EgressRefused(ValueError):
    """The target is not allowed: a permanent failure (retrying cannot change it)."""


def literal_ip(host: str) -> IP | None:
    """The address a host string denotes without DNS (`[::1]`, `127.1`, `0x7f000001`)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_V4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_v4(ip: IP) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, 6to4, NAT64, Teredo)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if (ip in _V4_COMPAT and int(ip) > 1) or any(ip in n for n in _NAT64):  # not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def kind_of(ip: IP) -> str | None:
    """Why `ip` is not a public address (`loopback`, `private`, ...), None when it is."""
    inner = _embedded_v4(ip)
    if inner is not None and (why := kind_of(inner)) is not None:
        return why
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "not global"


class Egress:
    """The policy of one process: `VESTNIK_EGRESS_ALLOW` and a short cache of decisions."""

    def __init__(self, allow: typing.Iterable[str] = ()) -> None:
        self.nets: list[Net] = []
        self.names: set[str] = set()
        for item in allow:
            try:
                self.nets.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                self.names.add(item.lower().rstrip("."))
        self._cache: dict[str, tuple[float, str | EgressRefused]] = {}

    @classmethod
    def from_settings(cls, settings: Config) -> Egress:
        return cls(settings.egress_allow)

    def allowed(self, ip: IP) -> bool:
        inner = _embedded_v4(ip)
        return any(ip in n or (inner is not None and inner in n) for n in self.nets)

    def refusal(self, ip: IP, host: str) -> str | None:
        """Why a request to `ip` (from `host`) is refused, or None when it may go."""
        why = kind_of(ip)
        if why is None or self.allowed(ip):
            return None
        named = f"{host} resolves to {ip}" if literal_ip(host) is None else f"{ip}"
        return (f"egress refused: {named} is {why} (not in VESTNIK_EGRESS_ALLOW)")

    def check_literal(self, host: str) -> str | None:
        """The refusal of a literal address (what settings can say without DNS), or None."""
        ip = literal_ip(host)
        return None if ip is None else self.refusal(ip, host)

    async def resolve(self, host: str, port: int) -> str:
        """The address to connect to for `host`; EgressRefused when it is not allowed.
        DNS failures raise OSError (retryable), and are not cached."""
        key = host.lower().rstrip(".").strip("[]")
        if not key:
            raise EgressRefused("egress refused: no host")
        ip = literal_ip(key)
        if ip is not None:  # no DNS, no cache: parsing is cheaper than a lookup
            why = self.refusal(ip, key)
            if why is not None:
                raise EgressRefused(why)
            return str(ip)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is None or hit[0] < now:
            hit = (now + TTL_S, await self._decide(key, port))
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[key] = hit
        if isinstance(hit[1], EgressRefused):
            raise EgressRefused(str(hit[1]))
        return hit[1]

    async def _decide(self, host: str, port: int) -> str | EgressRefused:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in infos]
        if not addresses:
            raise OSError(f"no address for {host}")
        if host not in self.names:
            for ip in addresses:  # one refused answer refuses the name: no lucky draws
                why = self.refusal(ip, host)
                if why is not None:
                    return EgressRefused(why)
        return str(addresses[0])

    async def check_url(self, url: str) -> None:
        """Resolve and check the host of `url` (for a request the caller cannot pin)."""
        u = urlsplit(url)
        try:
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise EgressRefused(f"bad port in {url!r}") from None
        await self.resolve(u.hostname or "", port)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting to the address the policy checked."""

    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        address = await self.egress.resolve(host, port)
        return await self.inner.connect_tcp(address, port, timeout, local_address,
                                            socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[typing.Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("egress refused: unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def pinned_client(egress: Egress, **kw: typing.Any) -> httpx.AsyncClient:
    """An httpx client for data-given URLs: every connection goes through the policy; no
    proxies from the environment (the proxy would resolve the name), no redirects."""
    transport = httpx.AsyncHTTPTransport(trust_env=False, limits=kw.pop("limits", None)
                                         or httpx.Limits(max_connections=16))
    pool = transport._pool  # httpx has no public way to pass httpcore a network backend
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=pool._ssl_context, max_connections=pool._max_connections,
        max_keepalive_connections=pool._max_keepalive_connections,
        keepalive_expiry=pool._keepalive_expiry, network_backend=PinnedBackend(egress))
    return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False,
                             **kw)
