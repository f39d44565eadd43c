"""The notifier: entity changes a product publishes (XADD to `vn:topic:<name>`, or a key
write the keyspace bridge turns into one) kept as a current snapshot per topic and pushed
to every SSE subscriber with the whole entity attached, by one reader per process.

- `topics`: topic names, publishing an event, the snapshot and its writer (`StateWriter`);
- `topic_hub`: the one reader per process that tails every topic and fans events out;
- `bridge`: keyspace notifications of product keys turned into topic events;
- `hydrate`: thin events (an id only) filled in from Redis or an HTTP source.
"""

from vestnik.streams.notifier.bridge import Bridge, BridgeError
from vestnik.streams.notifier.hydrate import Hydrator
from vestnik.streams.notifier.topic_hub import Subscription, TopicHub
from vestnik.streams.notifier.topics import (
    StateWriter,
    check_topic,
    publish,
    queue_publish,
    read_snapshot,
)

__all__ = [
    "Bridge", "BridgeError", "Hydrator", "StateWriter", "Subscription", "TopicHub",
    "check_topic", "publish", "queue_publish", "read_snapshot",
]
