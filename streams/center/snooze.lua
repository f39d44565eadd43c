-- Write one user's snoozes if they are still what the change was made from (compare and
-- set; the JSON is built and read by streams.snoozes in Python: no JSON parsing here).
-- KEYS: the user's snooze key (streams.keys.Keys.snooze).
-- ARGV: SHA-1 of the stored value the change was made from ('' = there was none), the new
-- value ('' = delete the key), the ms it expires at (its latest until).
-- Returns 1 when written, 0 when the stored value changed meanwhile (read and try again).
local cur = redis.call('GET', KEYS[1])
if (cur and redis.sha1hex(cur) or '') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
end
return 1
