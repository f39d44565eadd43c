"""Delayed forwarding: one arq job per (notice, user), run when due, sending only if unread.

- `schedule`: what a forward is (`ForwardJob`), which channels it uses for a user
  (`user_routes`, asked by the center and by the job) and how one is scheduled: arq's own
  job record written by one script call per job, or inside the notice center's store call
  (`store_call_jobs`, `store_jobs.lua`). The only code that knows arq's record format,
  key prefixes and constants (`arq_keys` for everyone else).
- `job`: the job itself (`Forwarder`, `forward`): load the notice and the user, skip what
  was read, resolved or already sent, hold what the user holds, send on each channel,
  record every attempt, retry; the `resolved` messages of incidents.
- `digest`: digests (`Digests`): the forwards of a channel with a digest policy wait in
  the user's bucket and go as one message per window (`digest_member`, `digest_id`);
  `digest_store` holds their Redis calls: one script per batch on a single Redis, steps
  per slot on a Redis Cluster (and the order that makes a crash between them harmless).
- `policy`: when a forward to a user must wait (`hold_until`: quiet hours, snoozes), as
  pure functions.
- `worker`: the forwarder process (`ForwardWorker`, `run_forwarder`): arq's Worker, with
  a poll's claims and a loop iteration's finishes in one script call each.
"""

from vestnik.streams.forward.digest import Digests, digest_id, digest_member, policy_for
from vestnik.streams.forward.job import Delivery, DeliveryList, decode_delivery
from vestnik.streams.forward.policy import hold_until
from vestnik.streams.forward.schedule import (
    BROADCAST,
    KEEP_RESULT_S,
    PLAIN,
    RESOLVED,
    ArqKeys,
    BatchJob,
    Claim,
    ForwardJob,
    Stage,
    add_forward_jobs,
    arq_keys,
    due_member,
    forward_jobs_for,
    job_record,
    resolved_jobs,
    store_call_jobs,
    user_routes,
    wants_job,
)
from vestnik.streams.forward.worker import ForwardWorker, make_worker, pump_due, run_forwarder

__all__ = [
    "BROADCAST", "KEEP_RESULT_S", "PLAIN", "RESOLVED", "ArqKeys", "BatchJob", "Claim",
    "Delivery", "DeliveryList", "Digests", "ForwardJob", "ForwardWorker", "Stage",
    "add_forward_jobs", "arq_keys", "decode_delivery", "digest_id", "digest_member",
    "due_member", "forward_jobs_for", "hold_until", "job_record", "make_worker",
    "policy_for", "pump_due", "resolved_jobs", "run_forwarder", "store_call_jobs",
    "user_routes", "wants_job",
]
