-- Counting the bodies stored before `refs` existed, step 2: each bucket's holders become
-- holders beyond the first (a field of 1 or less goes). KEYS: a bucket. Returns nothing.
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local n = tonumber(flat[i + 1]) - 1
  if n > 0 then
    redis.call('HSET', KEYS[1], flat[i], n)
  else
    redis.call('HDEL', KEYS[1], flat[i])
  end
end
