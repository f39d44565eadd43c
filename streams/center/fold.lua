-- Fold a dedup repeat into the first notice of its incident. KEYS: notice body, folded set,
-- the incident's claim (its TTL starts again: kept `window` after the last repeat; absent
-- on a Redis Cluster, where it is in another slot: the caller EXPIREs it beside).
-- ARGV: repeat id, last_seen ms, window s. Returns the new body, 0 when the repeat was
-- already folded (a re-delivery), or -1 when the first notice is gone or its incident is
-- resolved (a repeat that was loaded before the resolve: it opens a new incident).
-- The body ends with `created_at` (always set) and optionally `repeat`, `last_seen`:
-- msgspec writes Notice fields in declaration order, so they are the tail of the object,
-- right after `status`, `resolved_at` and `silenced`.
local body = redis.call('GET', KEYS[1])
if not body then return -1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
local head, rep = string.match(body, '^(.-),"repeat":(%d+),"last_seen":%d+}$')
if not head then head, rep = string.match(body, '^(.-),"repeat":(%d+)}$') end
if not head then head = string.match(body, '^(.-),"last_seen":%d+}$') end
if not head then head = string.sub(body, 1, -2) end
-- anchored at the end: a `data` object holding the same words is never at the tail
if string.find(head, ',"status":"resolved","resolved_at":%d+,"created_at":%d+$')
    or string.find(head, ',"status":"resolved","resolved_at":%d+,"silenced":true,"created_at":%d+$')
then
  return -1
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if KEYS[3] then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
local n = (tonumber(rep) or 0) + 1
body = head .. ',"repeat":' .. n .. ',"last_seen":' .. ARGV[2] .. '}'
redis.call('SET', KEYS[1], body, 'KEEPTTL')
return body
