-- One forward partition's jobs of a batch in one call, written as the center's store call
-- writes them on a single Redis (store_jobs.lua): for a Redis Cluster, where the center
-- stores per user and a partition's keys are one slot (streams.forward.add_partition_jobs).
-- KEYS[1]: the partition's queue (it routes the call to the slot's master; the header
-- names the others, all in that slot). ARGV[1]: msgpack, the partition's header of
-- streams.forward.store_call_jobs (no claim), then the job records and due members it
-- points at. Every job due now is checked for an existing one (no notice is known new).
-- Returns 0.
--#include forward/store_jobs.lua
store_jobs(cmsgpack.unpack(ARGV[1]), {}, {})
return 0
