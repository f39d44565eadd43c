-- Included (a function, no KEYS or ARGV of its own) by claim.lua and pump_only.lua.
-- Delayed forwards wait in `Keys.forward_due` (a sorted set: member the msgpack array
-- [nid, uid] or [nid, uid, stage] (streams.forward.schedule.Stage), score the due time in
-- ms), written by the notice center's store call (store_jobs.lua).
-- `pump(queue, due_key, now, prefix, fn, expiry, limit)` turns at most `limit` due ones
-- into arq jobs exactly as schedule.lua writes them (unless the job or its result exists:
-- job id `prefix .. nid .. ':' .. uid [.. ':' .. stage]` as Keys.forward_job spells it,
-- arq's record {t, f = fn, a, k, et}, expiry ms) and drops them. Returns the number of
-- forwards taken.
-- Placeholders (streams.forward.schedule.ARQ_LUA): arq's key prefixes.
local function pump(queue, due_key, now, prefix, fn, expiry, limit)
  local items = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                           limit)
  if #items == 0 then return 0 end
  local pack = cmsgpack.pack
  -- arq's job record {t: nil, f: fn, a: [nid, uid(, stage)], k: {}, et: now} in msgpack;
  -- the member is that msgpack array already
  local head = '\133' .. pack('t') .. '\192' .. pack('f') .. pack(fn) .. pack('a')
  local tail = pack('k') .. '\128' .. pack('et') .. pack(now)
  local members = {}
  for i = 1, #items, 2 do
    local m, score = items[i], items[i + 1]
    local a = cmsgpack.unpack(m)
    local jid = prefix .. a[1] .. ':' .. a[2]
    if a[3] then jid = jid .. ':' .. a[3] end
    if redis.call('EXISTS', '{{JOB}}' .. jid, '{{RESULT}}' .. jid) == 0 then
      redis.call('PSETEX', '{{JOB}}' .. jid, expiry, head .. m .. tail)
      redis.call('ZADD', queue, score, jid)
    end
    members[#members + 1] = m
  end
  redis.call('ZREM', due_key, unpack(members))
  return #members
end
