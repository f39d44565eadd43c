-- Read state layout 1 -> 2 for one user: read = feed - unread. The marker makes a second
-- run (a crash midway, two centers) a no-op.
-- KEYS: feed, unread set (layout 1), read set, migrated marker. Returns 1 when migrated now.
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZDIFFSTORE', KEYS[3], 2, KEYS[1], KEYS[2])
  redis.call('DEL', KEYS[2])
else
  redis.call('COPY', KEYS[1], KEYS[3], 'REPLACE')
end
redis.call('SET', KEYS[4], '1', 'EX', 2592000)
return 1
