"""Found by `vestnik soak --sentinel` (issue 24): a retry of a notice that names an `entity`
was taken for another notice under the same id. The wrapper re-sends a batch whose WAIT
was not confirmed (a failover), and every re-sent notice with an entity became a dead
letter `already exists with other content`; over HTTP the same retry was a 409. The stored
body decodes its entity as EntityRef, the incoming one as EntityRefIn, and two Structs of
different classes are never equal. Real `vestnik center` and `vestnik api` processes."""

from __future__ import annotations

import json

from center_support import add_users, dead, entry, feed, stored, xadd_many
from redis.asyncio import Redis

from support import Api

NID = "01JSOAKRETRYENTITY00000000"
ENTITY = {"topic": "vm", "id": "web-1"}


def run_burst(start_proc) -> None:
    proc = start_proc("center", "--burst", "--no-forward")
    assert proc.proc.wait(60) == 0, proc.output()


async def test_a_resent_stream_entry_with_an_entity_is_a_retry_not_a_dead_letter(
        redis: Redis, start_proc) -> None:
    await add_users(redis, "1")
    sent = {**entry("Disk 95% on web-1"), "id": NID, "entity": json.dumps(ENTITY),
            "dedup_key": "web-1"}
    await xadd_many(redis, [sent])
    run_burst(start_proc)
    await xadd_many(redis, [sent, sent])  # the wrapper's retry of an unconfirmed batch
    run_burst(start_proc)
    assert await dead(redis) == []
    assert await feed(redis, "1") == [NID]
    assert (await stored(redis, NID))["entity"] == ENTITY


async def test_an_http_retry_with_its_own_id_and_an_entity_is_accepted_again(
        api: Api, redis: Redis, start_proc) -> None:
    await add_users(redis, "1")
    body = {"id": NID, "alert": "disk", "title": "Disk 95%", "recipients": ["1"],
            "entity": ENTITY}
    async with api.client() as svc:
        assert (await svc.post("/api/v1/notices", json=body)).status_code == 202
        run_burst(start_proc)
        again = await svc.post("/api/v1/notices", json=body)
        other = await svc.post("/api/v1/notices",
                               json={**body, "entity": {"topic": "vm", "id": "web-2"}})
    assert again.status_code == 202 and again.json()["id"] == NID, again.text
    assert other.status_code == 409 and other.json()["path"] == "$.id"  # still refused
    assert await feed(redis, "1") == [NID]
