-- Included (a function, no KEYS or ARGV of its own) by the notice center's store call
-- (center/store_batch.lua): the batch's forward jobs, written as schedule.lua writes one.
-- `store_jobs(fwd, fresh, claimed)`: `fwd` is one forward partition's header of those
-- streams.forward.store_call_jobs built (the call runs it per header), msgpack [
--   1 arq's job key prefix, 2 arq's result key prefix, 3 the queue,
--   4 the ARGV index before the first job record,
--   5 [[job id, expiry ms, due ms, mode, notice j] per job due now],
--   6 arq's in-progress key prefix, 7 arq's retry key prefix, 8 claim ms,
--   9 the wake channel, 10 the due set, 11 the ARGV index before the first due member,
--   12 [due ms per delayed forward], 13 arq's retry counter ttl s,
--   14 how many jobs due now the headers before this one hold]
-- and ARGV holds, from those indexes, the records (arq's) of the jobs due now and the due
-- set members of the delayed ones. `fresh[j]`: notice j's body is new in this call.
-- A job is written unless it or its result exists: PSETEX arq's job record, ZADD the queue
-- at the due time. Modes: -1: PUBLISH to the wake channel; 1: claimed for the caller
-- (arq's in-progress key and try counter, as the worker's claim sets them) when notice j
-- is new, so it runs in the caller's process at once, queued at due + claim ms as the
-- fallback should the caller die (a re-delivered notice's job is left to the forwarders
-- instead, woken). Delayed forwards: one member each in the due set (pump.lua makes them
-- jobs when due). Appends to `claimed` the indexes (from 1, over every header's jobs due
-- now) of the claimed jobs.
local function store_jobs(fwd, fresh, claimed)
  local job_prefix, result_prefix, queue, base, jobs = fwd[1], fwd[2], fwd[3], fwd[4], fwd[5]
  local progress_prefix, retry_prefix, claim_ms, retry_ttl = fwd[6], fwd[7], fwd[8], fwd[13]
  local due, wake, before = {}, false, fwd[14]
  for i, j in ipairs(jobs) do
    local jid, mode, at = j[1], j[4], j[5]
    -- a new notice's jobs cannot exist yet: the check is for re-delivered ones
    if fresh[at] or redis.call('EXISTS', job_prefix .. jid, result_prefix .. jid) == 0 then
      redis.call('PSETEX', job_prefix .. jid, j[2], ARGV[base + i])
      if mode > 0 and fresh[at] then
        redis.call('SET', progress_prefix .. jid, '1', 'PX', claim_ms)
        redis.call('INCR', retry_prefix .. jid)
        redis.call('EXPIRE', retry_prefix .. jid, retry_ttl)
        claimed[#claimed + 1] = before + i
        due[#due + 1] = j[3] + claim_ms
      else
        wake = true
        due[#due + 1] = j[3]
      end
      due[#due + 1] = jid
    end
  end
  for i = 1, #due, 1000 do
    redis.call('ZADD', queue, unpack(due, i, math.min(i + 999, #due)))
  end
  if wake then redis.call('PUBLISH', fwd[9], '') end
  local later, dbase = fwd[12], fwd[11]
  local zargs = {}
  for i, score in ipairs(later) do
    zargs[#zargs + 1] = score
    zargs[#zargs + 1] = ARGV[dbase + i]
  end
  for i = 1, #zargs, 1000 do
    redis.call('ZADD', fwd[10], unpack(zargs, i, math.min(i + 999, #zargs)))
  end
end
