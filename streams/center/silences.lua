-- Write the admin silences if no other write came since they were read (compare and set on
-- the version counter, which every write bumps; the JSON is built and read by
-- streams.center.silences in Python: no JSON parsing here).
-- KEYS: silences hash (id -> Silence JSON), version counter.
-- ARGV: the version read ('' = none), now ms (the first version: never one a center may
-- hold from before the counter was gone), the id to write ('' = none), its JSON, then the
-- ids to delete (silences that ended long ago).
-- Returns 1 when written, 0 when the silences changed meanwhile (read and try again).
local v = redis.call('GET', KEYS[2])
if (v or '') ~= ARGV[1] then return 0 end
for i = 5, #ARGV, 500 do
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], ARGV[3], ARGV[4]) end
if v then redis.call('INCR', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[2]) end
return 1
