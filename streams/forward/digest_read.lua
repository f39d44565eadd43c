-- What the digests a poll took need, in one call (streams.forward.digest): read only.
-- KEYS: none (each digest's keys are in ARGV: one user's, and the notices').
-- ARGV[1]: msgpack [user state hash, notice key prefix, bucket read limit,
-- [[digests hash, channel, bucket, uid, feed, read set]...]].
-- Returns per digest: false when none is pending (no field `channel`), else {due ms, tries,
-- window ms, digest id, the user's record or false, then per notice in the bucket that
-- fell due by the due time (at most the limit): its id, 0 gone / 1 read (or dropped from
-- the feed) / its place in the user's feed + 1 (the seq: unread), and its body when
-- unread (else false)}. The sent marker is not looked at: on a single Redis the end of a
-- digest (digest_done.lua) sets it in the call that gives the digest its next id or
-- clears it, so a read never meets the id of a sent digest.
local a = cmsgpack.unpack(ARGV[1])
local users, notice, limit = a[1], a[2], a[3]
local out = {}
for i, d in ipairs(a[4]) do
  local hash, channel, bucket, uid, feed, read = d[1], d[2], d[3], d[4], d[5], d[6]
  local f = redis.call('HMGET', hash, channel, channel .. ':try', channel .. ':window',
                       channel .. ':id')
  if not f[1] then
    out[i] = false
  else
    local id = f[4] or ''
    local r = {tonumber(f[1]), tonumber(f[2]) or 0, tonumber(f[3]) or 0, id,
               redis.call('HGET', users, uid)}
    local nids = redis.call('ZRANGEBYSCORE', bucket, '-inf', f[1], 'LIMIT', 0, limit)
    for _, nid in ipairs(nids) do
      local body = redis.call('GET', notice .. nid)
      local state = 0
      if body then
        local seq = redis.call('ZSCORE', feed, nid)
        if not seq or redis.call('ZSCORE', read, nid) then
          state, body = 1, false
        else
          state = tonumber(seq) + 1
        end
      end
      r[#r + 1] = nid
      r[#r + 1] = state
      r[#r + 1] = body or false
    end
    out[i] = r
  end
end
return out
