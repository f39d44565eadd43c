-- Move `Keys.users_seen` forward to ARGV[1] (a stream id), never back: a slow center must
-- not make a later one purge a user again who has been created anew since.
-- KEYS: the users-seen key. ARGV: stream id. Returns 1 when moved, 0 when not.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local cm, cs = parse(cur)
  local nm, ns = parse(ARGV[1])
  if nm < cm or (nm == cm and ns <= cs) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
