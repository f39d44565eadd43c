-- A deleted user's inbox keys, and (ARGV[4] = '1', a single Redis) the bodies only their
-- feed held (with their deliveries, folds and threads: release.lua). KEYS: feed, read set,
-- seq, archived set, migrated marker, layout 1 unread set, snoozes, pending digests hash
-- (streams.forward.digest); every one is deleted.
-- ARGV: refs prefix, bucket length, notice key prefix, release ('1' | '0'), the user's
-- digest bucket key prefix (`Keys.digest(uid, "")`: a field of the hash names a channel),
-- then the forward partitions' notice key prefixes (`Keys.forward_notice_prefixes`).
-- Returns {keys deleted, feed entries}.
--#include center/release.lua
refs.prefix, refs.split, refs.notice = ARGV[1], tonumber(ARGV[2]), ARGV[3]
refs.fwd = {unpack(ARGV, 6)}
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if ARGV[4] == '1' then
  for _, id in ipairs(ids) do adjust(id, -1, false, false) end
end
-- the digest buckets (their due set members find no pending digest and are dropped)
local buckets = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[8])) do
  buckets = buckets + redis.call('DEL', ARGV[5] .. field)
end
return {redis.call('DEL', unpack(KEYS)) + buckets, #ids}
