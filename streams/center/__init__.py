"""The notice center: the `center` consumer group of `vn:notices` stores every notice in
its recipients' feeds, pushes it live, keeps the read state and hands what stays unread to
the forwarder.

- `ingest`: a notice sent over HTTP, checked and XADDed (idempotent by Idempotency-Key);
- `plan`: its id, its settings' channels, who gets it in-app and who a forward;
- `batch`: a batch of entries planned and stored in a few pipelined round trips;
- `inbox`: a user's feed and read state (mark, read all, archive, retention);
- `user_hub`: one pub/sub reader per process pushing live messages to SSE connections;
- `run`: the `vestnik center` process.
"""

from vestnik.streams.center.batch import Center
from vestnik.streams.center.inbox import Count, FeedPage, Inbox, Marked, MarkedAll
from vestnik.streams.center.ingest import Ingest
from vestnik.streams.center.run import run_center
from vestnik.streams.center.user_hub import RESYNC, UserHub, UserSub

__all__ = ["RESYNC", "Center", "Count", "FeedPage", "Inbox", "Ingest", "Marked", "MarkedAll",
           "UserHub", "UserSub", "run_center"]
