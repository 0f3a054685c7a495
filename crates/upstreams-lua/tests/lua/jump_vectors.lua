-- SPEC.md item 46 through the Lua module: every row of the rspamd 3.4 jump-hash vectors
-- (`rspamd3_jump.tsv`), offline members taken out through `upstream:fail()`, picks by
-- `get_upstream_by_hash` on lists created with `hash = "rspamd-jump"`.
-- Usage: lua5.4 jump_vectors.lua PATH/rspamd3_jump.tsv   (or embedded with VECTORS set).
-- Exits non-zero (or returns the number of mismatches when embedded) on any difference.

local upstream_list = require "upstream_list"
local path = (arg and arg[1]) or VECTORS
assert(path, "give the vectors' path")

local function split(line)
  local fields = {}
  for field in (line .. "\t"):gmatch("([^\t]*)\t") do fields[#fields + 1] = field end
  return fields
end

local lists, rows, mismatches = {}, 0, 0
local header = true
for line in io.lines(path) do
  if line:sub(1, 1) ~= "#" and line ~= "" then
    if header then
      header = false
    else
      local f = split(line)
      local def, port, offline, key, want = f[1], tonumber(f[2]), f[3], f[4], f[5]
      local id = def .. "\t" .. f[2] .. "\t" .. offline
      local l = lists[id]
      if not l then
        -- One failure in a row takes an upstream out; it stays out for the whole run.
        l = upstream_list.create({hash = "rspamd-jump", max_consecutive_errors = 1,
          revive_time = 3600, dns = false}, def, port)
        if offline ~= "-" then
          for name in offline:gmatch("[^,]+") do
            for _, up in ipairs(l:all_upstreams()) do
              if up:get_name() == name then up:fail() end
            end
          end
        end
        lists[id] = l
      end
      local up = l:get_upstream_by_hash(key)
      local got = up and up:get_name()
      if got ~= want then
        mismatches = mismatches + 1
        if mismatches <= 5 then
          io.stderr:write(string.format("MISMATCH %s down %s key %q: got %s want %s\n",
            def, offline, key, tostring(got), want))
        end
      end
      if up then up:ok() end
      rows = rows + 1
    end
  end
end
assert(rows >= 5987, "vectors read: " .. rows)
print(string.format("%s: rspamd-jump %d/%d vectors match", _VERSION .. (jit and (" " .. jit.version) or ""),
  rows - mismatches, rows))
if arg and arg[0] then
  os.exit(mismatches == 0 and 0 or 1)
end
return mismatches
