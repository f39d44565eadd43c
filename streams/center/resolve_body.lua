-- Write a resolved incident's body back, unless it changed since it was read (a repeat
-- folded into it meanwhile). KEYS: notice body. ARGV: SHA-1 (hex) of the body as read, the
-- new body. Returns 1 when written (its TTL kept), -1 when the body is gone, else the body
-- as it is now (the caller decides again from it).
local body = redis.call('GET', KEYS[1])
if not body then return -1 end
if redis.sha1hex(body) ~= ARGV[1] then return body end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
