-- The end of the digests that ended together (streams.forward.digest): one call.
-- KEYS: the due set. ARGV[1]: msgpack [[marker ttl s, deliveries ttl s, margin ms, now ms],
-- [[bucket, digests hash, channel, ARGV index of its due member, [notice ids taken],
-- outcome, ms, sent marker or "", [[deliveries key, [record JSON...]]...]]...]];
-- ARGV[2...]: the due members (binary: see digest_add.lua).
-- Outcomes: "done": the taken notices leave the bucket, the sent marker is set; what is
-- left (added meanwhile) gets the next digest a window (`channel:window`) from now, else
-- the pending digest is gone (hash fields, member, bucket). "retry": the taken (dropped) notices leave,
-- the try counter goes up, the digest is due again at `ms`. "drop": nothing to send
-- (no pending digest, a purged user): the member, field and bucket go.
local h = cmsgpack.unpack(ARGV[1])
local c, digests = h[1], h[2]
local marker_ttl, deliveries_ttl, margin, now = c[1], c[2], c[3], c[4]
for _, d in ipairs(digests) do
  local bucket, hash, channel, member, taken, outcome, ms, marker =
    d[1], d[2], d[3], ARGV[d[4]], d[5], d[6], d[7], d[8]
  for _, rec in ipairs(d[9]) do
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
    ms = now + (tonumber(redis.call('HGET', hash, channel .. ':window')) or 60000)
    redis.call('HSET', hash, channel, ms)
    redis.call('HDEL', hash, channel .. ':try')
    redis.call('ZADD', KEYS[1], ms, member)
    redis.call('PEXPIRE', bucket, ms - now + margin)
    if redis.call('PTTL', hash) < ms - now + margin then
      redis.call('PEXPIRE', hash, ms - now + margin)
    end
  else
    redis.call('HDEL', hash, channel, channel .. ':try', channel .. ':window')
    redis.call('ZREM', KEYS[1], member)
    redis.call('DEL', bucket)
  end
end
return #digests
