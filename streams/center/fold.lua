-- Fold a dedup repeat into the first notice. KEYS: notice body, folded set.
-- ARGV: repeat id, last_seen ms, window s. Returns the new body, 0 when the repeat was
-- already folded (a re-delivery), or -1 when the first notice is gone.
-- The body ends with `created_at` (always set) and optionally `repeat`, `last_seen`:
-- msgspec writes Notice fields in declaration order, so they are the tail of the object.
local body = redis.call('GET', KEYS[1])
if not body then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[3])
local head, rep = string.match(body, '^(.-),"repeat":(%d+),"last_seen":%d+}$')
if not head then head, rep = string.match(body, '^(.-),"repeat":(%d+)}$') end
if not head then head = string.match(body, '^(.-),"last_seen":%d+}$') end
if not head then head = string.sub(body, 1, -2) end
local n = (tonumber(rep) or 0) + 1
body = head .. ',"repeat":' .. n .. ',"last_seen":' .. ARGV[2] .. '}'
redis.call('SET', KEYS[1], body, 'KEEPTTL')
return body
