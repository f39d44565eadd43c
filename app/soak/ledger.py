"""The soak's exact accounting: after the quiet drain, what the load was told was accepted
against what Redis, the SSE clients and the SMTP sink hold.

Each notice is known by the load's sequence number (`data.seq`), never by a count:
- `missing`: acknowledged (recipient, seq) pairs absent from that recipient's feed;
  `duplicated_in_feeds`: extra copies of one seq in one feed (the feed is a set of notice
  ids, so a copy is the same seq under a second id: a retry that became a new notice).
- SSE: a client is owed every feed entry of its user after the feed's last seq when it first
  connected (the `count` event's `seq`), once each, in increasing seq order. `sse_gaps`:
  owed entries never received, entries received out of order, and seqs that came with
  another notice's id than the feed's; `sse_duplicates`: a seq received more than once.
- Forwards: every (notice, forward-class recipient) pair of an acknowledged notice with an
  email channel is due (those users are never read for): it must reach the SMTP sink at
  least once (the mail's X-Vestnik-Notice and To). A second mail of a pair is a duplicate.

THE DOCUMENTED DUPLICATE WINDOW. A forward is sent, then its sent marker and the job's end are
written; a fault between the two makes the job run again and send again: a forwarder
SIGKILLed (its claimed job's in-progress lease, arq's job timeout + 10 s, runs out and another
forwarder re-runs it), Redis killed or paused (the finish is lost or times out), or the SMTP
server too slow to answer within the send timeout (it may still have accepted the mail). So a
duplicate mail is INSIDE the window when one of those faults (forwarder kill/restart, Redis
kill/pause, SMTP sink down/slow) happened at most WINDOW_S before the duplicate was sent
(its Date header, 1 s resolution), where

    WINDOW_S = JOB_TIMEOUT_S + 10 (the in-progress lease) + SEND_TIMEOUT_S + RESTART_S
             = 120 + 10 + 30 + 10 = 170 s.

The fault times come from `stack.events` ((time.time(), kind, target) per fault); a stack
without them makes every duplicate count as outside.

STEADY-STATE MEMORY. `steady_bytes_per_notice`: from the load's samples of INFO memory
`used_memory` (every 5 s), skipping the first 20 % of the run (warm-up: scripts, pools,
buffers), over the longest stretch without a Redis restart: (used_memory at its last sample
- at its first) / (notices acknowledged in between). Bodies, feed entries, read state, forward
jobs and stream entries all count: what one more notice costs this deployment. None when no
stretch had two samples and a notice between them.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import msgspec
from redis.exceptions import RedisError

from vestnik.app.soak.follow import SSERecord
from vestnik.app.soak.load import MemorySample, Sent
from vestnik.streams.center import Inbox
from vestnik.streams.keys import CENTER_GROUP, Keys

if TYPE_CHECKING:
    from vestnik.app.soak.stack import Stack

# The forwarder's own figures (streams.forward.worker.JOB_TIMEOUT_S and arq's +10 s lease
# margin, streams.forward.job.SEND_TIMEOUT_S), restated here because those modules are the
# forwarder's business; tests/soak/test_ledger.py checks they still agree.
FORWARD_LEASE_S = 120.0 + 10.0
SEND_TIMEOUT_S = 30.0
RESTART_S = 10.0  # a killed process back up (the stack restarts it within this)
WINDOW_S = FORWARD_LEASE_S + SEND_TIMEOUT_S + RESTART_S
DRAIN_S = 90.0  # how long the ledger waits for feeds and SSE clients to complete
FORWARD_WAIT_S = WINDOW_S  # ... and for due forwards after the last one fell due
POLL_S = 2.0
WARMUP = 0.2
PAGE = 500
MAX_PAGES = 10_000  # per feed, per dead-letter stream: bounded reads
REDIS_TIMEOUT_S = 30.0
# faults that can make a sent forward run again (see the docstring)
WINDOW_FAULTS = ("forwarder", "redis", "smtp")

_item = msgspec.json.Decoder(dict[str, Any]).decode


class LoadView(Protocol):
    """What the ledger reads of the load (app.soak.load.Load has it)."""

    users: list[str]
    sent: list[Sent]
    sse: list[SSERecord]
    bad: list[str]
    memory: list[MemorySample]
    started_at: float
    stopped_at: float

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FeedEntry:
    seq: int  # the user's feed seq (the SSE event id)
    nid: str
    load_seq: int | None  # the load's sequence number (None: not one of the load's)
    live: bool  # pushed over SSE (False: silenced, history only)


Feeds = dict[str, list[FeedEntry]]


# -- pure checks (the tests plant faults in their inputs) ---------------------------------
def feed_check(sent: Iterable[Sent], feeds: Feeds) -> dict[str, Any]:
    """Missing and duplicated (recipient, seq) pairs."""
    counts = {uid: Counter(e.load_seq for e in entries if e.load_seq is not None)
              for uid, entries in feeds.items()}
    missing: list[tuple[str, int]] = []
    for s in sent:
        for uid in s.recipients:
            if counts.get(uid, Counter())[s.seq] == 0:
                missing.append((uid, s.seq))
    dups = [(uid, seq, n - 1) for uid, c in counts.items() for seq, n in c.items() if n > 1]
    return {"missing": len(missing), "duplicated_in_feeds": sum(d[2] for d in dups),
            "missing_examples": missing[:20], "duplicate_examples": dups[:20]}


def sse_check(records: Iterable[SSERecord], feeds: Feeds) -> dict[str, Any]:
    """Gaps (owed and never received, or received out of order) and duplicates, summed over
    the clients; a client that never connected is counted in `sse_never_connected`."""
    gaps = dups = never = resets = 0
    examples: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        resets += rec.resets
        if rec.start is None:
            never += 1
            continue
        nids = {e.seq: e.nid for e in feeds.get(rec.uid, []) if e.live}
        owed = [seq for seq in nids if seq > rec.start]
        got = [seq for seq, _ in rec.events]
        c = Counter(got)
        d = sum(n - 1 for n in c.values())
        missing = sorted(set(owed) - c.keys())
        disorder = sum(1 for a, b in itertools.pairwise(got) if b < a)
        # an event whose seq names another notice in the feed: that notice was not seen
        wrong = len({seq for seq, nid in rec.events if nids.get(seq, nid) != nid})
        if missing or d or disorder or wrong:
            examples.append({"client": i, "uid": rec.uid, "missing": missing[:10],
                             "duplicates": d, "out_of_order": disorder, "wrong_id": wrong})
        gaps += len(missing) + disorder + wrong
        dups += d
    return {"sse_gaps": gaps, "sse_duplicates": dups, "sse_never_connected": never,
            "sse_resets": resets, "sse_examples": examples[:20]}


@dataclass(frozen=True, slots=True)
class MailSeen:
    nid: str
    uid: str
    at: float  # its Date header (time.time() scale)


def parse_mail(raw: bytes) -> MailSeen | None:
    """The notice, user and send time of one mail of the SMTP sink (None: not a forward
    of a notice to a soak user)."""
    h = BytesHeaderParser().parsebytes(raw)
    nid, to, date = h.get("X-Vestnik-Notice"), h.get("To"), h.get("Date")
    if not nid or not to:
        return None
    addr = email.utils.parseaddr(str(to))[1]
    uid, _, domain = addr.partition("@")
    if domain != "soak.test":
        return None
    try:
        at = email.utils.parsedate_to_datetime(str(date)).timestamp() if date else 0.0
    except (TypeError, ValueError):
        at = 0.0
    return MailSeen(unquote(str(nid)), uid, at)


def in_window(at: float, events: Sequence[tuple[float, str, str]]) -> bool:
    """Whether a fault that can re-run a sent forward happened at most WINDOW_S before a
    duplicate sent at `at` (whole seconds: the Date header's resolution)."""
    for t, kind, target in events:
        what = f"{kind} {target}".lower()
        if any(f in what for f in WINDOW_FAULTS) and at - WINDOW_S - 1 <= t <= at + 1:
            return True
    return False


def forward_check(sent: Iterable[Sent], mails: Iterable[bytes],
                  events: Sequence[tuple[float, str, str]]) -> dict[str, Any]:
    due = {(s.nid, uid) for s in sent if s.nid is not None for uid in s.forward}
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    for raw in mails:
        m = parse_mail(raw)
        if m is not None:
            seen[(m.nid, m.uid)].append(m.at)
    missing = sorted(due - seen.keys())
    duplicates: list[dict[str, Any]] = []
    for pair, times in seen.items():
        if pair not in due:
            continue
        for at in sorted(times)[1:]:
            duplicates.append({"nid": pair[0], "uid": pair[1], "at": at,
                               "inside_window": in_window(at, events)})
    return {"forwards_due": len(due), "forwards_missing": len(missing),
            "forwards_missing_examples": [list(p) for p in missing[:20]],
            "forwards_duplicated": len(duplicates), "forward_duplicates": duplicates,
            "forward_window_s": WINDOW_S}


def steady_bytes_per_notice(samples: Sequence[MemorySample], started_at: float,
                            stopped_at: float) -> int | None:
    """See the module docstring."""
    after = started_at + WARMUP * max(0.0, stopped_at - started_at)
    stretches: list[list[MemorySample]] = []
    for s in samples:
        if s.at < after:
            continue
        if stretches and stretches[-1][-1].run_id == s.run_id:
            stretches[-1].append(s)
        else:
            stretches.append([s])
    best: tuple[int, int] | None = None  # (notices, bytes)
    for st in stretches:
        n = st[-1].acknowledged - st[0].acknowledged
        if n > 0 and (best is None or n > best[0]):
            best = (n, st[-1].used_memory - st[0].used_memory)
    return None if best is None else round(best[1] / best[0])


# -- reading Redis and the sinks --------------------------------------------------------------
async def read_feeds(redis: Any, keys: Keys, users: Iterable[str]) -> Feeds:
    """Every feed entry of `users`, oldest first, with the load's seq from the stored body."""
    inbox = Inbox(redis, keys)
    feeds: Feeds = {}
    for uid in users:
        out: list[FeedEntry] = []
        last = 0
        for _ in range(MAX_PAGES):
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                items = await inbox.after(uid, last, PAGE)
            for seq, payload in items:
                last = seq
                if payload is None:
                    nid = ""
                    load_seq = None
                else:
                    item = _item(payload)
                    nid = str(item.get("id", ""))
                    data = item.get("data")
                    raw_seq = data.get("seq") if isinstance(data, dict) else None
                    load_seq = raw_seq if isinstance(raw_seq, int) else None
                out.append(FeedEntry(seq, nid, load_seq, payload is not None))
            if len(items) < PAGE:
                break
        feeds[uid] = out
    return feeds


async def read_dead_titles(redis: Any, keys: Keys) -> set[str]:
    """The titles of the entries in the dead-letter stream (its `raw` fields)."""
    titles: set[str] = set()
    start = "-"
    for _ in range(MAX_PAGES):
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            rows = await redis.xrange(keys.notices_dead, start, "+", count=PAGE)
        for _, fields in rows:
            try:
                raw = _item(fields.get(b"raw") or fields.get("raw") or b"{}")
            except msgspec.DecodeError:
                continue  # cut (truncated) or not ours
            if isinstance(raw.get("title"), str):
                titles.add(raw["title"])
        if len(rows) < PAGE:
            break
        sid = rows[-1][0]
        start = "(" + (sid.decode() if isinstance(sid, bytes) else sid)
    return titles


async def ingest_quiet(redis: Any, keys: Keys) -> bool:
    """Whether the center group has read everything and acknowledged it."""
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            groups = await redis.xinfo_groups(keys.notices)
    except (RedisError, OSError, TimeoutError):
        return False
    for g in groups:
        if g["name"] in (CENTER_GROUP, CENTER_GROUP.encode()):
            return int(g["pending"]) == 0 and not g.get("lag")
    return False


def _caught_up(rec: SSERecord, feeds: Feeds) -> bool:
    live = [e.seq for e in feeds.get(rec.uid, []) if e.live]
    if rec.start is None:
        return False
    return max([rec.start, *(s for s, _ in rec.events)]) >= (live[-1] if live else 0)


# -- the accounting -------------------------------------------------------------------------
async def account(stack: Stack, load: LoadView, *, drain_s: float = DRAIN_S,
                  forward_wait_s: float = FORWARD_WAIT_S) -> dict[str, Any]:
    """Wait (bounded) until the feeds hold every acknowledged notice, the SSE clients have
    caught up and every due forward reached the sink, then count. The SSE clients are
    closed (`load.close()`) here, once caught up or out of time."""
    keys, redis = stack.keys, stack.redis()
    try:
        deadline = time.monotonic() + drain_s
        feeds: Feeds = {}
        result: dict[str, Any] = {}
        for _ in range(int(drain_s / POLL_S) + 2):  # feeds complete
            quiet = await ingest_quiet(redis, keys)
            try:
                feeds = await read_feeds(redis, keys, load.users)
            except (RedisError, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise  # Redis never came back: no accounting is possible
                await asyncio.sleep(POLL_S)
                continue
            result = feed_check(load.sent, feeds)
            if (quiet and result["missing"] == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S)
        for _ in range(int(drain_s / POLL_S) + 2):  # SSE clients caught up with the feeds
            if all(_caught_up(r, feeds) for r in load.sse) or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S)
        await load.close()
        result.update(sse_check(load.sse, feeds))

        last_due = max((s.at for s in load.sent if s.forward), default=0.0) \
            + stack.forward_after_s
        wait_until = time.monotonic() + max(0.0, last_due - time.time()) + forward_wait_s
        fwd: dict[str, Any] = {}
        for _ in range(int((wait_until - time.monotonic()) / POLL_S) + 2):
            fwd = forward_check(load.sent, await stack.mails(),
                                list(getattr(stack, "events", ())))
            if fwd["forwards_missing"] == 0 or time.monotonic() > wait_until:
                break
            await asyncio.sleep(POLL_S)
        result.update(fwd)

        titles = await read_dead_titles(redis, keys)
        result["dead_letters_expected"] = len(load.bad)
        result["dead_letters_found"] = sum(1 for t in load.bad if t in titles)
        result["acknowledged"] = len(load.sent)
        if callable(stats := getattr(load, "stats", None)):
            result["load"] = stats()
        result["acknowledged_by_path"] = dict(Counter(s.path for s in load.sent))
        result["steady_bytes_per_notice"] = steady_bytes_per_notice(
            load.memory, load.started_at, load.stopped_at)
        return result
    finally:
        await redis.aclose()
