-- Included (functions, no KEYS or ARGV of their own): the forward partition of a notice in
-- a script, as streams.keys.Keys.forward_partition computes it: crc32 (zlib's: reflected,
-- polynomial 0xEDB88320) of its id, modulo the partition count. Used where a script finds
-- a notice's forward keys by itself (center/release.lua deletes its deliveries and
-- threads with its body). `forward_prefix(prefixes, nid)`: of `prefixes` (the partitions'
-- notice key prefixes, `ForwardKeys.notice_prefix` in partition order), the one of `nid`.
local crc_table = nil
local function crc32(s)
  if not crc_table then
    crc_table = {}
    for i = 0, 255 do
      local c = i
      for _ = 1, 8 do
        if bit.band(c, 1) == 1 then
          c = bit.bxor(bit.rshift(c, 1), 0xEDB88320)
        else
          c = bit.rshift(c, 1)
        end
      end
      crc_table[i] = c
    end
  end
  local c = -1  -- 0xFFFFFFFF as LuaBitOp's signed 32 bits
  for i = 1, #s do
    c = bit.bxor(bit.rshift(c, 8), crc_table[bit.band(bit.bxor(c, string.byte(s, i)), 255)])
  end
  c = bit.bnot(c)
  if c < 0 then c = c + 4294967296 end
  return c
end

local function forward_prefix(prefixes, nid)
  if #prefixes == 1 then return prefixes[1] end
  return prefixes[crc32(nid) % #prefixes + 1]
end
