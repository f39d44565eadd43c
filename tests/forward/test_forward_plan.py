"""Which forward jobs a stored notice needs, and when (pure functions, no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from vestnik.streams.errors import BadInput
from vestnik.streams.forward.schedule import BROADCAST, ForwardJob, forward_delay, forward_jobs_for
from vestnik.streams.schemas import ChannelMap, Notice, User, convert

ADDRESSES = {"email": "email", "telegram": "telegram_chat_id", "webhook": None}


def n(channels: dict[str, Any] | None = None, **kw: Any) -> Notice:
    return Notice(**{"id": "N", "alert": "a", "title": "t", "created_at": 1_000_000,
                     "recipients": ["1", "2"], **kw},
                  channels=convert(channels or {}, ChannelMap))


def jobs(notice: Notice, after: float = 300) -> list[ForwardJob]:
    users = [User(id=uid) for uid in notice.recipients]
    return forward_jobs_for(notice, users, ADDRESSES, after)


def test_no_external_channel_no_job():
    assert jobs(n()) == []
    assert jobs(n({"ui": {"users": ["1"]}, "forward_after": 5})) == []


def test_users_named_by_a_channel_or_every_recipient():
    assert jobs(n({"email": {"users": ["2", 3]}}, recipients=["1", "2", "3"])) == [
        ForwardJob("N", "2", 1_300_000), ForwardJob("N", "3", 1_300_000)]
    assert [j.uid for j in jobs(n({"email": {}}))] == ["1", "2"]


def test_shared_targets_make_one_broadcast_job():
    got = jobs(n({"webhook": {"url": "http://x"},
                  "telegram": {"users": ["1"], "chat_ids": [5]}}), 0)
    assert [j.uid for j in got].count(BROADCAST) == 1
    assert {j.uid for j in got} == {"1", BROADCAST}  # the webhook reaches no user itself
    assert all(j.due_ms == 1_000_000 for j in got)


def test_forward_after_precedence():
    assert forward_delay(n({"forward_after": 9}, forward_after=2), 300) == 2
    assert forward_delay(n({"forward_after": 9}), 300) == 9
    assert forward_delay(n(), 300) == 300


@pytest.mark.parametrize("after", [True, -1, "9"])
def test_a_bad_forward_after_is_refused_where_the_map_is_decoded(after: Any):
    with pytest.raises(BadInput) as e:
        convert({"id": "N", "alert": "a", "title": "t", "channels": {"forward_after": after}},
                Notice)
    assert e.value.field == "$.channels.forward_after"
