-- Delete an incident's dedup claim only if it still names that notice (a repeat after the
-- resolve may have claimed the key for a new incident). KEYS: the claim. ARGV: notice id.
-- Returns 1 when deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
