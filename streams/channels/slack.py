"""Slack: an incoming webhook (the setting's `url` or `VESTNIK_SLACK_WEBHOOK_URL`), or
`chat.postMessage` (`VESTNIK_SLACK_API` + `VESTNIK_SLACK_TOKEN`) to a user's `slack_user`.

A per-user forward uses chat.postMessage when a token is configured, else posts to the
webhook mentioning the user. Slack answers errors as HTTP 200 `{"ok": false, "error"}`;
rate limits and Slack-side errors are retried, everything else (channel_not_found,
invalid_auth, a 4xx from a webhook) is permanent.

A chat.postMessage send's `ref` is the `ts` Slack answered (an incoming webhook answers no
ts: no ref); an incident's resolved message goes into that thread (`thread_ts`). An answer
that is not a JSON object with the fields Slack documents is never a crash: no ref.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from vestnik.streams.channels.base import (
    Channel,
    DataTargets,
    Digest,
    SendResult,
    fired_for,
    post,
    utc_time,
)
from vestnik.streams.channels.email import safe_link
from vestnik.streams.config import Config
from vestnik.streams.schemas import ChannelTarget, Notice, User

RETRYABLE_ERRORS = frozenset({"ratelimited", "service_unavailable", "internal_error",
                              "fatal_error", "request_timeout"})
_TS = re.compile(r"^[0-9]{1,12}\.[0-9]{1,9}\Z")
DIGEST_CHARS = 3500  # a digest's text; the rest is counted in "and N more"


def valid_ts(ts: object) -> str | None:
    """A Slack message `ts` (`1712345678.000100`), or None for anything else."""
    return ts if isinstance(ts, str) and _TS.match(ts) else None


def esc(text: str) -> str:
    """Slack mrkdwn control characters (&, <, >) as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(notice: Notice, mention: str | None = None) -> str:
    parts = [f"*{esc(notice.title)}*"]
    if mention:
        parts[0] = f"<@{esc(mention)}> {parts[0]}"
    if notice.body:
        parts.append(esc(notice.body[:3000]))
    link = safe_link(notice.link)
    if link:
        parts.append(f"<{esc(link)}|Open>")
    return "\n".join(parts)


def render_resolved(notice: Notice, mention: str | None = None) -> str:
    """"Resolved: <title>", how long it fired, the link."""
    text = f"*Resolved: {esc(notice.title)}*\nFired for {fired_for(notice)}."
    if mention:
        text = f"<@{esc(mention)}> {text}"
    link = safe_link(notice.link)
    return text + (f"\n<{esc(link)}|Open>" if link else "")


def render_digest(digest: Digest, mention: str | None = None) -> str:
    """A compact list, newest first: severity, title, time, link; what does not fit in
    `DIGEST_CHARS` is counted in "and N more"."""
    total = len(digest.notices) + digest.more
    text = f"*{total} notice{'s' if total != 1 else ''}*"
    if mention:
        text = f"<@{esc(mention)}> {text}"
    more = digest.more
    for i, n in enumerate(digest.notices):
        link = safe_link(n.link)
        line = (f"\n\u2022 [{n.severity}] {esc(n.title[:200])} ({utc_time(n.created_at)})"
                + (f" <{esc(link)}|Open>" if link else ""))
        if len(text) + len(line) > DIGEST_CHARS:
            more += len(digest.notices) - i
            break
        text += line
    return text + (f"\nand {more} more" if more else "")


class SlackChannel(Channel):
    name = "slack"
    user_address = "slack_user"

    def __init__(self, http: httpx.AsyncClient, settings: Config) -> None:
        self.http = http
        self.api = settings.slack_api.rstrip("/")
        self.token = settings.slack_token
        self.webhook_url = settings.slack_webhook_url  # the operator's: trusted
        self.targets = DataTargets(settings, http)  # a setting's url: egress policy

    @classmethod
    def create(cls, settings: Config, http: httpx.AsyncClient) -> SlackChannel | None:
        # always on: a setting may name its own webhook url
        return cls(http, settings)

    async def send(self, notice: Notice, user: User | None, target: ChannelTarget
                   ) -> SendResult:
        return await self._send(lambda mention: render(notice, mention), user, target)

    async def send_resolved(self, notice: Notice, user: User | None, target: ChannelTarget,
                            reply_to: str | None) -> SendResult:
        """In the firing message's thread when `reply_to` is its ts (else a new message)."""
        return await self._send(lambda mention: render_resolved(notice, mention), user,
                                target, valid_ts(reply_to))

    async def send_digest(self, digest: Digest, user: User | None, target: ChannelTarget
                          ) -> SendResult:
        return await self._send(lambda mention: render_digest(digest, mention), user, target)

    async def _send(self, text: Callable[[str | None], str], user: User | None,
                    target: ChannelTarget, thread_ts: str | None = None) -> SendResult:
        """Post `text(mention)`: chat.postMessage to the user when a token is configured
        (no mention), else to the target's or the configured webhook."""
        url = target.url
        if user is not None and user.slack_user and self.token:
            return await self._post_message(text(None), user.slack_user, thread_ts)
        if not url and not self.webhook_url:
            return SendResult.permanent("slack: no webhook url and no token")
        mention = user.slack_user if user is not None else None
        payload = {"text": text(mention)}
        if thread_ts is not None:
            payload["thread_ts"] = thread_ts
        if url:
            _, result = await self.targets.post(url, "slack webhook", json=payload)
        else:
            _, result = await post(self.http, str(self.webhook_url), "slack webhook",
                                   json=payload)
        return result

    async def aclose(self) -> None:
        await self.targets.aclose()

    async def _post_message(self, text: str, channel: str, thread_ts: str | None = None
                            ) -> SendResult:
        body = {"channel": channel, "text": text}
        if thread_ts is not None:
            body["thread_ts"] = thread_ts
        resp, result = await post(
            self.http, f"{self.api}/chat.postMessage", f"slack {channel}", json=body,
            headers={"Authorization": f"Bearer {self.token}"})
        if resp is None or not result.ok:
            return result
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            return SendResult.retry(f"slack {channel}: answer is not a JSON object")
        if answer.get("ok") is True:
            ts = valid_ts(answer.get("ts"))
            return SendResult.sent(f"slack {channel}: ts {ts}", ref=ts)
        error = str(answer.get("error"))
        detail = f"slack {channel}: {error}"
        return SendResult.retry(detail) if error in RETRYABLE_ERRORS \
            else SendResult.permanent(detail)
