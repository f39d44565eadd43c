-- Add one notice to the ingest stream, honouring an idempotency key and a caller's own id.
-- KEYS: notices stream, idempotency key, the notice's body key (either of the last two ''
-- or the stream's own name when unused: on a Redis Cluster every KEY is in the stream's
-- slot, so there the body is looked up before, by the caller). ARGV: ttl s, notice id (with the content digest), then field/value pairs.
-- Returns {0, id}: added; {1, id}: the idempotency key's earlier notice; {2, body}: a
-- notice with this id is stored (the caller compares the content). The key and the entry
-- are written together, so a failure never leaves a key that points to a notice that was
-- not added.
local function used(key) return key ~= '' and key ~= KEYS[1] end
if used(KEYS[2]) then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {1, prev} end
end
if used(KEYS[3]) then
  local body = redis.call('GET', KEYS[3])
  if body then return {2, body} end
end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
if used(KEYS[2]) then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1]) end
return {0, ARGV[2]}
