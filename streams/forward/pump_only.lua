-- The pump alone, for an arq Worker of one's own (streams.forward.pump_due).
-- KEYS and ARGV as claim.lua's (ARGV[1] now; 2 to 4 unused). Returns the forwards taken.
--#include forward/pump.lua
return pump(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]))
