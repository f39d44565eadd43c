-- A forwarder's poll: pump the due forwards into jobs (pump.lua), read the due job ids
-- (arq's ZRANGEBYSCORE) and claim them as arq's start_jobs does (the in-progress key,
-- SET NX), reading what arq's run_job reads first with its own MULTI (GET job, INCR +
-- EXPIRE retry key).
-- KEYS: queue, due set. ARGV: now ms, in-progress ttl ms, max jobs to claim, queue read
-- limit, then pump's: job id prefix, function, job expiry ms, pump limit.
-- Returns {due ids read, forwards pumped, then per claimed job: id, score, the job record
-- (false when expired), the try number}.
-- Placeholders (streams.forward.schedule.ARQ_LUA): arq's key prefixes, its retry ttl.
--#include forward/pump.lua
local n, limit, now = 0, tonumber(ARGV[3]), tonumber(ARGV[1])
local pumped = pump(KEYS[1], KEYS[2], now, ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]))
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[4]))
local out = {#ids / 2, pumped}
for i = 1, #ids, 2 do
  if n >= limit then break end
  local id, score = ids[i], ids[i + 1]
  if redis.call('SET', '{{IN_PROGRESS}}' .. id, '1', 'PX', ARGV[2], 'NX') then
    out[#out + 1] = id
    out[#out + 1] = score
    out[#out + 1] = redis.call('GET', '{{JOB}}' .. id)
    out[#out + 1] = redis.call('INCR', '{{RETRY}}' .. id)
    redis.call('EXPIRE', '{{RETRY}}' .. id, {{RETRY_TTL_S}})
    n = n + 1
  end
end
return out
