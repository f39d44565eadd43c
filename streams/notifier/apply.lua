-- Apply a batch of topic events to the state snapshot, skipping any entry at or before the
-- recorded position (so several processes may materialize one topic exactly once).
-- KEYS: state hash, position key[, topic stream]. ARGV: sid, op, id, data (repeated; data
-- '' = keep state)[, maxlen: with the stream key]. Returns the number of entries applied.
-- Once it has applied entries, it trims the stream to about maxlen (products may XADD with
-- no MAXLEN), but only below the position: an entry not applied yet is never trimmed. It
-- reads at most TRIM_STEP entries a call to find where to cut, so a long untrimmed stream
-- shrinks over a few calls. Placeholders: streams.notifier.topics.TRIM_SLACK, TRIM_STEP.
local function parse(sid)
  local a, b = string.match(sid, '^(%d+)-(%d+)$')
  return tonumber(a), tonumber(b)
end
local pms, pseq = -1, -1
local pos = redis.call('GET', KEYS[2])
if pos then pms, pseq = parse(pos) end
local last = false
local applied = 0
local n, maxlen = #ARGV, 0
if KEYS[3] then maxlen, n = tonumber(ARGV[n]), n - 1 end
for i = 1, n, 4 do
  local ms, seq = parse(ARGV[i])
  if ms > pms or (ms == pms and seq > pseq) then
    if ARGV[i + 1] == 'delete' then
      redis.call('HDEL', KEYS[1], ARGV[i + 2])
    elseif ARGV[i + 3] ~= '' then
      redis.call('HSET', KEYS[1], ARGV[i + 2], ARGV[i + 3])
    end
    pms, pseq, last = ms, seq, ARGV[i]
    applied = applied + 1
  end
end
if last then
  redis.call('SET', KEYS[2], last)
  local over = maxlen > 0 and redis.call('XLEN', KEYS[3]) - maxlen or 0
  if over >= {{TRIM_SLACK}} then
    local old = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', math.min(over, {{TRIM_STEP}}))
    local cut = old[#old][1]
    local cms, cseq = parse(cut)
    if cms > pms or (cms == pms and cseq > pseq) then cut = last end
    redis.call('XTRIM', KEYS[3], 'MINID', '~', cut)
  end
end
return applied
