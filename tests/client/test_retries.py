"""Retries through a real local front (127.0.0.1) before a real api: a 503 with
Retry-After is retried and the notice is sent once under one Idempotency-Key; a
Retry-After beyond the budget is not waited for; a call that is not safe to repeat is not
repeated after a 503, but is after a 429 (refused before any work). Attempts are counted,
never timed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from clients import KINDS, FlakyFront, call, feed

from support import Api
from vestnik.client import Retries, Unavailable


@pytest.fixture
def front(api: Api) -> Iterator[Callable[[list[tuple[int, str]]], FlakyFront]]:
    made: list[FlakyFront] = []

    def start(answers: list[tuple[int, str]]) -> FlakyFront:
        made.append(FlakyFront(api.base, answers))
        return made[-1]

    yield start
    for f in made:
        f.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_503_is_retried_once_and_the_notice_sent_once(clients,
        kind: str, api: Api, front, start_proc, user_token: Callable[..., str]):
    start_proc("center", "--no-forward")
    f = front([(503, "0")])
    client = clients(kind, "http", f.url, api.service_token)
    nid = await call(client.send, "disk", "retried", recipients=["1"])
    assert len(f.seen) == 2
    (_, _, key1), (_, _, key2) = f.seen
    assert key1 is not None and key1 == key2  # the same key: a repeat is no second notice
    items = await feed(api, user_token("1"))
    assert [i["id"] for i in items] == [nid]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_retry_after_beyond_the_budget_is_not_waited_for(clients, kind: str, api: Api,
                                                                 front):
    f = front([(503, "3600")])
    client = clients(kind, "http", f.url, api.service_token, Retries(attempts=4, budget=5))
    with pytest.raises(Unavailable) as e:
        await call(client.settings.list)
    assert len(f.seen) == 1 and e.value.status == 503


@pytest.mark.parametrize("kind", KINDS)
async def test_attempts_are_bounded(clients, kind: str, api: Api, front):
    f = front([(503, "0")] * 10)
    client = clients(kind, "http", f.url, api.service_token, Retries(attempts=3))
    with pytest.raises(Unavailable):
        await call(client.settings.list)
    assert len(f.seen) == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_a_publish_is_retried_after_429_but_not_after_503(clients, kind: str, api: Api,
                                                                front):
    f = front([(429, "0"), (503, "0")])
    client = clients(kind, "http", f.url, api.service_token)
    with pytest.raises(Unavailable):  # the 429 is retried, the 503 that follows is not
        await call(client.publish, "vm", "create", "1", {"id": 1})
    sid = await call(client.publish, "vm", "create", "1", {"id": 1})
    assert [m for m, _, _ in f.seen] == ["POST"] * 3 and "-" in sid
