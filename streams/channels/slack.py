"""Slack: an incoming webhook (the setting's `url` or `VESTNIK_SLACK_WEBHOOK_URL`), or
`chat.postMessage` (`VESTNIK_SLACK_API` + `VESTNIK_SLACK_TOKEN`) to a user's `slack_user`.

A per-user forward uses chat.postMessage when a token is configured, else posts to the
webhook mentioning the user. Slack answers errors as HTTP 200 `{"ok": false, "error"}`;
rate limits and Slack-side errors are retried, everything else (channel_not_found,
invalid_auth, a 4xx from a webhook) is permanent.
"""

from __future__ import annotations

import httpx

from vestnik.streams.channels.base import Channel, DataTargets, SendResult, post
from vestnik.streams.channels.email import safe_link
from vestnik.streams.config import Config
from vestnik.streams.schemas import ChannelTarget, Notice, User

RETRYABLE_ERRORS = frozenset({"ratelimited", "service_unavailable", "internal_error",
                              "fatal_error", "request_timeout"})


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
        url = target.url
        if user is not None and user.slack_user and self.token:
            return await self._post_message(notice, user.slack_user)
        if not url and not self.webhook_url:
            return SendResult.permanent("slack: no webhook url and no token")
        mention = user.slack_user if user is not None else None
        payload = {"text": render(notice, mention)}
        if url:
            _, result = await self.targets.post(url, "slack webhook", json=payload)
        else:
            _, result = await post(self.http, str(self.webhook_url), "slack webhook",
                                   json=payload)
        return result

    async def aclose(self) -> None:
        await self.targets.aclose()

    async def _post_message(self, notice: Notice, channel: str) -> SendResult:
        resp, result = await post(
            self.http, f"{self.api}/chat.postMessage", f"slack {channel}",
            json={"channel": channel, "text": render(notice)},
            headers={"Authorization": f"Bearer {self.token}"})
        if resp is None or not result.ok:
            return result
        try:
            answer = resp.json()
        except ValueError:
            return SendResult.retry(f"slack {channel}: answer is not JSON")
        if answer.get("ok"):
            return SendResult.sent(f"slack {channel}: ts {answer.get('ts')}")
        error = str(answer.get("error"))
        detail = f"slack {channel}: {error}"
        return SendResult.retry(detail) if error in RETRYABLE_ERRORS \
            else SendResult.permanent(detail)
