-- Take the incidents whose `resolve_after` is due (at most ARGV[2]), leased: each taken
-- member's score moves to now + the lease, so another center skips it, and it comes back
-- should this one die before it resolves (or re-times) the incident.
-- KEYS: incidents_due. ARGV: now ms, limit, lease ms.
-- Returns the flat list member, score (the due ms), ...
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
                       ARGV[2])
local leased = tonumber(ARGV[1]) + tonumber(ARGV[3])
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], 'XX', leased, due[i])
end
return due
