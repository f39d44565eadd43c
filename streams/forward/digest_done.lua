-- The end of the digests that ended together (streams.forward.digest): one call.
-- KEYS: the due set. ARGV[1]: msgpack [[marker ttl s, deliveries ttl s, margin ms, now ms],
-- [[bucket, digests hash, channel, ARGV index of its due member, [notice ids taken],
-- outcome, ms, next digest id, sent marker or "", [[deliveries key, [record JSON...]]...]]
-- ...]]; ARGV[2...]: the due members (binary: see digest_add.lua).
-- Outcomes: "done": the taken notices leave the bucket, the sent marker is set; what is
-- left (added meanwhile) gets the next digest (due at `ms`, a window from now, with its
-- id), else the pending digest is gone (hash fields, member, bucket). "retry": the taken
-- (dropped) notices leave, the try counter goes up, the digest is due again at `ms`.
-- "drop": nothing pending (a purged user): the member, fields and bucket go.
local h = cmsgpack.unpack(ARGV[1])
local c, digests = h[1], h[2]
local marker_ttl, deliveries_ttl, margin, now = c[1], c[2], c[3], c[4]
for _, d in ipairs(digests) do
  local bucket, hash, channel, member, taken, outcome, ms, next_id, marker =
    d[1], d[2], d[3], ARGV[d[4]], d[5], d[6], d[7], d[8], d[9]
  for _, rec in ipairs(d[10]) do
    redis.call('RPUSH', rec[1], unpack(rec[2]))
    redis.call('EXPIRE', rec[1], deliveries_ttl)
  end
  for i = 1, #taken, 1000 do
    redis.call('ZREM', bucket, unpack(taken, i, math.min(i + 999, #taken)))
  end
  if marker ~= '' then redis.call('SET', marker, '1', 'NX', 'EX', marker_ttl) end
  if outcome == 'retry' then
    redis.call('HINCRBY', hash, channel .. ':try', 1)
    redis.call('ZADD', KEYS[1], ms, member)
  elseif outcome == 'done' and redis.call('ZCARD', bucket) > 0 then
    redis.call('HSET', hash, channel, ms, channel .. ':id', next_id)
    redis.call('HDEL', hash, channel .. ':try')
    redis.call('ZADD', KEYS[1], ms, member)
    local keep = ms - now + margin
    redis.call('PEXPIRE', bucket, keep)
    if redis.call('PTTL', hash) < keep then redis.call('PEXPIRE', hash, keep) end
  else
    redis.call('HDEL', hash, channel, channel .. ':try', channel .. ':window', channel .. ':id')
    redis.call('ZREM', KEYS[1], member)
    redis.call('DEL', bucket)
  end
end
return #digests
