-- The B7 stored floor's finish (app/bench/bare_http.py): the attempt recorded, the job
-- gone. KEYS: deliveries, job, queue. ARGV: record, id. Returns 1.
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
