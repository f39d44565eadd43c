"""A digest (several notices as one message) as each built-in channel renders it, checked on
what a real SMTP server (aiosmtpd) and local HTTP stand-ins received: newest first, with
links and times, "and N more", escaped per each format, within each API's limits."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fwd_support import HttpSink, SmtpSink
from standardwebhooks import Webhook

from support import base_env
from vestnik.streams.channels import Channel, Channels, Digest
from vestnik.streams.config import load
from vestnik.streams.ids import ulid
from vestnik.streams.schemas import ChannelTarget, Notice, User

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ALICE = User(id="1", name="Alice", email="alice@example.org", telegram_chat_id=111,
             slack_user="U111")
EVERYONE = ChannelTarget()
T0 = 1_780_000_000_000  # 2026-05-28 20:26:40 UTC




@pytest.fixture
async def built(redis_url: str, smtp: SmtpSink, http_sink: HttpSink
                ) -> AsyncIterator[Channels]:
    channels = Channels.from_settings(load(base_env(
        redis_url, VESTNIK_EGRESS_ALLOW="127.0.0.1/32", VESTNIK_SMTP_URL=smtp.url,
        VESTNIK_SMTP_FROM="Vestnik <vestnik@example.org>",
        VESTNIK_TELEGRAM_API=http_sink.base, VESTNIK_TELEGRAM_TOKEN="123:SECRET",
        VESTNIK_SLACK_API=f"{http_sink.base}/api", VESTNIK_SLACK_TOKEN="xoxb-1",
        VESTNIK_WEBHOOK_SECRET=SECRET)))
    yield channels
    await channels.aclose()


def channel(channels: Channels, name: str) -> Channel:
    ch = channels.get(name)
    assert ch is not None, f"{name} is off"
    return ch


def notice(i: int, **kw: Any) -> Notice:
    base: dict[str, Any] = dict(id=f"n{i}", alert="disk", title=f"Disk {90 + i}% on web-{i}",
                                severity="warning", recipients=["1", "user-two"],
                                channels={"webhook": {"url": "https://hooks.example/secret-x"}},
                                created_at=T0 + i * 60_000,
                                link=f"https://panel.example/vm/{i}")
    base.update(kw)
    return Notice(**base)


def digest(more: int = 2) -> Digest:
    """Three notices, newest first (as the digest job hands them), two more left out."""
    return Digest(id=f"dg-{ulid()}", notices=[
        notice(3, severity="critical", title="<script>alert(1)</script> & web-3"),
        notice(2, link="javascript:alert(2)"),
        notice(1, severity="info")], more=more)


async def test_email_digest_lists_newest_first_with_links_and_more(built: Channels,
                                                                   smtp: SmtpSink):
    d = digest()
    result = await channel(built, "email").send_digest(d, ALICE, EVERYONE)
    assert result.ok and result.ref is not None
    (mail,) = smtp.mails
    assert mail.msg["Subject"] == "5 notices"
    assert mail.msg["Message-ID"] == result.ref and d.id in result.ref
    text = mail.part("plain")
    order = [text.index(t) for t in ("web-3", "Disk 92% on web-2", "Disk 91% on web-1")]
    assert order == sorted(order)
    assert "[CRITICAL] <script>alert(1)</script> & web-3 (2026-05-28 20:29 UTC)" in text
    assert "https://panel.example/vm/3" in text and "https://panel.example/vm/1" in text
    assert "javascript:" not in text
    assert "and 2 more" in text
    html = mail.part("html")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; web-3" in html
    assert 'href="https://panel.example/vm/3"' in html and "javascript:" not in html
    assert "and 2 more" in html and "CRITICAL" in html


async def test_email_digest_of_one_says_notice(built: Channels, smtp: SmtpSink):
    d = Digest(id="dg-one", notices=[notice(1)])
    assert (await channel(built, "email").send_digest(d, ALICE, EVERYONE)).ok
    assert smtp.mails[0].msg["Subject"] == "1 notice"
    assert "more" not in smtp.mails[0].part("plain")


async def test_telegram_digest_is_a_compact_escaped_list(built: Channels,
                                                         http_sink: HttpSink):
    result = await channel(built, "telegram").send_digest(digest(), ALICE, EVERYONE)
    assert result.ok and result.ref == "1"
    body = http_sink.requests[0].json()
    assert body["chat_id"] == 111 and body["parse_mode"] == "HTML"
    lines = body["text"].split("\n")
    assert lines[0] == "<b>5 notices</b>"
    assert '<a href="https://panel.example/vm/3">&lt;script&gt;alert(1)&lt;/script&gt; '\
        '&amp; web-3</a>' in lines[1]
    assert "2026-05-28 20:29 UTC" in lines[1]
    assert "Disk 92% on web-2" in lines[2] and "javascript" not in lines[2]
    assert "web-1" in lines[3]
    assert lines[4] == "and 2 more"


async def test_telegram_long_digest_fits_and_counts_the_rest(built: Channels,
                                                             http_sink: HttpSink):
    many = Digest(id="dg-long", notices=[notice(i, title="&" * 300) for i in range(100)],
                  more=5)
    assert (await channel(built, "telegram").send_digest(many, ALICE, EVERYONE)).ok
    text = http_sink.requests[0].json()["text"]
    assert len(text) <= 4096
    listed = text.count("\n") - 1  # the head line, then one per notice, then "and N more"
    assert listed < 100
    assert text.endswith(f"\nand {100 - listed + 5} more")


async def test_slack_digest_is_a_compact_escaped_list(built: Channels, http_sink: HttpSink):
    http_sink.respond = lambda req: (200, {"ok": True, "ts": "1.5"})
    result = await channel(built, "slack").send_digest(digest(), ALICE, EVERYONE)
    assert result.ok and result.ref == "1.5"
    text = http_sink.requests[0].json()["text"]
    lines = text.split("\n")
    assert lines[0] == "*5 notices*"
    assert lines[1] == ("\u2022 [critical] &lt;script&gt;alert(1)&lt;/script&gt; &amp; web-3 "
                        "(2026-05-28 20:29 UTC) <https://panel.example/vm/3|Open>")
    assert "javascript" not in lines[2] and "|Open>" not in lines[2]
    assert lines[-1] == "and 2 more"


async def test_slack_long_digest_is_cut_and_counted(built: Channels, http_sink: HttpSink):
    http_sink.respond = lambda req: (200, {"ok": True, "ts": "1.5"})
    many = Digest(id="dg-long", notices=[notice(i, title="<" * 200) for i in range(100)])
    assert (await channel(built, "slack").send_digest(many, ALICE, EVERYONE)).ok
    text = http_sink.requests[0].json()["text"]
    listed = len(re.findall("\u2022", text))
    assert 0 < listed < 100 and len(text) < 4000
    assert text.endswith(f"\nand {100 - listed} more")


async def test_webhook_digest_body_has_public_views_only(built: Channels,
                                                         http_sink: HttpSink):
    d = digest()
    result = await channel(built, "webhook").send_digest(
        d, None, ChannelTarget(url=f"{http_sink.base}/h"))
    assert result.ok
    (req,) = http_sink.requests
    assert req.headers["webhook-id"] == d.id
    payload = Webhook(SECRET).verify(req.body, req.headers)  # raises on a bad signature
    assert payload["type"] == "digest" and payload["id"] == d.id and payload["more"] == 2
    assert [n["id"] for n in payload["notices"]] == ["n3", "n2", "n1"]
    assert payload["notices"][0]["title"] == "<script>alert(1)</script> & web-3"
    for n in payload["notices"]:
        assert "recipients" not in n and "channels" not in n
    assert b"user-two" not in req.body and b"secret-x" not in req.body


async def test_a_plugin_without_its_own_digest_gets_one_notice(built: Channels):
    """The base default (`digest_notice`): what a plugin channel is handed."""
    got: list[Notice] = []

    class Sms(Channel):
        name = "sms"

        async def send(self, notice: Notice, user: User | None, target: ChannelTarget) -> Any:
            got.append(notice)
            from vestnik.streams.channels import SendResult
            return SendResult.sent()

    assert (await Sms().send_digest(digest(), ALICE, EVERYONE)).ok
    (one,) = got
    assert one.title == "5 notices" and one.severity == "critical"
    assert one.body.splitlines()[-1] == "and 2 more"
    assert one.data == {"digest": ["n3", "n2", "n1"], "more": 2}
