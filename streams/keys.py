"""Every Redis key name Vestnik reads or writes. Products use these directly: a public API.

Keys of one user share the hash tag `{u:<uid>}` so the per-user multi-key
writes of the notice center stay in one Redis Cluster slot.

On a Redis Cluster (`Keys(prefix, cluster=True)`, `Keys.for_url`) the topic keys (streams,
states, positions, the topic set), the settings store and the silences (hash and version,
written in one transaction) share one more tag, TOPICS_TAG:
a settings write changes its hash, indexes, topic stream and the topic set in one script,
every publish XADDs and SADDs together, and a hub or wrapper XREADs many topic streams in
one call, so all of them must be in one slot. (Topic traffic is entity changes, small next
to notices, so one master carries it.) On a single Redis the names stay as they were:
the tag is only there on a cluster, which a deployment starts empty.

Forwarding: the forward jobs are partitioned over VESTNIK_FORWARD_PARTITIONS arq queues
(`forward_partition(nid)`: crc32 of the notice id, so every process agrees). Each
partition's keys share one prefix (`ForwardKeys.tag`): its queue, due set, wake channel
and abort set (`Keys.forward(p)`, a `ForwardKeys`), and every key of a notice in it: the
job ids (so arq's job, in-progress, retry and result keys), the attempt records, sent and
digested markers, threads, because the forwarder's claim and finish scripts write them
together. With one partition (the default) the names are what they always were: no tag
on a single Redis, FORWARD_TAG on a cluster. With more, the partition's tag
`{fwd-<p>}:` on a cluster and on a single Redis alike (one code path, testable on one
Redis), so on a cluster each partition is a slot, and the partitions spread over masters.
A forwarder's arq pool per partition talks to the master of that partition's slot.

Ingest partitions (VESTNIK_INGEST_PARTITIONS, `ingest_stream`): partition 0 is always
`vn:notices`, the stream products XADD to; partitions 1..N-1 are `vn:notices:<p>`
(on a cluster `vn:notices:<p>:{<tag>}`, tags chosen to spread the slots: `_ingest_tag`),
each with its own dead letters and Idempotency-Key records in its slot. Vestnik's own
writers pick a partition with `ingest_partition`; the center reads them all.
"""

from __future__ import annotations

import functools
import itertools
import random
import zlib
from dataclasses import dataclass
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from vestnik.streams.redis_url import parse

CENTER_GROUP = "center"
REFS_BUCKET = 7  # leading characters of a notice id that name its `refs` bucket
SETTINGS_TOPIC = "settings"
USER_TOPIC = "user"
TOPICS_TAG = "{topics}:"  # on a cluster: after the prefix of every topic and settings key
FORWARD_TAG = "{fwd}:"  # on a cluster, one partition: after the prefix of every forward key
DEMO_MAIL = "demo:mail"  # the demo's mailbox (a list), under the prefix: `Keys.demo_mail`
MAX_PARTITIONS = 64  # VESTNIK_FORWARD_PARTITIONS, VESTNIK_INGEST_PARTITIONS: 1..this
_TAG_WINDOW = 64  # slots: how close to its target a partition's tag must land

# round robin for notices with neither a dedup key nor an Idempotency-Key, from a random
# start: `vestnik send` adds one notice per process, which must not always take partition 0
_SPREAD = itertools.count(random.randrange(MAX_PARTITIONS))


def _van_der_corput(p: int) -> float:
    """p's binary digits mirrored behind the point: 1 -> 1/2, 2 -> 1/4, 3 -> 3/4, 4 -> 1/8.
    The first n of them split [0, 1) about evenly for any n, exactly for a power of two."""
    out, scale = 0.0, 0.5
    while p:
        out += scale * (p & 1)
        p, scale = p >> 1, scale / 2
    return out


@functools.lru_cache(maxsize=4 * MAX_PARTITIONS)
def _ingest_tag(prefix: str, p: int) -> str:
    """The hash tag of ingest partition p > 0 on a cluster: the first integer whose slot is
    within _TAG_WINDOW of `_van_der_corput(p)` of the way round the slots from partition 0's
    (`<prefix>notices`, untagged). So partitions 0 and 1 are half the slots apart, 2 and 3
    a quarter from them...: a cluster whose masters hold even ranges (what `redis-cli
    --cluster create` makes) gets any two partitions on two masters, and 2^k partitions on
    2^k masters one each. The names depend on p alone, never on the partition count, so
    raising the count never renames a stream. About 256 CRC16s per partition, once."""
    base = key_slot(f"{prefix}notices".encode())
    target = (base + int(_van_der_corput(p) * REDIS_CLUSTER_HASH_SLOTS)) % \
        REDIS_CLUSTER_HASH_SLOTS
    for k in itertools.count():
        if (key_slot(str(k).encode()) - target) % REDIS_CLUSTER_HASH_SLOTS < _TAG_WINDOW:
            return str(k)
    raise AssertionError("unreachable")  # pragma: no cover


def dedup_scope(alert: str, setting_id: str | None, key: str) -> str:
    """A notice's dedup key scoped by its alert (and the setting it names), so the same key
    in two alerts or settings never folds one's notice into the other's. Lengths prefix the
    parts: alert names and setting ids may hold `:`, and `a`+`b:c` must differ from
    `a:b`+`c`. The center claims it and deletes it when the incident resolves."""
    sid = setting_id or ""
    return f"{len(alert)}:{alert}:{len(sid)}:{sid}:{key}"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "vn:"
    cluster: bool = False  # Redis Cluster names: the topic/settings keys share TOPICS_TAG
    forward_partitions: int = 1  # VESTNIK_FORWARD_PARTITIONS
    ingest_partitions: int = 1  # VESTNIK_INGEST_PARTITIONS

    @classmethod
    def for_url(cls, prefix: str, redis_url: str | None, *, forward_partitions: int = 1,
                ingest_partitions: int = 1) -> Keys:
        """The key names for the Redis at `redis_url` (a cluster's carry the tags)."""
        cluster = bool(redis_url) and parse(redis_url or "").kind == "cluster"
        return cls(prefix, cluster, forward_partitions, ingest_partitions)

    @classmethod
    def of(cls, config: Any) -> Keys:
        """The key names a process configured by `config` (a streams.config.Config or the
        wrapper's config: anything with `prefix`, `redis_url` and optionally the partition
        counts) uses."""
        return cls.for_url(config.prefix or "vn:", config.redis_url,
                           forward_partitions=getattr(config, "forward_partitions", 1),
                           ingest_partitions=getattr(config, "ingest_partitions", None) or 1)

    @property
    def _t(self) -> str:
        """The prefix of the topic and settings keys."""
        return self.prefix + TOPICS_TAG if self.cluster else self.prefix

    def forward_partition(self, nid: str) -> int:
        """The forward partition of notice `nid`: crc32 of its UTF-8 id modulo
        `forward_partitions` (0 with one). Stable across processes and versions: every
        forward key of the notice is in it (`forward_of`)."""
        n = self.forward_partitions
        return zlib.crc32(nid.encode()) % n if n > 1 else 0

    def forward(self, p: int) -> ForwardKeys:
        """The keys of forward partition `p` (0 <= p < forward_partitions)."""
        if not 0 <= p < self.forward_partitions:
            raise ValueError(f"forward partition {p} is not below forward_partitions "
                             f"({self.forward_partitions})")
        return _forward_keys(self.prefix, self.cluster, self.forward_partitions, p)

    def forward_of(self, nid: str) -> ForwardKeys:
        """The keys of the forward partition notice `nid` is in."""
        return self.forward(self.forward_partition(nid))

    @property
    def forward_notice_prefixes(self) -> list[str]:
        """Each partition's `ForwardKeys.notice_prefix`, in partition order: what a script
        that finds a notice's forward keys by itself needs (forward/partition.lua)."""
        return [self.forward(p).notice_prefix for p in range(self.forward_partitions)]

    def forward_other_layouts(self) -> list[ForwardKeys]:
        """Partitions of OTHER layouts than this one (a different VESTNIK_FORWARD_PARTITIONS)
        whose queues a forwarder checks at start, so jobs written under another setting are
        not stranded silently: the one-partition names (when this has more), and the tags
        `{fwd-p}` for p from this count on (eight of them: cheap, and catches a count
        lowered by a few; with one partition, `{fwd-0}` on)."""
        n = self.forward_partitions
        other = [_forward_keys(self.prefix, self.cluster, 1, 0)] if n > 1 else []
        return other + [_forward_keys(self.prefix, self.cluster, MAX_PARTITIONS, p)
                        for p in range(0 if n == 1 else n, min(n + 8, MAX_PARTITIONS))]

    # notifier ---------------------------------------------------------------
    def topic(self, topic: str) -> str:
        """Stream of entity events of `topic` (fields op, id, data, ts, src)."""
        return f"{self._t}topic:{topic}"

    @property
    def topic_glob(self) -> str:
        return f"{self._t}topic:*"

    @property
    def topics(self) -> str:
        """Set of topic names, written by every publisher path (HTTP, `vestnik publish`, the
        settings store, the bridge): what the topic hub follows, instead of a SCAN of the
        keyspace. A product that XADDs by itself adds its topic with `SADD`."""
        return f"{self._t}topics"

    def topic_of(self, key: str) -> str:
        return key[len(self._t) + len("topic:"):]

    def state(self, topic: str) -> str:
        """Hash `entity id → entity JSON`: the current snapshot of `topic`."""
        return f"{self._t}state:{topic}"

    def state_pos(self, topic: str) -> str:
        """String: id of the last topic stream entry applied to `state(topic)`."""
        return f"{self._t}state:{topic}:pos"

    @property
    def users_seen(self) -> str:
        """String: id of the last `user` topic entry whose deletes the centers have purged
        (only moves forward), so a center that starts purges the deletes an api's hub
        applied while no center ran. Owned by the center; one key."""
        return f"{self.prefix}center:users-seen"

    # alert settings ---------------------------------------------------------
    @property
    def settings(self) -> str:
        """Hash `setting id → setting JSON`."""
        return f"{self._t}settings"

    @property
    def settings_ids(self) -> str:
        """Sorted set (all scores 0) of setting ids, for lexicographic paging."""
        return f"{self._t}settings:ids"

    def settings_by_name(self, name: str) -> str:
        """Sorted set (all scores 0) of ids of the settings named `name`."""
        return f"{self._t}settings:name:{name}"

    # notice center: ingest ---------------------------------------------------
    def ingest_stream(self, p: int = 0) -> str:
        """Ingest stream `p` (of `ingest_partitions`), consumer group `center`. Partition 0
        is always `<prefix>notices`, the one name a product XADDs to (the center reads it
        whatever the count); partition p > 0 is `<prefix>notices:<p>`, on a cluster with
        the hash tag `_ingest_tag` picks so the partitions' slots spread over the masters."""
        if not p:
            return f"{self.prefix}notices"
        return f"{self.prefix}notices:{p}{self._ingest_tail(p)}"

    @property
    def ingest_streams(self) -> list[str]:
        """Every ingest stream the center reads, partition 0 first."""
        return [self.ingest_stream(p) for p in range(self.ingest_partitions)]

    def ingest_dead(self, p: int = 0) -> str:
        """Dead letters of ingest stream `p`: entries that failed validation, with reason,
        raw fields and time. On a cluster in the stream's slot (partition 0: tagged with the
        stream's name): the wrapper writes both in one payload to that stream's node."""
        if not p:
            if self.cluster:
                return f"{self.prefix}notices:dead:{{{self.notices}}}"
            return f"{self.prefix}notices:dead"
        return f"{self.prefix}notices:{p}:dead{self._ingest_tail(p)}"

    def ingest_partition(self, alert: str, dedup_key: str | None = None,
                         idempotency_key: str | None = None) -> int:
        """The partition a notice (or resolve) of `alert` goes to; every writer asks this.
        With a dedup key: the one of the key scoped by the alert alone (`dedup_scope`
        without a setting: a wrapper's resolve names no setting, and resolves the key of
        every setting), so a firing notice, its repeats and its resolve stay in one stream,
        in order. Else by the Idempotency-Key (a retry lands where the first try did), else
        spread round robin. Hashes are CRC32: the same in every process and language."""
        n = self.ingest_partitions
        if n <= 1:
            return 0
        if dedup_key:
            return zlib.crc32(dedup_scope(alert, None, dedup_key).encode()) % n
        if idempotency_key is not None:
            return zlib.crc32(idempotency_key.encode()) % n
        return next(_SPREAD) % n

    def _ingest_tail(self, p: int) -> str:
        return f":{{{_ingest_tag(self.prefix, p)}}}" if self.cluster else ""

    @property
    def notices(self) -> str:
        """Ingest stream 0, `<prefix>notices` (`ingest_stream`)."""
        return self.ingest_stream(0)

    @property
    def notices_dead(self) -> str:
        """Dead letters of ingest stream 0 (`ingest_dead`)."""
        return self.ingest_dead(0)

    def notice(self, nid: str) -> str:
        """String: the stored notice JSON, shared by all its recipients."""
        return f"{self.prefix}notice:{nid}"

    def folded(self, nid: str) -> str:
        """Set of ids of the repeats folded into notice `nid` (dedup), so a re-delivered
        repeat is counted once; expires with the dedup window. On a cluster its hash tag is
        the body's whole key (`vn:folded:{vn:notice:<nid>}`): the same slot as the body,
        which fold.lua changes with it, and no body key changes."""
        if self.cluster:
            return f"{self.prefix}folded:{{{self.notice(nid)}}}"
        return f"{self.prefix}notice:{nid}:folded"

    @property
    def refs_prefix(self) -> str:
        return f"{self.prefix}refs:"

    def refs(self, nid: str) -> str:
        """Hash of one bucket of notice ids (their first REFS_BUCKET characters; field: the
        rest of the id): how many MORE feeds than one hold each body. No field = one feed,
        so a notice with one recipient costs nothing here; a bucket of ids made in the same
        8 s stays a small listpack. The scripts (center/release.lua, filled in by
        center/store_batch.lua and center/purge_user.lua) derive it the same way from
        `refs_prefix` and REFS_BUCKET: change them together."""
        return f"{self.prefix}refs:{nid[:REFS_BUCKET]}"

    def deliveries(self, nid: str) -> str:
        """List: JSON record of every forward attempt of notice `nid`."""
        return f"{self.forward_of(nid).notice_prefix}{nid}:deliveries"

    def dedup(self, dedup_key: str) -> str:
        """String: id of the first notice with this dedup key, expires after the window.
        `dedup_key` is scoped (see `dedup_scope`)."""
        return f"{self.prefix}dedup:{dedup_key}"

    def idempotency(self, key: str, p: int = 0) -> str:
        """String: notice id answered for an HTTP Idempotency-Key, kept beside ingest
        stream `p` (the notice's partition). On a cluster in that stream's slot: ingest.lua
        writes both together. Partition p > 0's begin with its stream's name, so they can
        never meet partition 0's (`<prefix>idem:<key>`), whatever the key holds."""
        if p:
            return f"{self.prefix}notices:{p}:idem{self._ingest_tail(p)}:{key}"
        if self.cluster:
            return f"{self.prefix}idem:{{{self.notices}}}:{key}"
        return f"{self.prefix}idem:{key}"

    def feed(self, uid: str) -> str:
        """Sorted set `notice id → per-user seq`: the user's history, newest = highest."""
        return f"{self.prefix}{{u:{uid}}}:feed"

    def read(self, uid: str) -> str:
        """Sorted set of the feed's READ notice ids (same scores as the feed; always a subset
        of it): unread = in the feed and not here; unread count = ZCARD feed - ZCARD read.
        (A new notice is unread by being absent here: storing it is one ZADD, not two.)"""
        return f"{self.prefix}{{u:{uid}}}:read"

    def unread_before_v2(self, uid: str) -> str:
        """Sorted set of unread notice ids, as layout 1 kept them (streams.center.inbox
        migrates it)."""
        return f"{self.prefix}{{u:{uid}}}:unread"

    def migrated(self, uid: str) -> str:
        """String: set once this user's read state is in layout 2 (see streams.center.inbox)."""
        return f"{self.prefix}{{u:{uid}}}:v2"

    @property
    def inbox_layout(self) -> str:
        """String: "2" once every user's read state is a read set (streams.center.inbox.migrate)."""
        return f"{self.prefix}layout"

    @property
    def refs_counted(self) -> str:
        """String: "1" once the bodies stored before `refs` existed have their counts
        (streams.center.inbox.count_refs, run by each center before it stores anything)."""
        return f"{self.prefix}layout:refs"

    @property
    def refs_lock(self) -> str:
        """String: the center counting them now (a lock with a TTL)."""
        return f"{self.prefix}layout:refs:lock"

    def archived(self, uid: str) -> str:
        """Set of archived notice ids."""
        return f"{self.prefix}{{u:{uid}}}:archived"

    def user_seq(self, uid: str) -> str:
        """Counter: the user's last feed seq (the SSE event id of /me/stream)."""
        return f"{self.prefix}{{u:{uid}}}:seq"

    def live(self, uid: str) -> str:
        """Pub/sub channel of one user's live events (new notice, read, count)."""
        return f"{self.prefix}{{u:{uid}}}:live"

    def live_user(self, channel: str) -> str:
        """The uid whose `live(uid)` channel this is (the user hub's dispatch)."""
        return channel[len(self.prefix) + len("{u:"):-len("}:live")]

    def sent_marker(self, nid: str, uid: str, marker: str) -> str:
        """String: notice `nid` went to `uid` (or `*`) on `marker` (a channel, or
        `channel:target` for a shared target); expires after every retry could run."""
        return f"{self.forward_of(nid).sent}{nid}:{uid}:{marker}"

    @property
    def demo_mail(self) -> str:
        """List: the mails the demo's SMTP sink caught, newest first (app.demo, app.pages)."""
        return f"{self.prefix}{DEMO_MAIL}"

    # forwarding (arq) -------------------------------------------------------
    def forward_job(self, nid: str, uid: str, stage: str | None = None) -> str:
        """The arq job id of the forward of notice `nid` to `uid` (or `*`): one job per
        pair (and `stage`: streams.forward's `Stage`, absent for the plain forward), so
        re-ingesting a notice never schedules a second one. In the notice's partition."""
        return self.forward_of(nid).forward_job(nid, uid, stage)

    def threads(self, nid: str) -> str:
        """Hash `<uid>:<marker>` -> the id the other side gave the firing message of notice
        `nid` (Message-ID, Telegram message_id, Slack ts): a `resolved` message replies to it.
        Deleted with the body (center/release.lua, purge_user.lua)."""
        return f"{self.forward_of(nid).notice_prefix}{nid}:threads"

    def digest(self, uid: str, channel: str) -> str:
        """Sorted set `notice id -> ms it fell due`: the notices waiting for the next digest
        of `uid` on `channel` (streams.forward.digest owns it)."""
        return f"{self.prefix}{{u:{uid}}}:digest:{channel}"

    def digests(self, uid: str) -> str:
        """Hash of `uid`'s pending digests: `<channel>` -> ms it is due, `<channel>:id` ->
        its digest id, `<channel>:window` -> window ms, `<channel>:try` -> failed tries.
        Its fields name the buckets (`digest`) the purge of a deleted user drops."""
        return f"{self.prefix}{{u:{uid}}}:digests"

    @property
    def digest_due(self) -> str:
        """Sorted set `msgpack [uid, channel]` -> ms its digest is due (or its lease ends):
        the forwarders' polls take the due ones (streams.forward.digest)."""
        return f"{self.prefix}digest:due"

    def digested(self, nid: str, uid: str, channel: str) -> str:
        """String (a day): notice `nid` went into `uid`'s digest bucket on `channel`, so a
        re-run forward job does not put it in a second digest."""
        return f"{self.forward_of(nid).sent}{nid}:{uid}:{channel}:digested"

    def snooze(self, uid: str) -> str:
        """String: JSON `{alert or "*": until ms}` of `uid`'s snoozes; expires at the last."""
        return f"{self.prefix}{{u:{uid}}}:snooze"

    @property
    def silences(self) -> str:
        """Hash `silence id -> Silence JSON` (admin silences; expired ones pruned by writes)."""
        return f"{self._t}silences"

    @property
    def silences_version(self) -> str:
        """Counter: bumped by every silence write, so a center reloads them only on change."""
        return f"{self._t}silences:v"

    @property
    def incidents_due(self) -> str:
        """Sorted set `msgpack [notice id, scoped dedup key]` -> ms: incidents that resolve
        by themselves (`resolve_after`) unless repeated before; owned by the center."""
        return f"{self.prefix}incidents:due"


@dataclass(frozen=True, slots=True)
class ForwardKeys:
    """The queue-level keys of one forward partition (`Keys.forward(p)`): what a forwarder
    polls and the center schedules into. `tag` begins every forward key of the partition's
    notices (`Keys.forward_of`)."""

    partition: int
    tag: str  # the prefix of every key of this partition (streams.keys module docstring)
    tagged: bool  # the tag carries a hash tag (a cluster, or more than one partition)

    @property
    def notice_prefix(self) -> str:
        """What a notice's deliveries and threads keys (`Keys.deliveries`, `Keys.threads`)
        begin with before its id."""
        return f"{self.tag}notice:"

    @property
    def forward_due(self) -> str:
        """Delayed forwards not due yet (sorted set by due ms; streams.forward pumps them)."""
        return f"{self.tag}fwd:due"

    @property
    def arq_queue(self) -> str:
        """Sorted set of forward job ids by due ms: the queue arq's worker polls (the job
        records themselves are arq's own keys, outside the prefix: streams.forward)."""
        return f"{self.tag}arq:queue"

    @property
    def forward_job_prefix(self) -> str:
        """What every forward job id of the partition begins with (`Keys.forward_job`)."""
        return f"{self.tag}fwd:"

    def forward_job(self, nid: str, uid: str, stage: str | None = None) -> str:
        """`Keys.forward_job` of a notice of this partition (no partition lookup)."""
        if stage:
            return f"{self.tag}fwd:{nid}:{uid}:{stage}"
        return f"{self.tag}fwd:{nid}:{uid}"

    @property
    def forward_wake(self) -> str:
        """Pub/sub channel a forwarder listens on to poll at once (jobs due now)."""
        return f"{self.tag}fwd:wake"

    @property
    def sent(self) -> str:
        """Prefix of the partition's idempotency markers for external sends (notice, user,
        channel): `Keys.sent_marker`, `Keys.digested`."""
        return f"{self.tag}sent:"

    def forward_own(self, name: str) -> str:
        """A key streams.forward names itself (arq's abort set, which the finish script
        writes): as is on a single Redis with one partition, after the tag otherwise."""
        return self.tag + name if self.tagged else name


@functools.lru_cache(maxsize=4096)
def _forward_keys(prefix: str, cluster: bool, partitions: int, p: int) -> ForwardKeys:
    """Partition `p` of `partitions` (built once: a job id asks for it per job)."""
    if partitions > 1:
        return ForwardKeys(p, f"{prefix}{{fwd-{p}}}:", True)
    return ForwardKeys(0, prefix + FORWARD_TAG if cluster else prefix, cluster)
