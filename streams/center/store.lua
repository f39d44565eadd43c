-- One user's store (Redis Cluster: every key in the user's slot).
-- KEYS: feed, read set, seq, live channel, archived set. ARGV: feed_max, then (notice id,
-- the recipients' view of the notice) pairs. Returns the number of feed entries made.
-- It always publishes: on a cluster PUBSUB NUMSUB counts one node's subscribers only.
--#include center/store_user.lua
local idxs = {}
for j = 1, (#ARGV - 1) / 2 do idxs[j] = j end
return store_user(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[1]), 1, idxs, {},
                  true, nil)
