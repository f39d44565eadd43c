-- Put notices into their users' digest buckets (streams.forward.digest, `Digests.divert`):
-- the forward jobs that started together, one call. KEYS: the due set.
-- ARGV[1]: msgpack [[bucket, digests hash, channel, notice id, ARGV index of its due
-- member, digested marker, window ms, due ms, digest id]...] (due and id: what a digest
-- scheduled now would have); ARGV[2]: now ms; ARGV[3]: marker ttl s; ARGV[4]: margin ms
-- (how long a bucket outlives its due time: its owner, the forwarders, may be down
-- meanwhile); ARGV[5...]: the due members (msgpack themselves: binary, which cmsgpack
-- does not read inside ARGV[1]).
-- Per item: if the marker exists, the notice went into this bucket before (a re-run job):
-- -1. Else mark it, ZADD it (NX: the first time it fell due), and if the user has no
-- digest pending on that channel (no field `channel` in the hash) schedule that one: hash
-- fields `channel` -> due ms, `channel:window` -> window ms, `channel:id` -> digest id,
-- and the due set member at due ms. Returns per item the due ms of its digest, or -1.
local items = cmsgpack.unpack(ARGV[1])
local now, ttl, margin = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i, it in ipairs(items) do
  local bucket, hash, channel, nid, member, marker = it[1], it[2], it[3], it[4], ARGV[it[5]],
    it[6]
  if redis.call('SET', marker, '1', 'NX', 'EX', ttl) then
    redis.call('ZADD', bucket, 'NX', now, nid)
    local due = tonumber(redis.call('HGET', hash, channel))
    if not due then
      due = it[8]
      redis.call('HSET', hash, channel, due, channel .. ':window', it[7], channel .. ':id', it[9])
      redis.call('ZADD', KEYS[1], due, member)
    end
    local keep = due - now + margin
    redis.call('PEXPIRE', bucket, keep)
    if redis.call('PTTL', hash) < keep then redis.call('PEXPIRE', hash, keep) end
    out[i] = due
  else
    out[i] = -1
  end
end
return out
