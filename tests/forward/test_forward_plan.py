"""Which forward jobs a stored notice needs, and when (pure functions, no servers)."""

from __future__ import annotations

from vestnik.streams.forward.schedule import BROADCAST, ForwardJob, forward_delay, forward_jobs_for
from vestnik.streams.schemas import Notice


def n(**kw) -> Notice:
    return Notice(**{"id": "N", "alert": "a", "title": "t", "created_at": 1_000_000,
                     "recipients": ["1", "2"], **kw})


def test_no_external_channel_no_job():
    assert forward_jobs_for(n(), 300) == []
    assert forward_jobs_for(n(channels={"ui": {"users": ["1"]}, "forward_after": 5}), 300) == []


def test_users_named_by_a_channel_or_every_recipient():
    jobs = forward_jobs_for(n(channels={"email": {"users": ["2", 3]}}), 300)
    assert jobs == [ForwardJob("N", "2", 1_300_000), ForwardJob("N", "3", 1_300_000)]
    jobs = forward_jobs_for(n(channels={"email": {}}), 300)
    assert [j.uid for j in jobs] == ["1", "2"]


def test_shared_targets_make_one_broadcast_job():
    jobs = forward_jobs_for(n(channels={"webhook": {"url": "http://x"},
                                        "telegram": {"users": ["1"], "chat_ids": [5]}}), 0)
    assert [j.uid for j in jobs].count(BROADCAST) == 1
    assert {j.uid for j in jobs} == {"1", "2", BROADCAST}
    assert all(j.due_ms == 1_000_000 for j in jobs)


def test_forward_after_precedence():
    assert forward_delay(n(forward_after=2, channels={"forward_after": 9}), 300) == 2
    assert forward_delay(n(channels={"forward_after": 9}), 300) == 9
    assert forward_delay(n(channels={"forward_after": True}), 300) == 300
    assert forward_delay(n(channels={"forward_after": -1}), 300) == 300
    assert forward_delay(n(), 300) == 300
