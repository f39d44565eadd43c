"""Issue 19 item 15: a notice body lives exactly as long as some feed holds it. Retention
(in the store script) and a user's purge delete the bodies nobody holds any more, with
what hangs off them; a body several feeds hold stays until the last one drops it."""

from __future__ import annotations

import pytest
from center_support import K, add_users, entry, feed, xadd_many
from redis.asyncio import Redis

from vestnik.streams.center.inbox import purge_users

# the bodies' feed counts (`refs`) are kept in the store call with the feeds: one slot
pytestmark = pytest.mark.single_redis("bodies are released by their feed counts, kept only "
                                      "on a single Redis (a cluster lets them expire)")


def run_burst(start_proc, **env: str) -> None:
    proc = start_proc("center", "--burst", "--no-forward", **env)
    assert proc.proc.wait(60) == 0, proc.output()


async def bodies(redis: Redis) -> set[str]:
    """Every stored notice body's id (what an operator's SCAN would count)."""
    head = K.notice("")
    return {k.decode()[len(head):] async for k in redis.scan_iter(match=head + "*", count=1000)
            if b":" not in k[len(head):]}


async def holders(redis: Redis, uids: list[str]) -> dict[str, int]:
    """How many of these users' feeds hold each notice id."""
    out: dict[str, int] = {}
    for uid in uids:
        for nid in await feed(redis, uid):
            out[nid] = out.get(nid, 0) + 1
    return out


async def assert_bodies_match_feeds(redis: Redis, uids: list[str]) -> None:
    """Exactly the bodies some feed holds are stored, and each one's count says how many."""
    held = await holders(redis, uids)
    extra = await bodies(redis) - set(held)
    assert not extra, [await redis.get(K.notice(n)) for n in list(extra)[:3]]
    assert await bodies(redis) == set(held)
    for nid, n in held.items():
        extra = await redis.hget(K.refs(nid), nid[7:])
        assert (int(extra) + 1 if extra is not None else 1) == n, (nid, n, extra)


async def test_retention_deletes_a_body_when_the_last_feed_drops_it(redis, start_proc):
    await add_users(redis, "1", "2")
    await xadd_many(redis, [entry("shared", "1,2"), entry("a", "1"), entry("b", "1"),
                            entry("c", "1")])
    run_burst(start_proc, VESTNIK_FEED_MAX="2")
    # user 1 dropped `shared` and `a`; user 2 still holds `shared`
    assert len(await bodies(redis)) == 3
    await assert_bodies_match_feeds(redis, ["1", "2"])
    nid = (await feed(redis, "2"))[0]
    await redis.rpush(K.deliveries(nid), b"{}")  # a forward attempt, a folded repeat
    await redis.sadd(K.folded(nid), "x")
    await xadd_many(redis, [entry("d", "2"), entry("e", "2")])
    run_burst(start_proc, VESTNIK_FEED_MAX="2")
    assert nid not in await bodies(redis)
    assert not await redis.exists(K.deliveries(nid), K.folded(nid), K.refs(nid))
    await assert_bodies_match_feeds(redis, ["1", "2"])


async def test_batches_and_broadcasts_keep_bodies_and_feeds_in_step(redis, start_proc):
    """Many notices per user in one batch (retention inside the call that stored them) and
    a broadcast stored in several calls (more than 1,000 recipients): no body outlives its
    last feed entry, none goes before it."""
    uids = [str(i) for i in range(1500)]
    await add_users(redis, *uids)
    everyone = ",".join(uids)
    await xadd_many(redis, [entry("all 1", everyone)]
                    + [entry(f"pair {i}", f"{i % 7},{(i + 1) % 7}") for i in range(40)]
                    + [entry("all 2", everyone), entry("few", "1,2,3")])
    run_burst(start_proc, VESTNIK_FEED_MAX="3", VESTNIK_CENTER_BATCH="100")
    await assert_bodies_match_feeds(redis, uids)
    await xadd_many(redis, [entry(f"solo {i}", str(i % 10)) for i in range(60)])
    run_burst(start_proc, VESTNIK_FEED_MAX="3", VESTNIK_CENTER_BATCH="7")
    await assert_bodies_match_feeds(redis, uids)
    assert len(await bodies(redis)) < 1500 * 3


async def test_purge_users_removes_their_keys_and_the_bodies_only_they_held(redis, start_proc):
    await add_users(redis, "1", "2")
    await xadd_many(redis, [entry("shared", "1,2"), entry("mine", "1"), entry("yours", "2")])
    run_burst(start_proc)
    mine = await feed(redis, "1")
    await redis.zadd(K.read("1"), {mine[0]: 1})
    await redis.sadd(K.archived("1"), mine[0])
    await redis.set(K.migrated("1"), "1")
    assert await purge_users(redis, K, ["1", "nobody"]) == 1
    assert not await redis.exists(K.feed("1"), K.read("1"), K.user_seq("1"), K.archived("1"),
                                  K.migrated("1"))
    await assert_bodies_match_feeds(redis, ["2"])
    assert len(await bodies(redis)) == 2
    assert await purge_users(redis, K, ["2"]) == 1
    assert await bodies(redis) == set()
    assert [k async for k in redis.scan_iter(match=K.refs_prefix + "*")] == []


async def test_bodies_stored_before_the_counts_keep_until_their_last_feed_drops_them(
        redis, start_proc):
    """Data of the version before: bodies in several feeds, no counts. The first center of
    this version counts them before it stores, so retention keeps a body another feed holds."""
    await add_users(redis, "1", "2")
    await xadd_many(redis, [entry("shared", "1,2"), entry("mine", "1")])
    run_burst(start_proc)
    await redis.delete(*[k async for k in redis.scan_iter(match=K.refs_prefix + "*")],
                       K.refs_counted)  # as the version before left it
    await xadd_many(redis, [entry("new 1", "1"), entry("new 2", "1")])
    run_burst(start_proc, VESTNIK_FEED_MAX="2")
    assert len(await feed(redis, "1")) == 2
    await assert_bodies_match_feeds(redis, ["1", "2"])
    assert len(await bodies(redis)) == 3  # new 1, new 2 and the shared one user 2 holds
    assert await redis.get(K.refs_counted) == b"1"
