"""Each built-in channel returns the id the other side gave its message (`SendResult.ref`),
and an incident's resolved message replies to it: checked on what a real SMTP server
(aiosmtpd) and local HTTP stand-ins for Telegram and Slack received. Hostile answers and
hostile stored refs never crash a send nor reach a header or a payload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from fwd_support import HttpSink, SmtpSink
from standardwebhooks import Webhook

from support import base_env
from vestnik.streams.channels import Channel, Channels
from vestnik.streams.config import Config, load
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.schemas import ChannelTarget, Notice, User

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ALICE = User(id="1", name="Alice", email="alice@example.org", telegram_chat_id=111,
             slack_user="U111")
EVERYONE = ChannelTarget()
MINUTES_12 = 12 * 60_000




def make_settings(redis_url: str, **env: str) -> Config:
    return load(base_env(redis_url, **{"VESTNIK_EGRESS_ALLOW": "127.0.0.1/32", **env}))


@pytest.fixture
async def built(redis_url: str, smtp: SmtpSink, http_sink: HttpSink
                ) -> AsyncIterator[Channels]:
    """The forwarder's channels, as it builds them, pointed at the stand-ins."""
    channels = Channels.from_settings(make_settings(
        redis_url, VESTNIK_SMTP_URL=smtp.url, VESTNIK_SMTP_FROM="Vestnik <vestnik@example.org>",
        VESTNIK_TELEGRAM_API=http_sink.base, VESTNIK_TELEGRAM_TOKEN="123:SECRET",
        VESTNIK_SLACK_API=f"{http_sink.base}/api", VESTNIK_SLACK_TOKEN="xoxb-1",
        VESTNIK_WEBHOOK_SECRET=SECRET))
    yield channels
    await channels.aclose()


def channel(channels: Channels, name: str) -> Channel:
    ch = channels.get(name)
    assert ch is not None, f"{name} is off"
    return ch


def incident(**kw: Any) -> Notice:
    base: dict[str, Any] = dict(id=ulid(), alert="disk", title="Disk 95% on web-1",
                                body="Only 5% left on /var.", severity="warning",
                                recipients=["1"], dedup_key="web-1", status="firing",
                                created_at=now_ms() - MINUTES_12,
                                link="https://panel.example/vm/42")
    base.update(kw)
    return Notice(**base)


def resolved(n: Notice) -> Notice:
    return msgspec.structs.replace(n, status="resolved", resolved_at=n.created_at + MINUTES_12)


# ------------------------------------------------------------------------- email


async def test_email_resolved_replies_to_the_firing_mail(built: Channels, smtp: SmtpSink):
    email = channel(built, "email")
    n = incident()
    first = await email.send(n, ALICE, EVERYONE)
    assert first.ok and first.ref is not None
    assert smtp.mails[0].msg["Message-ID"] == first.ref
    second = await email.send_resolved(resolved(n), ALICE, EVERYONE, first.ref)
    assert second.ok and second.ref not in (None, first.ref)
    mail = smtp.mails[1].msg
    assert mail["Subject"] == "Resolved: Disk 95% on web-1"
    assert mail["In-Reply-To"] == first.ref and mail["References"] == first.ref
    assert mail["Message-ID"] == second.ref
    text = smtp.mails[1].part("plain")
    assert "Fired for 12 min" in text and "https://panel.example/vm/42" in text
    html = smtp.mails[1].part("html")
    assert "Fired for 12 min" in html and 'href="https://panel.example/vm/42"' in html


@pytest.mark.parametrize("ref", [
    "<a@b>\r\nBcc: mallory@example.org", "<a@b>\nX-Evil: 1", "<a@b> <c@d>", "a@b", "<>",
    "<a@b>\u2028Bcc: mallory@example.org", "<" + "a" * 1000 + ">", "<a\x00@b>"])
async def test_email_a_hostile_ref_is_no_header(built: Channels, smtp: SmtpSink, ref: str):
    """A stored ref that is not exactly one Message-ID: the resolved mail still goes, as a
    new thread, and the ref adds no header."""
    result = await channel(built, "email").send_resolved(resolved(incident()), ALICE, EVERYONE,
                                                         ref)
    assert result.ok
    (mail,) = smtp.mails
    assert mail.msg["In-Reply-To"] is None and mail.msg["References"] is None
    assert mail.msg["Bcc"] is None and mail.msg["X-Evil"] is None
    assert mail.rcpt_tos == ["alice@example.org"]
    assert b"mallory" not in mail.raw


# ------------------------------------------------------------------------- Telegram


async def test_telegram_ref_is_the_message_id_and_resolved_replies(built: Channels,
                                                                   http_sink: HttpSink):
    http_sink.respond = lambda req: (200, {"ok": True, "result": {"message_id": 4242}})
    telegram = channel(built, "telegram")
    n = incident(title="CPU <100%> & rising")
    first = await telegram.send(n, ALICE, EVERYONE)
    assert first.ok and first.ref == "4242"
    second = await telegram.send_resolved(resolved(n), ALICE, EVERYONE, first.ref)
    assert second.ok
    body = http_sink.requests[1].json()
    assert body["chat_id"] == 111
    assert body["reply_to_message_id"] == 4242 and body["allow_sending_without_reply"] is True
    assert "<b>Resolved: CPU &lt;100%&gt; &amp; rising</b>" in body["text"]
    assert "Fired for 12 min" in body["text"]
    assert '<a href="https://panel.example/vm/42">Open</a>' in body["text"]
    assert "reply_to_message_id" not in http_sink.requests[0].json()


async def test_telegram_shared_send_has_a_ref_per_chat(built: Channels, http_sink: HttpSink):
    """A setting's chat_ids are one send each (a ref names a message in one chat)."""
    http_sink.respond = lambda req: (200, {"ok": True,
                                           "result": {"message_id": -req.json()["chat_id"]}})
    telegram = channel(built, "telegram")
    pairs = telegram.shared_targets(ChannelTarget(chat_ids=(-100123, -100456)))
    refs = [(await telegram.send(incident(), None, t)).ref for _, t in pairs]
    assert refs == ["100123", "100456"]


@pytest.mark.parametrize("answer", [
    b"not json", b"[1, 2]", b'{"ok": true, "result": [1]}', b'{"ok": true, "result": 5}',
    b'{"ok": true, "result": {"message_id": "7; DROP"}}',
    b'{"ok": true, "result": {"message_id": true}}',
    b'{"ok": true, "result": {"message_id": -3}}',
    b'{"ok": true, "result": {"message_id": 1e300}}',
    b'{"ok": true, "result": {"message_id": 7}' + b" " * 200_000 + b"}"])
async def test_telegram_a_hostile_answer_is_sent_without_a_ref(built: Channels,
                                                               http_sink: HttpSink,
                                                               answer: bytes):
    http_sink.respond = lambda req: (200, answer)
    result = await channel(built, "telegram").send(incident(), ALICE, EVERYONE)
    assert result.ok and result.ref is None


async def test_telegram_hostile_rate_limit_answer_is_a_retry(built: Channels,
                                                             http_sink: HttpSink):
    http_sink.respond = lambda req: (429, {"ok": False, "parameters": ["retry_after", 5]})
    result = await channel(built, "telegram").send(incident(), ALICE, EVERYONE)
    assert result.status == "retry"


@pytest.mark.parametrize("ref", ["12abc", "-5", "0", "1" * 40, "4242\n", "", " 42"])
async def test_telegram_a_hostile_ref_is_no_reply(built: Channels, http_sink: HttpSink,
                                                  ref: str):
    result = await channel(built, "telegram").send_resolved(resolved(incident()), ALICE,
                                                            EVERYONE, ref)
    assert result.ok
    (req,) = http_sink.requests
    assert "reply_to_message_id" not in req.json()


# ------------------------------------------------------------------------- Slack


async def test_slack_ref_is_the_ts_and_resolved_goes_in_its_thread(built: Channels,
                                                                   http_sink: HttpSink):
    http_sink.respond = lambda req: (200, {"ok": True, "ts": "1712345678.000100"})
    slack = channel(built, "slack")
    n = incident(title="a <b> & c")
    first = await slack.send(n, ALICE, EVERYONE)
    assert first.ok and first.ref == "1712345678.000100"
    second = await slack.send_resolved(resolved(n), ALICE, EVERYONE, first.ref)
    assert second.ok
    req = http_sink.requests[1]
    assert req.path == "/api/chat.postMessage"
    body = req.json()
    assert body["channel"] == "U111" and body["thread_ts"] == "1712345678.000100"
    assert body["text"].startswith("*Resolved: a &lt;b&gt; &amp; c*")
    assert "Fired for 12 min" in body["text"]
    assert "<https://panel.example/vm/42|Open>" in body["text"]
    assert "thread_ts" not in http_sink.requests[0].json()


async def test_slack_incoming_webhook_has_no_ref(built: Channels, http_sink: HttpSink):
    http_sink.respond = lambda req: (200, b"ok")
    result = await channel(built, "slack").send(
        incident(), None, ChannelTarget(url=f"{http_sink.base}/services/T/B/X"))
    assert result.ok and result.ref is None


@pytest.mark.parametrize("answer", [
    b'{"ok": true, "ts": 1712345678.0001}', b'{"ok": true, "ts": "1.2\\nX"}',
    b'{"ok": true, "ts": ["1.2"]}', b'{"ok": true}', b'{"ok": true, "ts": "abc.def"}'])
async def test_slack_a_hostile_ts_is_no_ref(built: Channels, http_sink: HttpSink,
                                            answer: bytes):
    http_sink.respond = lambda req: (200, answer)
    result = await channel(built, "slack").send(incident(), ALICE, EVERYONE)
    assert result.ok and result.ref is None


@pytest.mark.parametrize("answer", [b"[1]", b'"ok"', b"null", b"<html>"])
async def test_slack_an_answer_that_is_no_object_is_retried(built: Channels,
                                                            http_sink: HttpSink,
                                                            answer: bytes):
    http_sink.respond = lambda req: (200, answer)
    result = await channel(built, "slack").send(incident(), ALICE, EVERYONE)
    assert result.status == "retry" and result.ref is None


@pytest.mark.parametrize("ref", ["1.2\n", "1712345678", "x.1", "1.2 3.4", ""])
async def test_slack_a_hostile_ref_is_no_thread(built: Channels, http_sink: HttpSink,
                                                ref: str):
    http_sink.respond = lambda req: (200, {"ok": True, "ts": "1.2"})
    result = await channel(built, "slack").send_resolved(resolved(incident()), ALICE,
                                                         EVERYONE, ref)
    assert result.ok
    (req,) = http_sink.requests
    assert "thread_ts" not in req.json()


# ------------------------------------------------------------------------- webhook


async def test_webhook_resolved_is_the_notice_under_its_own_id(built: Channels,
                                                                http_sink: HttpSink):
    """Receivers dedupe on webhook-id: the resolved message has its own."""
    webhook = channel(built, "webhook")
    target = ChannelTarget(url=f"{http_sink.base}/h")
    n = incident(recipients=["1", "user-two"])
    assert (await webhook.send(n, None, target)).ok
    result = await webhook.send_resolved(resolved(n), None, target, None)
    assert result.ok and result.ref is None
    firing, done = http_sink.requests
    assert firing.headers["webhook-id"] == n.id
    assert done.headers["webhook-id"] == f"{n.id}.resolved"
    payload = Webhook(SECRET).verify(done.body, done.headers)
    assert payload["id"] == n.id and payload["status"] == "resolved"
    assert payload["resolved_at"] == n.created_at + MINUTES_12
    assert "recipients" not in payload and b"user-two" not in done.body
