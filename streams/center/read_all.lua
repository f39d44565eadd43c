-- Mark every notice of a user's feed read, and tell the user's tabs.
-- KEYS: feed, read set, live channel. Returns the number of notices marked.
-- Publishes ['read', {ids, read = true, count = 0}] (streams.schemas.LiveRead, msgpack).
local ids = redis.call('ZDIFF', 2, KEYS[1], KEYS[2])
if #ids == 0 then return 0 end
redis.call('COPY', KEYS[1], KEYS[2], 'REPLACE')
redis.call('PUBLISH', KEYS[3], cmsgpack.pack({'read', {ids = ids, read = true, count = 0}}))
return #ids
