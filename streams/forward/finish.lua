-- arq's finish_job for the jobs that ended in one loop iteration, with their attempt
-- records and sent markers: one call, atomic as arq's MULTI. KEYS: the queue (unused: it
-- names the slot on a Redis Cluster, where every key here shares its tag).
-- ARGV[1]: msgpack [[in-progress prefix, result prefix, retry prefix, job prefix, abort
-- set, queue, marker ttl s, deliveries ttl s], [[job id, finished (0/1), keep result ms,
-- ARGV index of its result or 0, score increment (a retry) or 0, [[deliveries key,
-- [record JSON...], [marker key...][, threads key, [field, ref, ...]]]...]] per job]];
-- ARGV[2...]: the results (arq's msgpack records). A job id of nil: the records and
-- markers alone (the one place both are written). The threads (Keys.threads: who got an
-- incident's firing message, and its ref) are written with their sent markers and live
-- as long as the deliveries. Returns the number of jobs.
local h = cmsgpack.unpack(ARGV[1])
local c, jobs = h[1], h[2]
local progress, result, retry, job, abort, queue = c[1], c[2], c[3], c[4], c[5], c[6]
for _, j in ipairs(jobs) do
  local jid = j[1]  -- nil: records alone
  for _, p in ipairs(j[6]) do
    for _, m in ipairs(p[3]) do redis.call('SET', m, '1', 'NX', 'EX', c[7]) end
    if p[4] then
      redis.call('HSET', p[4], unpack(p[5]))
      redis.call('EXPIRE', p[4], c[8])
    end
    if #p[2] > 0 then
      redis.call('RPUSH', p[1], unpack(p[2]))
      redis.call('EXPIRE', p[1], c[8])
    end
  end
  if not jid then
    -- no job to finish
  elseif j[2] == 1 then
    if j[4] > 0 then redis.call('SET', result .. jid, ARGV[j[4]], 'PX', j[3]) end
    redis.call('DEL', progress .. jid, retry .. jid, job .. jid)
    redis.call('ZREM', abort, jid)
    redis.call('ZREM', queue, jid)
  else
    if j[5] ~= 0 then redis.call('ZINCRBY', queue, j[5], jid) end
    redis.call('DEL', progress .. jid)
  end
end
return #jobs
