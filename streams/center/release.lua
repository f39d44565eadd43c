-- Included (a function, no KEYS or ARGV of its own): notice bodies are shared by their
-- recipients' feeds and deleted by whoever drops the last feed entry of one, in the same
-- script (the store's retention, purge_user.lua). The count lives in `Keys.refs(nid)`: a
-- field per body held by MORE than one feed, its value the feeds beyond the first (no
-- field: one feed; -1: none yet, while a broadcast's later calls store it).
-- `adjust(nid, delta, created, later)` moves a body's holders by `delta` (`created`: this
-- script made the body, so nothing is counted yet; `later`: more calls of the same batch
-- follow, so a body no feed holds yet stays) and deletes the body with its `:deliveries`,
-- `:folded` and `:threads` (Keys.threads) when none is left; returns 1 when it deleted
-- the body. The including script fills `refs` (prefix, bucket length, notice key prefix,
-- and `fwd`: the forward partitions' notice key prefixes, `Keys.forward_notice_prefixes`,
-- under which the body's deliveries and threads are) from streams.keys.
--#include forward/partition.lua
local refs = {}
local function adjust(nid, delta, created, later)
  local bucket = refs.prefix .. string.sub(nid, 1, refs.split)
  local field = string.sub(nid, refs.split + 1)
  local held = 0
  if not created then
    local v = redis.call('HGET', bucket, field)
    held = (v and tonumber(v) or 0) + 1
  end
  held = held + delta
  if held >= 2 then
    redis.call('HSET', bucket, field, held - 1)
  elseif held == 1 then
    if not created then redis.call('HDEL', bucket, field) end
  elseif later then
    redis.call('HSET', bucket, field, -1)
  else
    if not created then redis.call('HDEL', bucket, field) end
    local body = refs.notice .. nid
    local fwd = forward_prefix(refs.fwd, nid) .. nid
    redis.call('DEL', body, body .. ':folded', fwd .. ':deliveries', fwd .. ':threads')
    return 1
  end
  return 0
end
