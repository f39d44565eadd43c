-- One forward job, as arq's enqueue_job writes it, without its WATCH/MULTI exchange.
-- KEYS: job key, result key, queue[, wake channel]. ARGV: job record, expiry ms, score
-- (due ms), job id. Returns 1 when scheduled, 0 when the job or its result exists.
-- With a 4th key, PUBLISH to it (the batch's last job when one is due now), scheduled or
-- not: a woken forwarder that finds nothing new just polls once.
if KEYS[4] then redis.call('PUBLISH', KEYS[4], '') end
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
