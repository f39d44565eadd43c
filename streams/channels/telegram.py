"""Telegram: Bot API `sendMessage` (HTML parse mode) to a user's chat or a setting's chats.

`VESTNIK_TELEGRAM_TOKEN` turns it on; `VESTNIK_TELEGRAM_API` points it elsewhere (tests
run a local stand-in). 429 honours `parameters.retry_after`; a 400/403/404 (a bad or
blocked chat) is permanent. The token never appears in a recorded detail.
"""

from __future__ import annotations

import html

import httpx

from vestnik.streams.channels.base import Channel, SendResult, post
from vestnik.streams.channels.email import safe_link
from vestnik.streams.config import Config
from vestnik.streams.schemas import ChannelTarget, Notice, User

LIMIT = 4096
ICON = {"info": "\u2139\ufe0f", "warning": "\u26a0\ufe0f", "critical": "\U0001f6a8"}


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
        chats = [user.telegram_chat_id] if user else list(target.chat_ids)
        chats = [c for c in chats if c not in (None, "")]
        if not chats:
            return SendResult.permanent("no telegram chat id")
        text = render(notice)
        results = [await self._send_one(chat, text) for chat in chats]
        bad = [r for r in results if not r.ok]
        if not bad:
            return SendResult.sent("; ".join(r.detail for r in results))
        retry = [r for r in bad if r.status == "retry"]
        worst = retry[0] if retry else bad[0]
        return SendResult(worst.status, "; ".join(r.detail for r in bad), worst.retry_after)

    async def _send_one(self, chat: int | str, text: str) -> SendResult:
        payload = {"chat_id": chat, "text": text, "parse_mode": "HTML",
                   "disable_web_page_preview": True}
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
                    mid = (answer.get("result") or {}).get("message_id")
                    result = SendResult.sent(f"chat {chat}: message {mid}")
                elif resp.status_code == 429:
                    after = (answer.get("parameters") or {}).get("retry_after")
                    result = SendResult.retry(
                        f"chat {chat}: 429 {answer.get('description', '')}".strip(),
                        float(after) if isinstance(after, int | float) else result.retry_after)
                elif answer.get("description"):
                    result = SendResult(result.status,
                                        f"chat {chat}: {resp.status_code} "
                                        f"{answer['description']}", result.retry_after)
        return SendResult(result.status, result.detail.replace(self.token, "<token>"),
                          result.retry_after)
