-- A user's part of putting notices into digest buckets on a Redis Cluster
-- (streams.forward.digest_store; digest_add.lua does it all in one call on a single Redis).
-- KEYS[1]: the user's digests hash, KEYS[2...]: the buckets named below.
-- ARGV[1]: now ms, ARGV[2]: margin ms (how long a bucket outlives its due time), then per
-- notice 6 values: its bucket's KEYS index, channel, notice id, window ms, due ms and
-- digest id (what a digest scheduled now would have).
-- Per notice: ZADD it (NX: the first time it fell due), and if the user has no digest
-- pending on that channel schedule one (hash fields `channel`, `channel:window`,
-- `channel:id`). The due set member is the caller's next step (another slot).
-- Returns per notice {due ms of its digest, 1 if this call scheduled it else 0}.
local now, margin = tonumber(ARGV[1]), tonumber(ARGV[2])
local hash = KEYS[1]
local out = {}
for i = 3, #ARGV, 6 do
  local bucket, channel = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  redis.call('ZADD', bucket, 'NX', now, ARGV[i + 2])
  local due, new = tonumber(redis.call('HGET', hash, channel)), 0
  if not due then
    due, new = tonumber(ARGV[i + 4]), 1
    redis.call('HSET', hash, channel, due, channel .. ':window', ARGV[i + 3],
               channel .. ':id', ARGV[i + 5])
  end
  local keep = due - now + margin
  redis.call('PEXPIRE', bucket, keep)
  if redis.call('PTTL', hash) < keep then redis.call('PEXPIRE', hash, keep) end
  out[#out + 1] = {due, new}
end
return out
