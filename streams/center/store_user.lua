-- Included (a function, no KEYS or ARGV of its own): the per-user store of both store
-- scripts (store.lua, store_batch.lua). For each notice not already in the feed
-- (idempotent on notice id): INCR seq, ZADD feed (a new entry is unread: it is not in the
-- read set); then retention to feed_max (the oldest READ ones first, then the oldest; the
-- rule streams.center.store.choose_trim states); then, if `publish`, PUBLISH each new
-- entry as the live message ['notice', seq, view] (streams.schemas.LiveNotice, msgpack).
-- Notice j is ARGV[base + 2j - 1] (id) and ARGV[base + 2j] (its recipients' view, JSON);
-- `idxs` lists the j's. `pend` (a single Redis; nil on a cluster, where the bodies are in
-- other slots): feed holders gained per notice id of this call, net of the ones its own
-- retention dropped; any other body retention drops is released at once (release.lua).
-- `quiet` (or nil): j -> true for a silenced notice, stored but never published.
-- Returns the number of feed entries made.
--#include center/release.lua
local function store_user(feed, read, seqkey, live, archived, feed_max, base, idxs, fresh,
                          publish, pend, quiet)
  local msgs = {}
  local top, made = 0, 0
  local pack = cmsgpack.pack
  for _, j in ipairs(idxs) do
    local nid = ARGV[base + 2 * j - 1]
    -- a notice whose body this call created cannot be in a feed yet
    if fresh[j] or not redis.call('ZSCORE', feed, nid) then
      top = redis.call('INCR', seqkey)
      redis.call('ZADD', feed, top, nid)
      made = made + 1
      if pend then pend[nid] = pend[nid] + 1 end
      if publish and not (quiet and quiet[j]) then
        msgs[#msgs + 1] = pack({'notice', top, ARGV[base + 2 * j]})
      end
    end
  end
  -- the feed can only exceed feed_max after an insert whose seq (inserts ever) does:
  -- skip the ZCARD otherwise (one call less per recipient of a broadcast)
  local card, need = 0, 0
  if top > feed_max then
    card = redis.call('ZCARD', feed)
    need = card - feed_max
  end
  if need > 0 then
    local victims = redis.call('ZRANGE', read, 0, need - 1)
    local chosen = {}
    for _, id in ipairs(victims) do chosen[id] = true end
    if #victims < need then
      local page = redis.call('ZRANGE', feed, 0, need + #victims - 1)
      for _, id in ipairs(page) do
        if #victims >= need then break end
        if not chosen[id] then victims[#victims + 1] = id end
      end
    end
    for i = 1, #victims, 500 do
      local chunk = {unpack(victims, i, math.min(i + 499, #victims))}
      redis.call('ZREM', feed, unpack(chunk))
      redis.call('ZREM', read, unpack(chunk))
      redis.call('SREM', archived, unpack(chunk))
    end
    if pend then
      for _, id in ipairs(victims) do
        if pend[id] then pend[id] = pend[id] - 1 else adjust(id, -1, false, false) end
      end
    end
  end
  for _, m in ipairs(msgs) do redis.call('PUBLISH', live, m) end
  return made
end
