-- A whole batch in one call (a single Redis; the keys span slots, so never on a cluster).
-- KEYS: none (every key comes in the header, built by streams.keys in Python: one module
-- still owns every key name, and packing them as one argument makes a batch cheap).
-- ARGV[1]: msgpack [
--   1 feed_max,
--   2 [body key of notice j...],
--   3 [[feed, read, seq, live, archived, [j...]] per user],
--   4 the forward jobs, a header per forward partition (streams.forward.store_call_jobs;
--     forward/store_jobs.lua) or nil,
--   5 the ARGV index before the first body,
--   6 in a later call for more of the batch's recipients (STORE_CHUNK): [1 or 0 per
--     notice: its body was new] as the first call found it (no bodies then, no forwards),
--   7 in a first call that later ones follow, 1: report those flags,
--   8 [refs prefix, bucket length, notice key prefix, [forward notice key prefix per
--     partition]] (streams.keys): each body's feeds,
--   9 in a first call that later ones follow, [j...]: the notices they store for more
--     users,
--   10 [j...] of the silenced notices (stored, never published) or nil]
-- then (notice id, the recipients' view of the notice) pairs, then the stored JSON of each
-- notice, then what the forward jobs append (forward/store_jobs.lua). Bodies are SET NX
-- once. (Each string a script gets is hashed whole to intern it, so the big ones come as
-- arguments of their own, not inside ARGV[1], which would hash them twice.)
-- Returns {feed entries made per user, indexes of the claimed forward jobs, 1 or 0 per
-- body: it was new (asked for only)}.
--#include center/store_user.lua
--#include forward/store_jobs.lua
local h = cmsgpack.unpack(ARGV[1])
local feed_max, bodies, users, bbase = h[1], h[2], h[3], h[5]
refs.prefix, refs.split, refs.notice, refs.fwd = h[8][1], h[8][2], h[8][3], h[8][4]
local fresh, created, pend = {}, {}, {}
for i, key in ipairs(bodies) do
  fresh[i] = redis.call('SET', key, ARGV[bbase + i], 'NX')
  if fresh[i] then created[ARGV[2 * i]] = true end
end
if h[6] then for j, f in ipairs(h[6]) do fresh[j] = f == 1 end end
for j = 1, math.max(#bodies, h[6] and #h[6] or 0) do pend[ARGV[2 * j]] = 0 end
local new = {}
if h[7] then for i = 1, #bodies do new[i] = fresh[i] and 1 or 0 end end
-- live messages only where someone listens: a SUBSCRIBE to the user's channel (an open
-- SSE stream), or any pattern subscription at all (it might match). A PUBLISH to nobody
-- is a no-op, building its message is not, and most recipients are not online.
local listening = nil
if redis.call('PUBSUB', 'NUMPAT') == 0 then
  listening = {}
  for i = 1, #users, 1000 do
    local chans = {}
    for k = i, math.min(i + 999, #users) do chans[#chans + 1] = users[k][4] end
    local counts = redis.call('PUBSUB', 'NUMSUB', unpack(chans))
    for k = 2, #counts, 2 do listening[counts[k - 1]] = counts[k] > 0 end
  end
end
local quiet = nil
if h[10] then
  quiet = {}
  for _, j in ipairs(h[10]) do quiet[j] = true end
end
local out = {}
for i, u in ipairs(users) do
  out[i] = store_user(u[1], u[2], u[3], u[4], u[5], feed_max, 1, u[6], fresh,
                      listening == nil or listening[u[4]], pend, quiet)
end
-- each body's feed count, once per notice: a body with one feed costs nothing
local later = {}
if h[9] then for _, j in ipairs(h[9]) do later[ARGV[2 * j]] = true end end
for nid, delta in pairs(pend) do
  if delta ~= 0 or created[nid] then adjust(nid, delta, created[nid], later[nid]) end
end
local claimed = {}
if h[4] then for _, fwd in ipairs(h[4]) do store_jobs(fwd, fresh, claimed) end end
return {out, claimed, new}
