"""Telegram: Bot API `sendMessage` (HTML parse mode) to a user's chat or a setting's chats.

`VESTNIK_TELEGRAM_TOKEN` turns it on; `VESTNIK_TELEGRAM_API` points it elsewhere (tests
run a local stand-in). 429 honours `parameters.retry_after`; a 400/403/404 (a bad or
blocked chat) is permanent. The token never appears in a recorded detail.

A send's `ref` is the `message_id` the Bot API answered (one chat per send); an incident's
resolved message replies to it (`reply_to_message_id`, `allow_sending_without_reply`).
An answer that is not what the Bot API says (not JSON, wrong types) is never a crash: the
send counts by its HTTP status, without a ref.
"""

from __future__ import annotations

import html
import re
from typing import Any

import httpx

from vestnik.streams.channels.base import (
    Channel,
    Digest,
    SendResult,
    fired_for,
    post,
    utc_time,
)
from vestnik.streams.channels.email import safe_link
from vestnik.streams.config import Config
from vestnik.streams.schemas import ChannelTarget, Notice, User

LIMIT = 4096
ICON = {"info": "\u2139\ufe0f", "warning": "\u26a0\ufe0f", "critical": "\U0001f6a8"}
RESOLVED_ICON = "\u2705"
_MESSAGE_ID = re.compile(r"^[1-9][0-9]{0,15}\Z")


def esc(text: str) -> str:
    return html.escape(text, quote=False)


def render(notice: Notice) -> str:
    """The message text: bold title, body, link; escaped for parse_mode=HTML, <= 4096."""
    head = f"{ICON.get(notice.severity, '')} <b>{esc(notice.title[:600])}</b>".strip()
    link = safe_link(notice.link)
    tail = f'\n<a href="{html.escape(link, quote=True)}">Open</a>' if link else ""

    def build(body: str) -> str:
        return head + (f"\n{esc(body)}" if body else "") + tail

    body = notice.body
    text = build(body)
    while len(text) > LIMIT and body:
        # each raw character removed removes at least one escaped one
        cut = len(body) - (len(text) - LIMIT) - 1
        if cut <= 0:
            cut = len(body) // 2 - 1  # heavily escaped text: halve it
        body = body[:cut] + "\u2026" if cut > 0 else ""
        text = build(body)
    return text


def render_resolved(notice: Notice) -> str:
    """"Resolved: <title>", how long it fired, the link."""
    link = safe_link(notice.link)
    return (f"{RESOLVED_ICON} <b>Resolved: {esc(notice.title[:600])}</b>\n"
            f"Fired for {fired_for(notice)}."
            + (f'\n<a href="{html.escape(link, quote=True)}">Open</a>' if link else ""))


def render_digest(digest: Digest) -> str:
    """A compact list, newest first: icon, title (linked), time; cut to fit 4096
    characters, what did not fit counted in "and N more"."""
    total = len(digest.notices) + digest.more
    text = f"<b>{total} notice{'s' if total != 1 else ''}</b>"
    more = digest.more
    for i, n in enumerate(digest.notices):
        title = esc(n.title[:200])
        link = safe_link(n.link)
        if link:
            title = f'<a href="{html.escape(link, quote=True)}">{title}</a>'
        line = f"\n{ICON.get(n.severity, '')} {title} \u00b7 {utc_time(n.created_at)}"
        if len(text) + len(line) > LIMIT - 40:  # room for the "and N more" line
            more += len(digest.notices) - i
            break
        text += line
    return text + (f"\nand {more} more" if more else "")


def message_ref(answer: Any) -> str | None:
    """`result.message_id` of a sendMessage answer, when it is one (a positive int)."""
    result = answer.get("result") if isinstance(answer, dict) else None
    mid = result.get("message_id") if isinstance(result, dict) else None
    if isinstance(mid, int) and not isinstance(mid, bool) and 0 < mid < 2**53:
        return str(mid)
    return None


class TelegramChannel(Channel):
    name = "telegram"
    user_address = "telegram_chat_id"

    def __init__(self, http: httpx.AsyncClient, api: str, token: str) -> None:
        self.http, self.token = http, token
        self.url = f"{api.rstrip('/')}/bot{token}/sendMessage"

    @classmethod
    def create(cls, settings: Config, http: httpx.AsyncClient) -> TelegramChannel | None:
        if not settings.telegram_token:
            return None
        return cls(http, settings.telegram_api, settings.telegram_token)

    async def send(self, notice: Notice, user: User | None, target: ChannelTarget
                   ) -> SendResult:
        return await self._send(render(notice), user, target)

    async def send_resolved(self, notice: Notice, user: User | None, target: ChannelTarget,
                            reply_to: str | None) -> SendResult:
        """A reply to the firing message when `reply_to` is a message id (else a new one)."""
        reply = int(reply_to) if reply_to and _MESSAGE_ID.match(reply_to) else None
        return await self._send(render_resolved(notice), user, target, reply)

    async def send_digest(self, digest: Digest, user: User | None, target: ChannelTarget
                          ) -> SendResult:
        return await self._send(render_digest(digest), user, target)

    async def _send(self, text: str, user: User | None, target: ChannelTarget,
                    reply_to: int | None = None) -> SendResult:
        chats = [user.telegram_chat_id] if user else list(target.chat_ids)
        chats = [c for c in chats if c not in (None, "")]
        if not chats:
            return SendResult.permanent("no telegram chat id")
        results = [await self._send_one(chat, text, reply_to) for chat in chats]
        bad = [r for r in results if not r.ok]
        if not bad:  # a ref names a message in one chat: only a one-chat send has one
            return SendResult.sent("; ".join(r.detail for r in results),
                                   ref=results[0].ref if len(results) == 1 else None)
        retry = [r for r in bad if r.status == "retry"]
        worst = retry[0] if retry else bad[0]
        return SendResult(worst.status, "; ".join(r.detail for r in bad), worst.retry_after)

    async def _send_one(self, chat: int | str, text: str, reply_to: int | None = None
                        ) -> SendResult:
        payload: dict[str, Any] = {"chat_id": chat, "text": text, "parse_mode": "HTML",
                                   "disable_web_page_preview": True}
        if reply_to is not None:
            payload["reply_to_message_id"] = reply_to
            payload["allow_sending_without_reply"] = True
        resp, result = await post(self.http, self.url, f"chat {chat}", json=payload)
        if resp is not None:
            try:
                answer = resp.json()
            except ValueError:
                answer = {}
            if isinstance(answer, dict):
                if result.ok and answer.get("ok") is False:
                    result = SendResult.permanent(f"chat {chat}: {answer.get('description')}")
                elif result.ok:
                    ref = message_ref(answer)
                    result = SendResult.sent(f"chat {chat}: message {ref}", ref=ref)
                elif resp.status_code == 429:
                    params = answer.get("parameters")
                    after = params.get("retry_after") if isinstance(params, dict) else None
                    result = SendResult.retry(
                        f"chat {chat}: 429 {answer.get('description', '')}".strip(),
                        float(after) if isinstance(after, int | float) else result.retry_after)
                elif answer.get("description"):
                    result = SendResult(result.status,
                                        f"chat {chat}: {resp.status_code} "
                                        f"{answer['description']}", result.retry_after)
        return SendResult(result.status, result.detail.replace(self.token, "<token>"),
                          result.retry_after, result.ref)
