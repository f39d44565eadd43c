"""Secrets never reach a log: api, center and forwarder run at debug level through a whole
flow (ingest, inbox, SSE with the token in the query, email and Telegram forwards, bad
tokens refused) and their logs are searched for the JWT secret, the service token, every
user token and the bot token."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "faults"))

from fault_support import FlakyHttp, Stack, add_users, stack, token

from support import SSE, SmtpSink, eventually

__all__ = ["stack"]

BOT_TOKEN = "987654:bot-token-" + "s" * 20


@pytest.mark.timeout(90)
async def test_secrets_never_logged_at_debug_level(stack: Stack):
    server = stack.redis(appendonly=False)
    url = server.url
    smtp = SmtpSink().start()
    tg = FlakyHttp().start()
    env = {"VESTNIK_LOG_LEVEL": "debug", "VESTNIK_SMTP_URL": smtp.url,
           "VESTNIK_SMTP_FROM": "vestnik@example.org", "VESTNIK_TELEGRAM_TOKEN": BOT_TOKEN,
           "VESTNIK_TELEGRAM_API": tg.base}
    try:
        from redis.asyncio import Redis

        r = Redis.from_url(url)
        await add_users(r, "1", "2", telegram_chat_id=111)
        await r.aclose()
        api = stack.api(url, **env)
        center = stack.proc(url, "center", "--no-forward", **env)
        fwd = stack.proc(url, "forwarder", **env)
        secret = api.env["VESTNIK_SECRET"]
        tokens = [token(url, "1"), token(url, "2")]
        sse = await SSE(f"{api.base}/api/v1/me/stream?token={tokens[0]}").connect()
        assert sse.status == 200
        async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
            svc = {"Authorization": f"Bearer {api.service_token}"}
            r1 = await http.post("/api/v1/notices", headers=svc, json={
                "alert": "disk", "title": "t", "recipients": ["1", "2"], "forward_after": 0,
                "channels": {"email": {"users": ["1"]}, "telegram": {"users": ["2"]}}})
            assert r1.status_code == 202
            assert (await sse.take(1, event="notice"))[0].json()["title"] == "t"
            for t in tokens:
                me = {"Authorization": f"Bearer {t}"}
                assert (await http.get("/api/v1/me/notices", headers=me)).status_code == 200
                assert (await http.get("/api/v1/me/unread-count", headers=me)).status_code == 200
            # refused tokens: a tampered JWT, a service token where a user is needed
            bad = tokens[0][:-3] + "xyz"
            assert (await http.get(f"/api/v1/me/notices?token={bad}")).status_code == 401
            assert (await http.get("/api/v1/me/notices", headers=svc)).status_code == 401
            await eventually(lambda: _sent(smtp, tg), timeout=30, what="email and telegram")
        await sse.close()
    finally:
        smtp.stop()
        tg.stop()
    for p in (api.proc, center, fwd):
        p.stop()
    logs = {p.log_path.name: p.output() for p in (api.proc, center, fwd)}
    assert "DEBUG" in logs[fwd.log_path.name]  # debug logging really was on
    secrets = {"secret": secret, "service token": api.service_token, "bot token": BOT_TOKEN,
               "bot token id": BOT_TOKEN.split(":")[1],
               **{f"user token {i}": t for i, t in enumerate(tokens)},
               "tampered token": bad}
    leaks = [(what, name) for what, value in secrets.items() for name, text in logs.items()
             if value in text]
    assert not leaks, leaks


async def _sent(smtp: SmtpSink, tg: FlakyHttp) -> bool:
    return len(smtp.mails) >= 1 and len(tg.requests) >= 1
