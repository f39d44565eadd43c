"""The inbox's read sets (layout 2) against the real Redis: unread-only pages across long
runs of read entries, counts, read-all; and the migration of layout-1 data (unread sets),
which keeps every user's read state and runs once."""

from __future__ import annotations

from center_support import K

from vestnik.streams.center import Inbox
from vestnik.streams.center.inbox import migrate


async def _feed(redis, uid: str, n: int) -> list[str]:
    ids = [f"n{i:04d}" for i in range(n)]
    async with redis.pipeline(transaction=False) as pipe:
        for seq, nid in enumerate(ids, 1):
            pipe.set(K.notice(nid), f'{{"id":"{nid}","alert":"a","title":"t"}}')
            pipe.zadd(K.feed(uid), {nid: seq})
        pipe.set(K.user_seq(uid), n)
        await pipe.execute()
    return ids


async def test_unread_pages_skip_long_runs_of_read_ones(redis):
    inbox = Inbox(redis, K)
    ids = await _feed(redis, "1", 1000)
    unread = {ids[3], ids[480], ids[481], ids[990]}  # 508 read ones between two of them
    for nid in ids:
        if nid not in unread:
            await inbox.mark("1", nid, "read")
    assert await inbox.count("1") == 4
    seen, cursor = [], None
    for _ in range(5):
        page = await inbox.page("1", unread=True, limit=1, cursor=cursor)
        seen += [bytes(i).split(b'"id":"')[1][:5].decode() for i in page.items]
        cursor = page.next
        if cursor is None:
            break
    assert seen == [ids[990], ids[481], ids[480], ids[3]]
    # a page that may look at only 200 entries comes short (or empty) with a `next`
    seen, cursor, pages = [], None, 0
    while pages < 20:
        pages += 1
        page = await inbox.page("1", unread=True, limit=2, cursor=cursor, scan_max=200)
        seen += [bytes(i).split(b'"id":"')[1][:5].decode() for i in page.items]
        cursor = page.next
        if cursor is None:
            break
    assert seen == [ids[990], ids[481], ids[480], ids[3]] and pages >= 5
    marked = await inbox.mark("1", ids[480], "unread")
    assert marked.count == 4 and not marked.read  # already unread: nothing changed
    assert (await inbox.mark("1", ids[0], "unread")).count == 5
    done = await inbox.read_all("1")
    assert (done.marked, done.count, await inbox.count("1")) == (5, 0, 0)
    page = await inbox.page("1", limit=3)
    assert [b'"read":true' in bytes(i) for i in page.items] == [True, True, True]


async def test_layout_1_read_state_is_kept_and_migrated_once(redis):
    # layout 1: `:unread` held the unread ids; a user who read everything had none
    for uid in ("a", "b", "c"):
        await _feed(redis, uid, 5)
    await redis.zadd(K.unread_before_v2("a"), {"n0001": 2, "n0003": 4})
    await redis.zadd(K.unread_before_v2("b"), {f"n{i:04d}": i + 1 for i in range(5)})
    assert await migrate(redis, K) == 3
    inbox = Inbox(redis, K)
    assert [await inbox.count(u) for u in ("a", "b", "c")] == [2, 5, 0]
    assert await redis.exists(K.unread_before_v2("a"), K.unread_before_v2("b")) == 0
    page = await inbox.page("a", unread=True)
    assert [bytes(i).split(b'"id":"')[1][:5] for i in page.items] == [b"n0003", b"n0001"]
    # once: a second run (another center starting) changes nothing
    await inbox.mark("c", "n0004", "unread")
    assert await migrate(redis, K) == 0
    assert await inbox.count("c") == 1
    # a run cut short (no layout marker yet, user d still in layout 1): the users done
    # are skipped, so c's new unread notice is not taken for layout 1's "all read"
    await _feed(redis, "d", 3)
    await redis.zadd(K.unread_before_v2("d"), {"n0000": 1})
    await redis.delete(K.inbox_layout)
    assert await migrate(redis, K) == 1
    assert [await inbox.count(u) for u in ("a", "b", "c", "d")] == [2, 5, 1, 1]


async def test_layout_2_data_is_never_taken_for_layout_1(redis):
    """No `:unread` set anywhere (the layout marker lost, say): nothing is converted, so
    nothing unread is marked read."""
    await _feed(redis, "a", 5)
    await redis.delete(K.inbox_layout)
    assert await migrate(redis, K) == 0
    assert await Inbox(redis, K).count("a") == 5
    assert await redis.get(K.inbox_layout) == b"2"
