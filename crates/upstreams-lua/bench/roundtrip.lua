-- One get_upstream_round_robin() + ok() round trip, in calls per second, against a pure-Lua
-- smooth weighted round-robin (the peer a script would otherwise write) in the same run.
-- Usage: LUA_CPATH="DIR/?.so;;" lua5.4 roundtrip.lua [iterations]
local upstream_list = require "upstream_list"
local n = tonumber(arg and arg[1]) or 2000000

local def = "127.0.0.1:11333:3,127.0.0.2:11333:2,127.0.0.3:11333:1"
local list = upstream_list.create(def)

-- The peer: nginx's smooth weighted round-robin in plain Lua, ok() clears an error count.
local peers = {
  {name = "127.0.0.1:11333", weight = 3, current = 0, errors = 0},
  {name = "127.0.0.2:11333", weight = 2, current = 0, errors = 0},
  {name = "127.0.0.3:11333", weight = 1, current = 0, errors = 0},
}
local function peer_get()
  local best, total = nil, 0
  for i = 1, #peers do
    local p = peers[i]
    p.current = p.current + p.weight
    total = total + p.weight
    if not best or p.current > best.current then best = p end
  end
  best.current = best.current - total
  return best
end
local function peer_ok(p) p.errors = 0 end

local function ours(iterations)
  for _ = 1, iterations do
    local up = list:get_upstream_round_robin()
    up:ok()
  end
end
local function theirs(iterations)
  for _ = 1, iterations do
    peer_ok(peer_get())
  end
end

local function rate(fn)
  fn(math.max(1, math.floor(n / 20))) -- warm up
  collectgarbage()
  local t = os.clock()
  fn(n)
  return n / (os.clock() - t)
end

local version = _VERSION .. (jit and (" " .. jit.version) or "")
local r_ours, r_peer = rate(ours), rate(theirs)
print(string.format("%-28s %12.0f calls/s  (pure-Lua smooth WRR peer: %12.0f calls/s, ratio %.2f)",
  version, r_ours, r_peer, r_ours / r_peer))
