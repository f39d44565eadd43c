-- One user's store (Redis Cluster: every key in the user's slot).
-- KEYS: feed, read set, seq, live channel, archived set. ARGV: feed_max, a '0' or '1' per
-- notice ('1': silenced, stored but not published), then (notice id, the recipients' view
-- of the notice) pairs. Returns the number of feed entries made.
-- It always publishes: on a cluster PUBSUB NUMSUB counts one node's subscribers only.
--#include center/store_user.lua
local idxs, quiet = {}, {}
for j = 1, (#ARGV - 2) / 2 do
  idxs[j] = j
  quiet[j] = string.sub(ARGV[2], j, j) == '1'
end
return store_user(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[1]), 2, idxs, {},
                  true, nil, quiet)
