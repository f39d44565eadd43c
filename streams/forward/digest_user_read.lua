-- A user's part of reading a due digest on a Redis Cluster (streams.forward.digest_store;
-- digest_read.lua reads it all in one call on a single Redis): read only.
-- KEYS: the user's digests hash, bucket, feed, read set. ARGV: channel, bucket read limit.
-- Returns false when no digest is pending on the channel, else {due ms, tries, window ms,
-- digest id, then per notice in the bucket that fell due by the due time (at most the
-- limit): its id, 0 not in the feed / 1 read / its place in the feed + 1 (unread)}. The
-- bodies (other slots) are the caller's next step.
local f = redis.call('HMGET', KEYS[1], ARGV[1], ARGV[1] .. ':try', ARGV[1] .. ':window',
                     ARGV[1] .. ':id')
if not f[1] then return false end
local r = {tonumber(f[1]), tonumber(f[2]) or 0, tonumber(f[3]) or 0, f[4] or ''}
for _, nid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', f[1], 'LIMIT', 0,
                                tonumber(ARGV[2]))) do
  local seq, state = redis.call('ZSCORE', KEYS[3], nid), 0
  if seq then
    state = redis.call('ZSCORE', KEYS[4], nid) and 1 or tonumber(seq) + 1
  end
  r[#r + 1] = nid
  r[#r + 1] = state
end
return r
