-- One page of a user's unread notices, newest first.
-- KEYS: feed, read set. ARGV: the highest score to look at ('+inf' or '(seq'), how many,
-- the most feed entries to look at. Returns {go_on, id, seq, id, seq, ...}: go_on is where
-- to go on when the look ran out first, else false.
local feed, readset, top, want = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local out, looked = {false}, 0
while true do
  if looked >= tonumber(ARGV[3]) then
    out[1] = string.sub(top, 2)
    break
  end
  local rows = redis.call('ZREVRANGEBYSCORE', feed, top, '-inf', 'WITHSCORES', 'LIMIT', 0, 200)
  if #rows == 0 then break end
  local ids = {}
  for i = 1, #rows, 2 do ids[#ids + 1] = rows[i] end
  local read = redis.call('ZMSCORE', readset, unpack(ids))
  for i, id in ipairs(ids) do
    if not read[i] then
      out[#out + 1] = id
      out[#out + 1] = rows[2 * i]
      if #out >= 2 * want + 1 then return out end
    end
  end
  looked = looked + #ids
  if #ids < 200 then break end
  top = '(' .. rows[#rows]
end
return out
