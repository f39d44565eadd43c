-- The due set's part of ending digests on a Redis Cluster (streams.forward.digest_store),
-- after each user's part (digest_user_end.lua) said when the digest is due next.
-- KEYS: the due set. ARGV: per digest 3 values: its member, ms, the score its claim gave
-- it (the lease's end). ms > 0: the member is due at ms. 0: nothing pending, the member
-- goes, unless its score is no longer that lease's: an add scheduled a new digest since
-- (digest_user_add.lua, then ZADD at its due time), and it stays for that one.
-- Returns how many members went.
local gone = 0
for i = 1, #ARGV, 3 do
  local ms = tonumber(ARGV[i + 1])
  if ms > 0 then
    redis.call('ZADD', KEYS[1], ms, ARGV[i])
  elseif tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[i + 2]) then
    gone = gone + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return gone
