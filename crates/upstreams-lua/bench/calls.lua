-- ns per call of the seed's Lua calls, ours and (inside `rspamadm lua`) rspamd's own
-- binding in the same process: 16 upstreams, 1 000 keys, best of 3 runs of N calls.
-- Usage: LUA_CPATH="DIR/?.so;;" luajit calls.lua [N]   (or inside rspamadm lua, with
-- package.cpath set by the caller and UPSTREAMS_BENCH_N in the environment)
local n = tonumber(arg and arg[1]) or tonumber(os.getenv("UPSTREAMS_BENCH_N")) or 1000000
local ours = require "upstream_list"
local theirs
if rspamd_config then theirs = require "rspamd_upstream_list" end

local hosts = {}
for i = 1, 16 do hosts[i] = "127.0.0." .. i end
local def = table.concat(hosts, ",")
local keys = {}
for i = 1, 1000 do keys[i] = "key-" .. i .. "@example.com" end

local function make(mod)
  local cfg = rspamd_config
  return assert(mod.create(cfg, def, 11333)), assert(mod.create(cfg, "master-slave:" .. def, 11333))
end

local function cases(list, ms)
  return {
    {"get_upstream_by_hash + ok", function(iter)
      for i = 1, iter do list:get_upstream_by_hash(keys[i % 1000 + 1]):ok() end
    end},
    {"get_upstream_round_robin + ok", function(iter)
      for _ = 1, iter do list:get_upstream_round_robin():ok() end
    end},
    {"get_upstream_master_slave + ok", function(iter)
      for _ = 1, iter do ms:get_upstream_master_slave():ok() end
    end},
    {"upstream:fail()", function(iter)
      local up = list:get_upstream_round_robin()
      for _ = 1, iter do up:fail(false, "bench") ; up:ok() end
    end},
    {"upstream:get_addr()", function(iter)
      local up = list:get_upstream_round_robin()
      for _ = 1, iter do up:get_addr() end
    end},
    {"all_upstreams()", function(iter)
      for _ = 1, iter / 20 do list:all_upstreams() end
    end, 20},
  }
end

local function best(fn, scale)
  fn(math.max(1, math.floor(n / 20)))
  local best_ns = math.huge
  for _ = 1, 3 do
    collectgarbage()
    local t = os.clock()
    fn(n)
    local ns = (os.clock() - t) * 1e9 / n * (scale or 1)
    if ns < best_ns then best_ns = ns end
  end
  return best_ns
end

local version = _VERSION .. (jit and (" " .. jit.version) or "")
local mine = cases(make(ours))
local rs = theirs and cases(make(theirs))
print(string.format("# %s, %d calls, best of 3 (ns per call; fail = fail + ok)", version, n))
for i, case in ipairs(mine) do
  local a = best(case[2], case[3])
  if rs then
    local b = best(rs[i][2], rs[i][3])
    print(string.format("%-32s ours %8.1f  rspamd %8.1f  ratio %.2f", case[1], a, b, a / b))
  else
    print(string.format("%-32s ours %8.1f", case[1], a))
  end
end
