-- A deleted user's inbox keys, and (ARGV[4] = '1', a single Redis) the bodies only their
-- feed held (with their deliveries, folds and threads: release.lua). KEYS: feed, read set,
-- seq, archived set, migrated marker, layout 1 unread set, snoozes (any further key of the
-- user is deleted too).
-- ARGV: refs prefix, bucket length, notice key prefix, release ('1' | '0').
-- Returns {keys deleted, feed entries}.
--#include center/release.lua
refs.prefix, refs.split, refs.notice = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if ARGV[4] == '1' then
  for _, id in ipairs(ids) do adjust(id, -1, false, false) end
end
return {redis.call('DEL', unpack(KEYS)), #ids}
