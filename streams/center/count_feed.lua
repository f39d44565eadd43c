-- Counting the bodies stored before `refs` existed, step 1: every entry of one feed adds
-- one to its body's field. KEYS: a feed. ARGV: refs prefix, bucket length. Returns nothing.
for _, nid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  redis.call('HINCRBY', ARGV[1] .. string.sub(nid, 1, tonumber(ARGV[2])),
             string.sub(nid, tonumber(ARGV[2]) + 1), 1)
end
