-- Mark one notice of a user's feed read, unread or archived, and tell the user's tabs.
-- KEYS: feed, read set, archived set, live channel. ARGV: notice id, action
-- (read | unread | archive). Returns {found (0|1), read (0|1), unread count, archived (0|1)}.
-- A change publishes the live message ['read', {ids, read, count, archived?}]
-- (streams.schemas.LiveRead, msgpack).
local feed, readset, archived, live = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local nid, action = ARGV[1], ARGV[2]
local seq = redis.call('ZSCORE', feed, nid)
if not seq then return {0, 0, 0, 0} end
local changed = 0
local arch = 0
if action == 'unread' then
  changed = redis.call('ZREM', readset, nid)
  redis.call('SREM', archived, nid)
else
  changed = redis.call('ZADD', readset, seq, nid)
  if action == 'archive' then
    changed = changed + redis.call('SADD', archived, nid)
    arch = 1
  end
end
local count = redis.call('ZCARD', feed) - redis.call('ZCARD', readset)
local read = (action == 'unread') and 0 or 1
if changed > 0 then
  local data = {ids = {nid}, read = read == 1, count = count}
  if arch == 1 then data.archived = true end
  redis.call('PUBLISH', live, cmsgpack.pack({'read', data}))
end
return {1, read, count, arch}
