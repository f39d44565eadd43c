-- A forwarder's poll takes the digests that are due (streams.forward.digest): each taken
-- member's score moves to the end of its lease, so no other forwarder takes it meanwhile
-- and, should this one die, it is due again once the lease is over. A lease ends on a half
-- ms, a due time never does: on a cluster the end of a digest removes its member only if
-- the score is still its lease (digest_due_end.lua), never a due time an add set since.
-- KEYS: the due set. ARGV: now ms, the lease's end (now + lease + 0.5 ms), at most this
-- many. Returns the members (msgpack [uid, channel]).
local lease = tonumber(ARGV[2])
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]), 'LIMIT', 0,
                         tonumber(ARGV[3]))
for _, m in ipairs(items) do
  redis.call('ZADD', KEYS[1], 'XX', lease, m)
end
return items
