"""Webhook: a JSON POST of the notice to the setting's `url`, signed per Standard Webhooks.

Headers `webhook-id` (`<notice id>`, the same on every retry: receivers dedupe on it),
`webhook-timestamp` (seconds) and `webhook-signature: v1,<base64 HMAC-SHA256>` of
`"{id}.{timestamp}.{body}"` with the secret — the target's `secret` or
`VESTNIK_WEBHOOK_SECRET`, in the `whsec_<base64>` form. Without a secret the request is
sent unsigned.

The body is the notice as its recipients see it in their feed (`notice_view`): without
`recipients` and `channels` (other users, chat ids, webhook URLs and secrets). An incident's
resolved message is the notice as it is then (`status: "resolved"`, `resolved_at`) with
`webhook-id` `<notice id>.resolved` (not the firing one's: receivers dedupe on it); a digest
is `{"type": "digest", "id", "notices": [the public view of each], "more"}` with
`webhook-id` the digest's id. The URL comes
from data, so it passes the egress policy (`streams.egress`): a refused address is a
permanent failure naming the reason, and the connection goes to the address checked.

Requests go through a lean keep-alive HTTP/1.1 pool (`http1.HttpPool`, ~0.1 ms of CPU per
request against httpx's ~0.8 ms, B5) unless a proxy is configured in the environment
(`HTTP(S)_PROXY`), which only the shared httpx client honours (the name is checked before
the request; the proxy resolves it again).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from urllib.parse import urlsplit

import httpx
import msgspec

from vestnik.streams.channels.base import (
    Channel,
    DataTargets,
    Digest,
    SendResult,
    classify_http,
)
from vestnik.streams.channels.http1 import HttpPool
from vestnik.streams.config import Config, ConfigError
from vestnik.streams.schemas import ChannelTarget, Notice, User, json_encode, public_json

TIMEOUT_S = 10.0  # the whole request, as the shared httpx client's timeout
def secret_key(secret: str) -> bytes:
    """`whsec_<base64>` (or bare base64) → the HMAC key; ValueError when it is not base64."""
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _password(url: str | None) -> str | None:
    try:
        return urlsplit(url).password if url is not None else None
    except ValueError:
        return None


class WebhookChannel(Channel):
    name = "webhook"
    user_address = None  # webhooks go to the setting's url, not to a user

    def __init__(self, targets: DataTargets, key: bytes | None,
                 lean: HttpPool | None = None) -> None:
        self.targets, self.key, self.lean = targets, key, lean

    @classmethod
    def create(cls, settings: Config, http: httpx.AsyncClient) -> WebhookChannel | None:
        key = None
        if settings.webhook_secret:
            try:
                key = secret_key(settings.webhook_secret)
            except ValueError as e:
                raise ConfigError(f"VESTNIK_WEBHOOK_SECRET: {e}") from None
        targets = DataTargets(settings, http)
        return cls(targets, key, None if targets.proxied else HttpPool(
            per_host=16, headers={"User-Agent": "vestnik"}, resolve=targets.egress.resolve))

    async def send(self, notice: Notice, user: User | None, target: ChannelTarget
                   ) -> SendResult:
        return await self._post(target, notice.id, public_json(notice))

    async def send_resolved(self, notice: Notice, user: User | None, target: ChannelTarget,
                            reply_to: str | None) -> SendResult:
        return await self._post(target, f"{notice.id}.resolved", public_json(notice))

    async def send_digest(self, digest: Digest, user: User | None, target: ChannelTarget
                          ) -> SendResult:
        body = json_encode({"type": "digest", "id": digest.id,
                            "notices": [msgspec.Raw(public_json(n)) for n in digest.notices],
                            "more": digest.more})
        return await self._post(target, digest.id, body)

    async def _post(self, target: ChannelTarget, msg_id: str, body: bytes) -> SendResult:
        """`_send`, with a `user:pw@` password in the URL kept out of the detail (it goes
        to /deliveries and the admin page; the receiver gets it as Basic auth)."""
        result = await self._send(target, msg_id, body)
        pw = _password(target.url)
        if not pw or f":{pw}@" not in result.detail:
            return result
        return msgspec.structs.replace(result, detail=result.detail.replace(f":{pw}@", ":***@"))

    async def _send(self, target: ChannelTarget, msg_id: str, body: bytes) -> SendResult:
        url = target.url
        if url is None or not url.startswith(("http://", "https://")):
            return SendResult.permanent(f"webhook: bad url {url!r}")
        key = self.key
        if target.secret:
            try:
                key = secret_key(target.secret)
            except ValueError as e:
                return SendResult.permanent(f"webhook: {e}")
        ts = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(ts)}
        if key is not None:
            headers["webhook-signature"] = sign(key, msg_id, ts, body)
        what = f"webhook {url}"
        if self.lean is None:
            _, result = await self.targets.post(url, what, content=body, headers=headers)
            return result
        try:
            async with asyncio.timeout(TIMEOUT_S):
                resp = await self.lean.post(url, body, headers)
        except ValueError as e:  # EgressRefused, http1.BadRequest: retrying cannot help
            return SendResult.permanent(f"{what}: {e}")
        except TimeoutError:
            return SendResult.retry(f"{what}: timeout")
        except OSError as e:  # HttpError, refused, reset, DNS
            return SendResult.retry(f"{what}: {type(e).__name__}: {e}")
        return classify_http(resp, what)

    async def aclose(self) -> None:
        if self.lean is not None:
            await self.lean.aclose()
        await self.targets.aclose()
