"""The forward job against real servers: Redis state laid out as the center stores it, an
arq worker in burst mode, an SMTP sink and HTTP stand-ins for Telegram, Slack, webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from fwd_support import HttpSink, Mail, SmtpSink, deliveries, store_notice, store_user
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from standardwebhooks import Webhook

from support import base_env, eventually
from vestnik.streams.channels import Channel, Channels, SendResult, available
from vestnik.streams.config import Config, load
from vestnik.streams.forward import (
    BROADCAST,
    ForwardJob,
    add_forward_jobs,
    arq_keys,
    make_worker,
    run_forwarder,
)
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import Keys
from vestnik.streams.schemas import AlertSetting, ChannelTarget, Notice, User, decode_json

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"




def make_settings(redis_url: str, **env: str) -> Config:
    """Stand-ins listen on 127.0.0.1, which the egress policy refuses unless allowed."""
    return load(base_env(redis_url, **{"VESTNIK_SEND_BACKOFF": "0.05",
                                       "VESTNIK_EGRESS_ALLOW": "127.0.0.1/32", **env}))


def notice(**kw: Any) -> Notice:
    base: dict[str, Any] = dict(id=ulid(), alert="disk", title="Disk 95% on web-1",
                                body="Only 5% left on /var.", severity="warning",
                                recipients=["1"], channels={"email": {"users": ["1"]}},
                                created_at=now_ms(), link="https://panel.example/vm/42")
    base.update(kw)
    return Notice(**base)


ALICE = User(id="1", name="Alice", email="alice@example.org", telegram_chat_id=111,
             slack_user="U111")


async def schedule(redis: Redis, keys: Keys, *jobs: ForwardJob) -> list[Any]:
    async with redis.pipeline(transaction=True) as pipe:
        add_forward_jobs(pipe, keys, list(jobs))
        return await pipe.execute()


async def burst(settings: Config, timeout: float = 20) -> None:
    await asyncio.wait_for(run_forwarder(settings, burst=True), timeout)


async def test_email_is_sent_once_when_scheduled_twice(redis: Redis, keys: Keys, redis_url,
                                                       smtp: SmtpSink):
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="Vestnik <vestnik@example.org>")
    await store_user(redis, keys, ALICE)
    n = notice()
    await store_notice(redis, keys, n)
    job = ForwardJob(n.id, "1", now_ms())
    assert await schedule(redis, keys, job, job) == [1, 0]
    assert await schedule(redis, keys, job) == [0]
    sent = {"channel": "email", "status": "sent"}
    before = REGISTRY.get_sample_value("vestnik_forward_attempts_total", sent) or 0
    await burst(settings)
    assert len(smtp.mails) == 1
    assert REGISTRY.get_sample_value("vestnik_forward_attempts_total", sent) == before + 1
    # the job has run: its arq result key still refuses a re-schedule; a new run never resends
    assert await schedule(redis, keys, job) == [0]
    await redis.delete(arq_keys(keys.forward_job(n.id, "1")).result)
    assert await schedule(redis, keys, job) == [1]
    await burst(settings)
    assert len(smtp.mails) == 1
    log = await deliveries(redis, keys, n.id)
    assert [(d.uid, d.channel, d.attempt, d.status) for d in log] == [("1", "email", 1, "sent")]


async def test_scheduling_survives_script_flush(redis: Redis, keys: Keys):
    """EVALSHA through the pipeline: a flushed script cache (restart, SCRIPT FLUSH) is
    reloaded before the pipeline runs, so a batch never fails with NOSCRIPT."""
    assert await schedule(redis, keys, ForwardJob("A", "1", now_ms())) == [1]
    await redis.script_flush()
    assert await schedule(redis, keys, ForwardJob("B", "1", now_ms()),
                          ForwardJob("A", "1", now_ms())) == [1, 0]
    async with redis.pipeline(transaction=False) as pipe:  # and outside MULTI
        add_forward_jobs(pipe, keys, [ForwardJob("C", "1", now_ms())])
        assert await pipe.execute() == [1]
    assert await redis.zcard(keys.forward(0).arq_queue) == 3


async def test_email_headers_parts_and_escaping(redis: Redis, keys: Keys, redis_url,
                                                smtp: SmtpSink):
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="Vestnik <vestnik@example.org>")
    await store_user(redis, keys, ALICE)
    n = notice(title="<script>alert(1)</script> disk\r\nBcc: x@evil.example",
               body="line 1\n<b>not bold</b>")
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    await burst(settings)
    assert len(smtp.mails) == 1
    mail = smtp.mails[0]
    assert mail.rcpt_tos == ["alice@example.org"]
    assert mail.mail_from == "vestnik@example.org"
    msg = mail.msg
    assert msg["From"] == "Vestnik <vestnik@example.org>"
    assert msg["To"] == "Alice <alice@example.org>"
    assert msg["Subject"] == "<script>alert(1)</script> disk Bcc: x@evil.example"
    assert msg["Bcc"] is None
    head = mail.raw.split(b"\r\n\r\n")[0]
    assert b"\nBcc:" not in head and b"evil" not in head.split(b"Subject:")[0]
    assert msg.get_content_type() == "multipart/alternative"
    text, html = mail.part("plain"), mail.part("html")
    assert "<script>alert(1)</script> disk Bcc: x@evil.example" in text  # plain text: raw
    assert "<b>not bold</b>" in text
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html
    assert 'href="https://panel.example/vm/42"' in html


async def test_locale_template_override(redis: Redis, keys: Keys, redis_url, smtp: SmtpSink,
                                        tmp_path):
    from vestnik.streams.channels import email as email_mod

    (tmp_path / "email.ru.html.j2").write_text("<p>Уведомление: {{ title }}</p>")
    for name in ("email.html.j2", "email.txt.j2"):
        (tmp_path / name).write_text((email_mod.TEMPLATES / name).read_text())
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org")
    channel = email_mod.EmailChannel(email_mod.SmtpConfig(smtp.url), "vestnik@example.org",
                                     templates=tmp_path)
    ru = User(id="2", email="boris@example.org", locale="ru")
    ru_mail = Mail("", [], channel.message(notice(title="<x>"), ru, "boris@example.org"))
    assert "Уведомление: &lt;x&gt;" in ru_mail.part("html")
    en = Mail("", [], channel.message(notice(title="<x>"), ALICE, "alice@example.org"))
    assert "Уведомление" not in en.part("html")
    # non-ASCII headers are RFC 2047 encoded (the raw message stays ASCII) and decode back
    title = "Диск заполнен на 95% " * 6
    boris = User(id="2", name="Борис", email="boris@example.org", locale="ru")
    raw = channel.message(notice(title=title), boris, "boris@example.org")
    assert raw.isascii()
    msg = Mail("", [], raw).msg
    assert msg["Subject"] == title.strip() and msg["To"] == "Борис <boris@example.org>"
    await channel.aclose()
    assert settings.smtp_url


async def test_read_notice_is_not_sent(redis: Redis, keys: Keys, redis_url, smtp: SmtpSink):
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org")
    await store_user(redis, keys, ALICE)
    n = notice()
    await store_notice(redis, keys, n, unread=False)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    await burst(settings)
    assert smtp.mails == []
    log = await deliveries(redis, keys, n.id)
    assert [(d.channel, d.status) for d in log] == [("email", "skipped_read")]


async def test_pref_off_and_missing_address(redis: Redis, keys: Keys, redis_url,
                                            smtp: SmtpSink, http_sink: HttpSink):
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org",
                             VESTNIK_TELEGRAM_API=http_sink.base, VESTNIK_TELEGRAM_TOKEN="T")
    await store_user(redis, keys, User(id="1", email="alice@example.org",
                                       prefs={"email": False}))
    n = notice(channels={"email": {}, "telegram": {"users": ["1"]}, "ui": {}})
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    await burst(settings)
    assert smtp.mails == [] and http_sink.requests == []  # email off; no telegram chat id
    log = await deliveries(redis, keys, n.id)
    assert [(d.channel, d.status) for d in log] == [("email", "skipped_pref"),
                                                    ("telegram", "skipped_no_address")]


async def test_forward_run_outside_our_worker_records_and_marks(redis: Redis, keys: Keys,
                                                                 redis_url, smtp: SmtpSink):
    """The job as a stock arq worker (or any caller) runs it: its attempt records and sent
    markers are written by the job itself, and a second run sends nothing more."""
    from vestnik.streams.forward import make_worker

    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org")
    await store_user(redis, keys, ALICE)
    n = notice()
    await store_notice(redis, keys, n)
    worker = make_worker(settings)
    forwarder = worker.ctx["forwarder"]
    try:
        assert await forwarder.run(n.id, "1", 1) == "sent 1/1"
        assert await forwarder.run(n.id, "1", 1) == "already sent"
    finally:
        await worker.close()
        await forwarder.channels.aclose()
    assert len(smtp.mails) == 1
    assert [(d.channel, d.status) for d in await deliveries(redis, keys, n.id)] == \
        [("email", "sent")]
    assert await redis.exists(f"{keys.forward(0).sent}{n.id}:1:email") == 1


async def test_refused_or_non_ascii_address_fails_once_and_the_next_mail_goes_out(
        redis: Redis, keys: Keys, redis_url):
    """A 550 at RCPT and an address SMTP cannot carry without SMTPUTF8 are permanent: one
    `failed` attempt naming why, no retry; the refused envelope is reset, so the same
    connection carries the next user's mail."""
    from vestnik.streams.forward import make_worker

    sink = SmtpSink(refuse=frozenset({"gone@example.org"})).start()
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=sink.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org")
    users = [User(id="1", email="gone@example.org"), User(id="2", email="jörg@example.org"),
             User(id="3", email="carol@example.org")]
    for u in users:
        await store_user(redis, keys, u)
    n = notice(recipients=["1", "2", "3"], channels={"email": {}})
    await store_notice(redis, keys, n)
    worker = make_worker(settings)
    forwarder = worker.ctx["forwarder"]
    try:
        for u in users:  # one after the other, over one pooled connection
            await forwarder.run(n.id, u.id, 1)
    finally:
        await worker.close()
        await forwarder.channels.aclose()
        sink.stop()
    assert [m.rcpt_tos for m in sink.mails] == [["carol@example.org"]]
    assert len(sink.peers) == 1
    log = {d.uid: d for d in await deliveries(redis, keys, n.id)}
    assert [(log[u].attempt, log[u].status) for u in "123"] == \
        [(1, "failed"), (1, "failed"), (1, "sent")]
    assert "550" in log["1"].detail and "no such mailbox" in log["1"].detail
    assert "jörg@example.org" in log["2"].detail and "ASCII" in log["2"].detail


async def test_user_record_as_products_write_it(redis: Redis, keys: Keys, redis_url,
                                                smtp: SmtpSink, http_sink: HttpSink):
    """A numeric id and chat id, extra fields: read like the center reads it."""
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org",
                             VESTNIK_TELEGRAM_API=http_sink.base, VESTNIK_TELEGRAM_TOKEN="T")
    await redis.hset(keys.state("user"), mapping={
        "5": b'{"id": 5, "email": "five@example.org", "telegram_chat_id": 55, "team": "ops"}',
        "6": b'["not", "an", "object"]'})
    n = notice(recipients=["5", "6"], channels={"email": {}, "telegram": {}})
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "5", now_ms()), ForwardJob(n.id, "6", now_ms()))
    await burst(settings)
    assert [m.rcpt_tos for m in smtp.mails] == [["five@example.org"]]
    assert [r.json()["chat_id"] for r in http_sink.requests] == [55]
    log = sorted((d.uid, d.channel, d.status) for d in await deliveries(redis, keys, n.id))
    assert log == [("5", "email", "sent"), ("5", "telegram", "sent"), ("6", "", "failed")]


async def test_deferred_until_due(redis: Redis, keys: Keys, redis_url, smtp: SmtpSink):
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org")
    await store_user(redis, keys, ALICE)
    n = notice()
    await store_notice(redis, keys, n)
    due = now_ms() + 1000
    await schedule(redis, keys, ForwardJob(n.id, "1", due))
    assert await redis.zscore(keys.forward(0).arq_queue, keys.forward_job(n.id, "1")) == due
    await burst(settings)
    assert len(smtp.mails) == 1 and now_ms() >= due


async def test_smtp_down_then_up_retries_and_lists_attempts(redis: Redis, keys: Keys,
                                                            redis_url, start_api):
    sink = SmtpSink()  # port reserved, nothing listening yet
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=sink.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org",
                             VESTNIK_SEND_BACKOFF="0.2", VESTNIK_SEND_ATTEMPTS="8")
    await store_user(redis, keys, ALICE)
    n = notice()
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    worker = asyncio.create_task(run_forwarder(settings, burst=True))
    try:
        async def retried() -> bool:
            return any(d.status == "retrying" for d in await deliveries(redis, keys, n.id))

        await eventually(retried, what="a failed attempt")
        sink.start()
        await asyncio.wait_for(worker, 30)
    finally:
        worker.cancel()
        sink.stop()
    assert len(sink.mails) == 1
    api = start_api()
    async with api.client() as http:
        r = await http.get(f"/api/v1/notices/{n.id}/deliveries")
        assert r.status_code == 200
        items = r.json()["items"]
        assert [i["attempt"] for i in items] == list(range(1, len(items) + 1))
        assert [i["status"] for i in items[:-1]] == ["retrying"] * (len(items) - 1)
        assert items[-1]["status"] == "sent" and items[-1]["channel"] == "email"
        assert "SMTPConnectError" in items[0]["detail"] or "refused" in items[0]["detail"]
        assert (await http.get("/api/v1/notices/nope/deliveries")).status_code == 404
    async with api.client("not-a-token") as http:
        assert (await http.get(f"/api/v1/notices/{n.id}/deliveries")).status_code == 401


async def test_attempts_are_bounded(redis: Redis, keys: Keys, redis_url):
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=SmtpSink().url,
                             VESTNIK_SMTP_FROM="vestnik@example.org",
                             VESTNIK_SEND_ATTEMPTS="3", VESTNIK_SEND_BACKOFF="0.01")
    await store_user(redis, keys, ALICE)
    n = notice()
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    await burst(settings)
    log = await deliveries(redis, keys, n.id)
    assert [(d.attempt, d.status) for d in log] == [(1, "retrying"), (2, "retrying"),
                                                     (3, "failed")]


def telegram_stand_in(req) -> tuple[int, Any]:
    chat = req.json()["chat_id"]
    if chat == 666:
        return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
    return 200, {"ok": True, "result": {"message_id": 7}}


async def test_telegram_payload_and_400_is_not_retried(redis: Redis, keys: Keys, redis_url,
                                                       http_sink: HttpSink):
    http_sink.respond = telegram_stand_in
    settings = make_settings(redis_url, VESTNIK_TELEGRAM_API=http_sink.base,
                             VESTNIK_TELEGRAM_TOKEN="123:SECRET", VESTNIK_SEND_ATTEMPTS="5")
    await store_user(redis, keys, ALICE)
    await store_user(redis, keys, User(id="2", telegram_chat_id=666))
    n = notice(title="CPU <100%> & rising", recipients=["1", "2"],
               channels={"telegram": {}})
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()), ForwardJob(n.id, "2", now_ms()))
    await burst(settings)
    assert len(http_sink.requests) == 2  # one each: the 400 is not retried
    by_chat = {r.json()["chat_id"]: r for r in http_sink.requests}
    ok = by_chat[111]
    assert ok.path == "/bot123:SECRET/sendMessage"
    body = ok.json()
    assert body["parse_mode"] == "HTML"
    assert "<b>CPU &lt;100%&gt; &amp; rising</b>" in body["text"]
    assert '<a href="https://panel.example/vm/42">Open</a>' in body["text"]
    log = {d.uid: d for d in await deliveries(redis, keys, n.id)}
    assert log["1"].status == "sent"
    assert (log["2"].attempt, log["2"].status) == (1, "failed")
    assert "chat not found" in log["2"].detail and "SECRET" not in log["2"].detail


async def test_telegram_429_waits_retry_after(redis: Redis, keys: Keys, redis_url,
                                              http_sink: HttpSink):
    calls: list[float] = []

    def limited(req) -> tuple[int, Any]:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return 429, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                         "parameters": {"retry_after": 1}}
        return 200, {"ok": True, "result": {"message_id": 8}}

    http_sink.respond = limited
    settings = make_settings(redis_url, VESTNIK_TELEGRAM_API=http_sink.base,
                             VESTNIK_TELEGRAM_TOKEN="T")
    await store_user(redis, keys, ALICE)
    n = notice(channels={"telegram": {}})
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    await burst(settings)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.9
    assert [d.status for d in await deliveries(redis, keys, n.id)] == ["retrying", "sent"]


async def test_broadcast_targets_telegram_webhook_slack(redis: Redis, keys: Keys, redis_url,
                                                        http_sink: HttpSink):
    settings = make_settings(redis_url, VESTNIK_TELEGRAM_API=http_sink.base,
                             VESTNIK_TELEGRAM_TOKEN="T", VESTNIK_WEBHOOK_SECRET=SECRET)
    hook = f"{http_sink.base}/hooks/vestnik"
    slack = f"{http_sink.base}/slack/T000/B000/XXX"
    n = notice(recipients=["1"], channels={
        "telegram": {"chat_ids": [-100123, 555]}, "webhook": {"url": hook},
        "slack": {"url": slack}, "forward_after": 0})
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, BROADCAST, now_ms()))
    await burst(settings)
    paths = sorted(r.path for r in http_sink.requests)
    assert paths == ["/botT/sendMessage", "/botT/sendMessage", "/hooks/vestnik",
                     "/slack/T000/B000/XXX"]
    chats = sorted(r.json()["chat_id"] for r in http_sink.requests if r.path.startswith("/bot"))
    assert chats == [-100123, 555]
    wh = next(r for r in http_sink.requests if r.path == "/hooks/vestnik")
    payload = Webhook(SECRET).verify(wh.body, wh.headers)  # raises on a bad signature
    assert payload["id"] == n.id and payload["title"] == n.title
    assert wh.headers["webhook-id"] == n.id
    sl = next(r for r in http_sink.requests if r.path.startswith("/slack"))
    assert sl.json()["text"].startswith("*Disk 95% on web-1*")
    log = await deliveries(redis, keys, n.id)
    assert sorted((d.uid, d.channel, d.status) for d in log) == [
        ("*", "slack", "sent"), ("*", "telegram", "sent"), ("*", "telegram", "sent"),
        ("*", "webhook", "sent")]


async def test_broadcast_skipped_once_any_recipient_read(redis: Redis, keys: Keys, redis_url,
                                                         http_sink: HttpSink):
    settings = make_settings(redis_url, VESTNIK_WEBHOOK_SECRET=SECRET)
    n = notice(recipients=["1", "2"],
               channels={"webhook": {"url": f"{http_sink.base}/h"}})
    await store_notice(redis, keys, n)
    await redis.zadd(keys.read("2"), {n.id: 1})  # user 2 read it
    await schedule(redis, keys, ForwardJob(n.id, BROADCAST, now_ms()))
    await burst(settings)
    assert http_sink.requests == []
    assert [(d.uid, d.status) for d in await deliveries(redis, keys, n.id)] == [
        ("*", "skipped_read")]


async def test_slack_post_message_to_user(redis: Redis, keys: Keys, redis_url,
                                          http_sink: HttpSink):
    def slack_api(req) -> tuple[int, Any]:
        if req.json()["channel"] == "U404":
            return 200, {"ok": False, "error": "channel_not_found"}
        return 200, {"ok": True, "ts": "1.2"}

    http_sink.respond = slack_api
    settings = make_settings(redis_url, VESTNIK_SLACK_API=f"{http_sink.base}/api",
                             VESTNIK_SLACK_TOKEN="xoxb-1")
    await store_user(redis, keys, ALICE)
    await store_user(redis, keys, User(id="2", slack_user="U404"))
    n = notice(title="a <b> & c", recipients=["1", "2"], channels={"slack": {}})
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()), ForwardJob(n.id, "2", now_ms()))
    await burst(settings)
    assert len(http_sink.requests) == 2
    r = next(r for r in http_sink.requests if r.json()["channel"] == "U111")
    assert r.path == "/api/chat.postMessage"
    assert r.headers["authorization"] == "Bearer xoxb-1"
    assert r.json()["text"].startswith("*a &lt;b&gt; &amp; c*")
    log = {d.uid: (d.attempt, d.status) for d in await deliveries(redis, keys, n.id)}
    assert log == {"1": (1, "sent"), "2": (1, "failed")}


async def test_channel_not_configured_is_recorded(redis: Redis, keys: Keys, redis_url):
    settings = make_settings(redis_url)  # no SMTP: the email channel is off
    await store_user(redis, keys, ALICE)
    n = notice()
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    await burst(settings)
    log = await deliveries(redis, keys, n.id)
    assert [(d.channel, d.status) for d in log] == [("email", "failed")]
    assert "not configured" in log[0].detail


def test_registry_reads_entry_points(settings: Config):
    from vestnik.streams.channels import available

    names = available()
    assert {"email", "telegram", "slack", "webhook"} <= set(names)
    assert names["email"].user_address == "email"
    assert names["webhook"].user_address is None


@pytest.mark.parametrize("url,expect", [
    ("smtp://u:p%40ss@mail.example:2525?starttls=1", ("mail.example", 2525, False, True, "p@ss")),
    ("smtps://mail.example", ("mail.example", 465, True, False, None)),
    ("smtp://127.0.0.1", ("127.0.0.1", 25, False, None, None)),  # STARTTLS when offered
])
def test_smtp_url(url: str, expect: tuple[Any, ...]):
    from vestnik.streams.channels.email import SmtpConfig

    c = SmtpConfig(url)
    assert (c.host, c.port, c.use_tls, c.start_tls, c.password) == expect


async def test_webhook_5xx_is_retried_with_a_stable_id(redis: Redis, keys: Keys, redis_url,
                                                        http_sink: HttpSink):
    answers = iter([(503, {"busy": True}), (200, {})])
    http_sink.respond = lambda req: next(answers)
    settings = make_settings(redis_url, VESTNIK_WEBHOOK_SECRET=SECRET)
    n = notice(channels={"webhook": {"url": f"{http_sink.base}/h"}})
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, BROADCAST, now_ms()))
    await burst(settings)
    assert len(http_sink.requests) == 2
    assert {r.headers["webhook-id"] for r in http_sink.requests} == {n.id}
    for r in http_sink.requests:
        Webhook(SECRET).verify(r.body, r.headers)
    log = await deliveries(redis, keys, n.id)
    assert [(d.attempt, d.status) for d in log] == [(1, "retrying"), (2, "sent")]
    assert "503" in log[0].detail


async def run_stock_arq_worker(redis_url: str, keys: Keys) -> list[tuple[str, str]]:
    """Run a stock arq Worker (not ours) in burst mode on the forward queue with a fake
    `forward` job; returns the (nid, uid) of every job it ran."""
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    from vestnik.streams.forward.schedule import FUNCTION, job_deserializer, job_serializer

    calls: list[tuple[str, str]] = []

    async def fake_forward(ctx: dict, nid: str, uid: str) -> str:
        calls.append((nid, uid))
        return "ok"

    worker = Worker([func(fake_forward, name=FUNCTION)], queue_name=keys.forward(0).arq_queue,
                    redis_settings=RedisSettings.from_dsn(redis_url), burst=True,
                    handle_signals=False, poll_delay=0.05, job_serializer=job_serializer,
                    job_deserializer=job_deserializer)
    try:
        await asyncio.wait_for(worker.async_run(), 20)
    finally:
        await worker.close()
    return calls


async def test_job_record_is_arqs_own_format(redis: Redis, keys: Keys, redis_url):
    """A stock arq Worker (not ours) runs what add_forward_jobs wrote, once."""
    from arq.jobs import Job

    from vestnik.streams.forward.schedule import FUNCTION, job_deserializer

    job = ForwardJob("N1", "7", now_ms())
    assert await schedule(redis, keys, job, job) == [1, 0]
    jid = keys.forward_job("N1", "7")
    pool_job = Job(jid, redis, _queue_name=keys.forward(0).arq_queue,
                   _deserializer=job_deserializer)
    info = await pool_job.info()
    assert info is not None and info.function == FUNCTION and list(info.args) == ["N1", "7"]
    assert await run_stock_arq_worker(redis_url, keys) == [("N1", "7")]
    assert await schedule(redis, keys, job) == [0]  # its result is kept: still a no-op


async def test_delayed_forwards_pumped_into_jobs_a_stock_worker_runs_once(
        redis: Redis, keys: Keys, redis_url):
    """The center writes a delayed forward as one member of the due set; when due, the pump
    makes it arq's own job record, which a stock arq Worker runs exactly once, however
    often the same forward was written (a re-delivered notice)."""
    from vestnik.streams.forward import due_member, pump_due

    due = now_ms() - 1
    for _ in range(2):  # the same forward twice: one member
        await redis.zadd(keys.forward(0).forward_due, {due_member("N1", "7"): due,
                                                       due_member("N2", "u:8 x"): due,
                                                       due_member("N3", "9"): due + 3_600_000})
    assert await redis.zcard(keys.forward(0).forward_due) == 3
    assert await pump_due(redis, keys.forward(0)) == 2  # N3 is not due yet
    assert await pump_due(redis, keys.forward(0)) == 0
    assert [m.decode() for m in await redis.zrange(keys.forward(0).arq_queue, 0, -1)] == \
        [keys.forward_job("N1", "7"), keys.forward_job("N2", "u:8 x")]
    assert sorted(await run_stock_arq_worker(redis_url, keys)) == [("N1", "7"), ("N2", "u:8 x")]
    # written again after it ran (its result is kept): pumped, and not run a second time
    await redis.zadd(keys.forward(0).forward_due, {due_member("N1", "7"): due})
    assert await pump_due(redis, keys.forward(0)) == 1
    assert await redis.zcard(keys.forward(0).arq_queue) == 0
    assert await redis.zrange(keys.forward(0).forward_due, 0, -1) == [due_member("N3", "9")]


async def test_smtp_connection_is_reused_and_replaced_when_closed(redis: Redis, keys: Keys,
                                                                  redis_url, smtp: SmtpSink):
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org")
    await store_user(redis, keys, ALICE)
    worker = asyncio.create_task(run_forwarder(settings))
    try:
        sessions: list[int] = []
        for i in range(3):
            n = notice(title=f"n{i}")
            await store_notice(redis, keys, n)
            await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))

            async def arrived(count: int = i + 1) -> bool:
                return len(smtp.mails) >= count

            await eventually(arrived, what=f"email {i}")
            log = await deliveries(redis, keys, n.id)
            assert [(d.attempt, d.status) for d in log] == [(1, "sent")]  # no retry needed
            sessions.append(len(smtp.peers))
            if i == 1:  # the server goes away and comes back: the idle connection is dead
                smtp.stop()
                smtp.start()
        assert sessions[0] == sessions[1] == 1  # one connection carried the first two
        assert sessions[2] == 2  # a fresh one after the restart, within the same attempt
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


# ------------------------------------------------------- secrets and egress (issue 19)


async def broadcast(redis: Redis, keys: Keys, settings: Config, n: Notice) -> list[Any]:
    """Store `n`, run its user-independent forward, return its deliveries."""
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, BROADCAST, now_ms()))
    await burst(settings)
    return await deliveries(redis, keys, n.id)


async def test_webhook_body_is_the_public_view_of_the_notice(redis: Redis, keys: Keys,
                                                              redis_url, http_sink: HttpSink):
    """A webhook receiver learns what a recipient's feed shows: not the other recipients,
    not the channel map (other URLs, a webhook secret, chat ids)."""
    other_secret = "whsec_T3RoZXJTZWNyZXRPdGhlclNlY3JldA=="
    settings = make_settings(redis_url, VESTNIK_WEBHOOK_SECRET=SECRET)
    n = notice(recipients=["1", "user-two", "user-three"], channels={
        "webhook": {"url": f"{http_sink.base}/h", "secret": other_secret},
        "telegram": {"chat_ids": [-100777]},
        "slack": {"url": "https://hooks.slack.example/services/T/B/very-secret"}})
    await broadcast(redis, keys, settings, n)
    (req,) = [r for r in http_sink.requests if r.path == "/h"]
    payload = Webhook(other_secret).verify(req.body, req.headers)
    assert payload["id"] == n.id and payload["title"] == n.title
    assert "channels" not in payload and "recipients" not in payload
    for leak in (b"user-two", b"user-three", b"-100777", b"very-secret",
                 other_secret.encode(), b"T3RoZXJTZWNyZXRPdGhlclNlY3JldA"):
        assert leak not in req.body


async def test_loopback_targets_are_refused_by_default_once(redis: Redis, keys: Keys,
                                                             redis_url, http_sink: HttpSink):
    """Without VESTNIK_EGRESS_ALLOW a webhook or Slack url on loopback (as an IP, a
    resolver's short form or a name) gets nothing; each is one `failed` delivery that
    says why, not retried."""
    settings = load(base_env(redis_url))  # the default: no VESTNIK_EGRESS_ALLOW
    assert settings.egress_allow == []
    port = http_sink.port
    n = notice(recipients=["1"], channels={
        "webhook": {"url": f"http://127.1:{port}/hook"},
        "slack": {"url": f"http://localhost:{port}/slack"}})
    log = sorted(await broadcast(redis, keys, settings, n), key=lambda d: d.channel)
    assert http_sink.requests == []
    assert [(d.channel, d.attempt, d.status) for d in log] == [
        ("slack", 1, "failed"), ("webhook", 1, "failed")]
    assert "egress refused: localhost resolves to" in log[0].detail
    assert "loopback" in log[0].detail
    assert "egress refused: 127.0.0.1 is loopback" in log[1].detail


async def test_recorded_answer_is_cut_and_redirects_are_not_followed(
        redis: Redis, keys: Keys, redis_url, http_sink: HttpSink):
    """A hostile endpoint's long error body is kept to 200 bytes in /deliveries; a
    redirect (to loopback, say) is an answer, not followed."""
    def hostile(req) -> tuple[int, Any]:
        if req.path == "/long":
            return 400, b"E" * 5000
        return 307, b"see /elsewhere"
    http_sink.respond = hostile
    settings = make_settings(redis_url)
    n = notice(recipients=["1"], channels={
        "webhook": {"url": f"{http_sink.base}/long"},
        "slack": {"url": f"{http_sink.base}/redirect"}})
    log = {d.channel: d for d in await broadcast(redis, keys, settings, n)}
    assert sorted(r.path for r in http_sink.requests) == ["/long", "/redirect"]
    assert log["webhook"].status == "failed" and log["webhook"].detail.count("E") == 200
    assert log["slack"].status == "failed" and "HTTP 307" in log["slack"].detail


class Sms(Channel):
    """A plugin's channel (entry point group `vestnik.channels`): what it is handed."""

    name = "sms"
    user_address = "email"  # a User field the test's users have

    def __init__(self) -> None:
        self.got: list[tuple[str | None, ChannelTarget]] = []

    async def send(self, notice: Notice, user: User | None, target: ChannelTarget
                   ) -> SendResult:
        self.got.append((user.id if user else None, target))
        return SendResult.sent("queued")


async def test_a_plugin_channel_gets_its_entry_as_the_setting_says(api, redis: Redis,
                                                                   keys: Keys, redis_url):
    """A channel only the forwarder knows: its entry, written through the settings API,
    reaches its class typed (`users`), with its own fields as they were sent (`extra`)."""
    settings = make_settings(redis_url)
    async with api.client() as http:
        r = await http.post("/api/v1/settings", json={"name": "disk", "channel": {
            "ui": {"users": ["1"]},
            "sms": {"users": [1], "template": "short", "sender": {"id": 7}}}})
        assert r.status_code == 201, r.text
    setting = decode_json(await redis.hget(keys.settings, r.json()["id"]), AlertSetting)
    await store_user(redis, keys, ALICE)
    n = notice(channels=setting.channel)
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    channels = Channels.from_settings(settings, classes={**available(), "sms": Sms})
    sms = channels.get("sms")
    assert isinstance(sms, Sms)
    worker = make_worker(settings, burst=True, channels=channels)
    await asyncio.wait_for(run_forwarder(settings, burst=True, worker=worker), 20)
    assert sms.got == [("1", ChannelTarget(users=("1",), extra={"template": "short",
                                                                "sender": {"id": 7}}))]
    assert [(d.channel, d.status) for d in await deliveries(redis, keys, n.id)] == \
        [("sms", "sent")]


async def test_muted_after_it_was_scheduled_nothing_is_sent(redis: Redis, keys: Keys,
                                                            redis_url, smtp: SmtpSink):
    """The job asks what the center asked (`user_routes`): a user who muted the alert since
    gets no email, and the log says why."""
    settings = make_settings(redis_url, VESTNIK_SMTP_URL=smtp.url,
                             VESTNIK_SMTP_FROM="vestnik@example.org")
    await store_user(redis, keys, User(id="1", email="alice@example.org",
                                       prefs={"mute": ["disk"]}))
    n = notice()
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    await burst(settings)
    assert smtp.mails == []
    assert [(d.channel, d.status, d.detail) for d in await deliveries(redis, keys, n.id)] == \
        [("email", "skipped_pref", "user 1 muted alert disk")]
