-- A user's part of ending a digest on a Redis Cluster (streams.forward.digest_store;
-- digest_done.lua ends it all in one call on a single Redis).
-- KEYS: the user's digests hash, the bucket. ARGV: channel, outcome, ms, next digest id,
-- now ms, margin ms, then the notice ids that leave the bucket.
-- "done": they leave; if the bucket still holds notices (added meanwhile) the next digest
-- is due at `ms` with the next id, else the pending digest is gone (fields and bucket).
-- "retry": they leave, the try counter goes up, the digest is due again at `ms`.
-- "drop" (none was pending at the read), "later" (the read found it not due yet): nothing
-- changes but a leftover bucket with no digest pending, which goes.
-- Returns the ms the due set member is due at, or 0: nothing pending, the member goes.
local hash, bucket, channel, outcome = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local ms, now, margin = tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 7, #ARGV, 1000 do
  redis.call('ZREM', bucket, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if outcome == 'retry' then
  redis.call('HINCRBY', hash, channel .. ':try', 1)
  return ms
elseif outcome == 'done' then
  if redis.call('ZCARD', bucket) > 0 then
    redis.call('HSET', hash, channel, ms, channel .. ':id', ARGV[4])
    redis.call('HDEL', hash, channel .. ':try')
    local keep = ms - now + margin
    redis.call('PEXPIRE', bucket, keep)
    if redis.call('PTTL', hash) < keep then redis.call('PEXPIRE', hash, keep) end
    return ms
  end
  redis.call('HDEL', hash, channel, channel .. ':try', channel .. ':window', channel .. ':id')
  redis.call('DEL', bucket)
  return 0
end
local due = tonumber(redis.call('HGET', hash, channel))
if due then return due end
redis.call('DEL', bucket)
return 0
