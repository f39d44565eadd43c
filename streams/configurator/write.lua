-- Change one alert setting if it is still what the change was made from (compare and set).
-- KEYS: settings hash, ids zset, topic stream, old-name zset, new-name zset, topic set.
-- ARGV: id, SHA-1 of the stored JSON the change was made from ('' = must not exist),
--       new JSON ('' = delete), maxlen, then the topic entry's flat fields as pairs.
-- Comparing a digest of the whole stored value (not a decoded `version`) needs no JSON
-- parsing in Lua, so any setting msgspec accepted can be changed (cjson has other limits).
-- Returns {1, stream id} on success, {0} when the stored value changed, {-1} when it is gone.
-- Placeholder: TOPIC, the settings topic (streams.keys.SETTINGS_TOPIC).
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if cur then return {0} end
elseif not cur then
  return {-1}
elseif redis.sha1hex(cur) ~= ARGV[2] then
  return {0}
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  if KEYS[4] ~= KEYS[5] then redis.call('ZREM', KEYS[4], ARGV[1]) end
  redis.call('ZADD', KEYS[5], 0, ARGV[1])
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local sid = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
-- the topic's name into the topic set: the hubs follow what is in it
if KEYS[6] then redis.call('SADD', KEYS[6], '{{TOPIC}}') end
return {1, sid}
