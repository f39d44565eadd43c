"""A recipient sees the notice, not who else got it nor where the alert sends it: feed items
and live pushes carry neither the recipient list nor the channel map (chat ids, webhook URLs)."""

from __future__ import annotations

from center_support import add_users, entry

from support import SSE, eventually

SECRET_URL = "https://hooks.slack.test/services/T000/B000/very-secret"


async def test_items_and_pushes_hide_recipients_and_channels(api, redis, start_proc,
                                                               user_token):
    await add_users(redis, "1", "2")
    start_proc("center", "--no-forward")
    sse = await SSE(f"{api.base}/api/v1/me/stream?token={user_token('1')}").connect()
    await redis.xadd("vn:notices", entry(
        recipients="1,2",
        channels=f'{{"slack": {{"url": "{SECRET_URL}"}}, "telegram": {{"chat_ids": [42]}}}}'))

    pushed = (await sse.take(1, event="notice"))[0]
    assert pushed.json()["title"] == "Disk 95% on web-1"
    assert "recipients" not in pushed.json() and "channels" not in pushed.json()
    assert SECRET_URL not in pushed.data and '"2"' not in pushed.data
    await sse.close()

    async with api.client(user_token("1")) as me:
        items = await eventually(lambda: _items(me), what="the feed item")
    assert "recipients" not in items[0] and "channels" not in items[0]
    # the stored notice keeps both: the forwarder needs them
    stored = await redis.get(f"vn:notice:{items[0]['id']}")
    assert SECRET_URL.encode() in stored and b'"recipients":["1","2"]' in stored


async def _items(me):
    return (await me.get("/api/v1/me/notices")).json()["items"]
