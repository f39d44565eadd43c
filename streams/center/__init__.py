"""The notice center: the `center` consumer group of `vn:notices` stores every notice in
its recipients' feeds, pushes it live, keeps the read state and hands what stays unread to
the forwarder.

- `ingest`: a notice sent over HTTP, checked and XADDed (idempotent by Idempotency-Key);
- `plan`: its id, its settings' channels, who gets it in-app and who a forward;
- `batch`: the consumer's handler: a batch of entries admitted, resolved and planned;
- `users`: the recipients' profiles, following the `user` topic (deletes purge inboxes);
- `store`: a batch's notices into the feeds, live pushes and forward jobs, in one call;
- `silences`: admin silences (stored, matched: a silenced notice is neither pushed nor
  forwarded); `snooze`: a user's snoozes of their forwards;
- `inbox`: a user's feed and read state (mark, read all, archive, retention);
- `user_hub`: one pub/sub reader per process pushing live messages to SSE connections;
- `run`: the `vestnik center` process.

Each module's Lua is in `.lua` files beside it (streams.lua loads them).
"""

from vestnik.streams.center.batch import Center
from vestnik.streams.center.inbox import MAX_LIMIT as FEED_LIMIT  # the largest feed page
from vestnik.streams.center.inbox import Count, FeedPage, Inbox, Marked, MarkedAll
from vestnik.streams.center.ingest import (
    INGEST_SCRIPT_PATH,
    Ingest,
    IngestCall,
    resolve_entry,
    resolve_stream,
)
from vestnik.streams.center.run import run_center
from vestnik.streams.center.silences import SilenceStore
from vestnik.streams.center.snooze import Snoozes
from vestnik.streams.center.user_hub import RESYNC, UserHub, UserSub

__all__ = ["FEED_LIMIT", "INGEST_SCRIPT_PATH", "RESYNC", "Center", "Count", "FeedPage", "Inbox",
           "Ingest", "IngestCall", "Marked", "MarkedAll", "SilenceStore", "Snoozes", "UserHub",
           "UserSub", "resolve_entry", "resolve_stream", "run_center"]
