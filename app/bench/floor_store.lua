-- The B7 stored floor (app/bench/bare_http.py): the least a service does that keeps a
-- notice, a feed entry and a job. KEYS: body, feed, seq, job, queue. ARGV: body, id.
-- Returns the feed entry's seq.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, ARGV[2])
redis.call('PSETEX', KEYS[4], 300000, ARGV[2])
redis.call('ZADD', KEYS[5], 0, ARGV[2])
return seq
