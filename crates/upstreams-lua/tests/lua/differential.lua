-- Differential test against the real rspamd (SPEC.md item 48): random lists, keys and
-- operations from a seed drive rspamd's own `rspamd_upstream_list` and our `upstream_list`
-- side by side in one `rspamadm lua` process, and every answer is compared. Where we differ
-- on purpose, `known` below says so, with the SPEC item that decides it; any other
-- difference fails the run.
--
-- Run inside rspamd:  rspamadm lua differential.lua  (with package.cpath holding our LuaJIT
-- build; scripts/e2e-rspamd sets it up). Without rspamd (stock lua5.4 / luajit) it runs our
-- module alone and prints the same digest of our answers, which the runner compares.
--
-- Environment: DIFF_SEED (default 1), DIFF_LISTS (default 120).

io.stdout:setvbuf("no")
local ours = require "upstream_list"
local has_rspamd, theirs = pcall(require, "rspamd_upstream_list")
if not has_rspamd or type(rspamd_config) ~= "userdata" then theirs = nil end

local seed = tonumber(os.getenv("DIFF_SEED") or "1")
local nlists = tonumber(os.getenv("DIFF_LISTS") or "120")

-- A small LCG, the same on Lua 5.1 (doubles) and 5.4 (integers): 31-bit state.
local state = seed % 2147483647
if state == 0 then state = 1 end
local function rand(n)
  state = (state * 16807) % 2147483647
  return state % n
end

local function pick(t) return t[rand(#t) + 1] end

-- One entry: IPv4 or bracketed IPv6, an optional port and weight; now and then a bad one.
local function entry()
  local r = rand(100)
  if r < 3 then
    return pick({"10.0.0.1:99999", "10.0.0.1:abc", "[::1", "10.0.0.1:80:1:2", "bogus:1.2.3.4"})
  end
  local host
  if rand(5) == 0 then
    host = string.format("[2001:db8::%x]", rand(65535) + 1)
  else
    host = string.format("10.%d.%d.%d", rand(256), rand(256), rand(254) + 1)
  end
  local form = rand(3)
  if form == 0 then return host end
  local port = rand(60000) + 1024
  if form == 1 then return host .. ":" .. port end
  return host .. ":" .. port .. ":" .. (rand(9) + 1)
end

local prefixes = {"", "", "round-robin:", "master-slave:", "hash:", "random:"}

local function definition()
  local n = rand(8) + 1
  local parts = {}
  for i = 1, n do parts[i] = entry() end
  local seps = {",", ";", " "}
  local text = parts[1]
  for i = 2, n do text = text .. pick(seps) .. parts[i] end
  return pick(prefixes) .. text
end

-- Known differences: a function of the compared answers, the SPEC item, and why.
-- The weights (priorities) written in a definition, in order (0 when none is written).
local function weights(def)
  local body = def:gsub("^[%a%-]+:(%D)", "%1")
  local out = {}
  for e in body:gmatch("[^,; ]+") do
    local rest = e:match("^%[.-%](.*)$") or e:match("^[^:]*(.*)$")
    local w = rest:match("^:%d+:(%d+)$")
    out[#out + 1] = tonumber(w or "0")
  end
  return out
end

-- Whether two or more selectable members share the top priority (`down`: indices out).
local function top_priority_shared(def, down)
  local out = {}
  for _, j in ipairs(down or {}) do out[j] = true end
  local max, count = -1, 0
  for i, w in ipairs(weights(def)) do
    if not out[i] then
      if w > max then max, count = w, 1 elseif w == max then count = count + 1 end
    end
  end
  return count > 1
end

local bad_tokens = {":99999", ":abc", "[::1;", "[::1,", "[::1 ", ":80:1:2", "bogus:"}
local function has_bad_entry(def)
  for _, t in ipairs(bad_tokens) do
    if def:find(t, 1, true) or def:sub(-4) == "[::1" then return true end
  end
  return false
end

local known = {
  {
    item = "SPEC 1-3 (strict parsing)",
    why = "a bad entry is an error naming it; rspamd 3.4 logs it and keeps the rest, and wraps ports",
    test = function(what, def) return what == "parse" and has_bad_entry(def) end,
  },
  {
    item = "SPEC 14 (a hash: prefix without a key)",
    why = "the prefix wins over the method; with no key both pick at random",
    test = function(what, def) return what:sub(1, 12) == "master-slave" and def:sub(1, 5) == "hash:" end,
  },
  {
    item = "SPEC 19-20 (master-slave ties)",
    why = "ties in the top priority go to configuration order; rspamd rotates among them",
    test = function(what, def, down)
      local master_slave = what:sub(1, 12) == "master-slave"
        or (what:sub(1, 4) == "hash" and def:sub(1, 13) == "master-slave:")
      return master_slave and top_priority_shared(def, down)
    end,
  },
  {
    item = "SPEC 21 (random is random)",
    why = "a random: prefix wins over every method (SPEC 14) and random picks are not repeatable",
    test = function(what, def) return what ~= "parse" and def:sub(1, 7) == "random:" end,
  },
  {
    item = "SPEC 16 (smooth round-robin)",
    why = "nginx's smooth weighted round-robin; rspamd 3.4 serves a weight-3 member 3 times in a row",
    test = function(what, def)
      return what == "round-robin" or (what ~= "parse" and def:sub(1, 12) == "round-robin:")
    end,
  },
}

local function explained(what, def, down)
  for _, k in ipairs(known) do
    if k.test(what, def, down) then return k end
  end
end

-- A digest of our repeatable answers (random picks left out), compared across interpreters.
local digest = {}
local function note(line, def)
  -- A hash: prefix wins over the keyless methods too, and a hash without a key is random.
  local random = def:sub(1, 7) == "random:"
    or (def:sub(1, 5) == "hash:" and (line:sub(1, 12) == "master-slave" or line:sub(1, 11) == "round-robin"))
  if not random then digest[#digest + 1] = def .. " | " .. line end
end

local checked, differences, allowed = 0, 0, {}
local function compare(what, def, mine, real, down)
  -- `real` is nil where rspamd's list is missing or read differently (compared as "parse").
  if real == nil then return end
  checked = checked + 1
  if not theirs or mine == real then return end
  local k = explained(what, def, down)
  if k then
    allowed[k.item] = (allowed[k.item] or 0) + 1
    return
  end
  differences = differences + 1
  if differences <= 10 then
    io.stderr:write(string.format("DIFFERENCE %s %q:\n  ours   %s\n  rspamd %s\n", what, def, mine, real))
  end
end

local function describe(list)
  if not list then return "nil" end
  local out = {}
  for _, up in ipairs(list:all_upstreams()) do
    out[#out + 1] = up:get_name() .. "/" .. tostring(up:get_port())
  end
  return table.concat(out, " ")
end

local function our_create(def)
  local l = ours.create({hash = "rspamd-jump", dns = false}, def, 11333)
  return l
end

local function their_create(def)
  if not theirs then return nil end
  return theirs.create(rspamd_config, def, 11333)
end

-- Phase 1: parsing, healthy hash picks, master-slave, round-robin shares.
local pairs_ = {}
local keys = {}
for i = 1, 30 do keys[i] = string.format("key-%d-%d", seed, rand(1000000)) end

for i = 1, nlists do
  local def = definition()
  local mine, real = our_create(def), their_create(def)
  local a, b = describe(mine), describe(real)
  note("parse " .. a, def)
  compare("parse", def, a, b)
  -- Our side runs on every list we accept (the same lists whichever interpreter runs us);
  -- rspamd's joins where it read the list the same way.
  if real and a ~= b then real = nil end
  if mine then
    local ha, hb = {}, {}
    for _, key in ipairs(keys) do
      local up = mine:get_upstream_by_hash(key)
      ha[#ha + 1] = up:get_name()
      up:ok()
      if real then
        local u = real:get_upstream_by_hash(key)
        hb[#hb + 1] = u:get_name()
        u:ok()
      end
    end
    note("hash " .. table.concat(ha, " "), def)
    compare("hash", def, table.concat(ha, " "), real and table.concat(hb, " "))
    local ma = mine:get_upstream_master_slave()
    local mb = real and real:get_upstream_master_slave()
    note("master-slave " .. ma:get_name(), def)
    compare("master-slave", def, ma:get_name(), mb and mb:get_name())
    ma:ok()
    if mb then mb:ok() end
    local ra, rb = {}, {}
    for _ = 1, 12 do
      local u = mine:get_upstream_round_robin()
      ra[#ra + 1] = u:get_name()
      u:ok()
      if real then
        local v = real:get_upstream_round_robin()
        rb[#rb + 1] = v:get_name()
        v:ok()
      end
    end
    note("round-robin " .. table.concat(ra, " "), def)
    compare("round-robin", def, table.concat(ra, " "), real and table.concat(rb, " "))
    if #mine:all_upstreams() >= 2 then
      pairs_[#pairs_ + 1] = {def = def, mine = mine, real = real}
    end
  end
end

-- Phase 2: take up to n-1 members of each list out through fail(): five failures now and
-- one more after rspamd's 10 s error window (its defaults: 4 errors / 10 s). Watchers
-- record the failure and offline events with their error counts.
local function watch(list, log)
  for _, event in ipairs({"failure", "offline"}) do
    list:add_watcher(event, function(ev, up, errors)
      log[#log + 1] = string.format("%s %s %s", tostring(ev), up:get_name(), tostring(errors))
    end)
  end
end

for _, p in ipairs(pairs_) do
  p.log_mine, p.log_real = {}, {}
  watch(p.mine, p.log_mine)
  if p.real then watch(p.real, p.log_real) end
  local n = #p.mine:all_upstreams()
  local down = {}
  for j = 1, rand(n - 1) + 1 do
    if j < n then down[#down + 1] = j end
  end
  p.down = down
  for _, j in ipairs(down) do
    for _ = 1, 5 do
      p.mine:all_upstreams()[j]:fail()
      if p.real then p.real:all_upstreams()[j]:fail() end
    end
  end
end

-- rspamd's clock is wall time, and so is ours here: wait out the error window (also when
-- ours runs alone, so that it answers exactly as it does beside rspamd).
do
  local until_ = os.time() + 11
  while os.time() < until_ do end
end

local events = 0
for _, p in ipairs(pairs_) do
  for _, j in ipairs(p.down) do
    p.mine:all_upstreams()[j]:fail()
    if p.real then p.real:all_upstreams()[j]:fail() end
  end
  local ha, hb = {}, {}
  for _, key in ipairs(keys) do
    local up = p.mine:get_upstream_by_hash(key)
    ha[#ha + 1] = up:get_name()
    up:ok()
    if p.real then
      local u = p.real:get_upstream_by_hash(key)
      hb[#hb + 1] = u:get_name()
      u:ok()
    end
  end
  note("hash-down " .. table.concat(ha, " "), p.def)
  compare("hash-down", p.def, table.concat(ha, " "), p.real and table.concat(hb, " "), p.down)
  local ma = p.mine:get_upstream_master_slave()
  local mb = p.real and p.real:get_upstream_master_slave()
  compare("master-slave-down", p.def, ma:get_name(), mb and mb:get_name(), p.down)
  note("master-slave-down " .. ma:get_name(), p.def)
  ma:ok()
  if mb then mb:ok() end
  -- Events: the failures and the offline transitions, in order, with error counts.
  note("events " .. table.concat(p.log_mine, "; "), p.def)
  events = events + #p.log_mine
  compare("events", p.def, table.concat(p.log_mine, "; "), p.real and table.concat(p.log_real, "; "))
end

-- A digest of our answers: the same on every interpreter.
local h = 5381
local dump = os.getenv("DIFF_DUMP")
local dump_file = dump and io.open(dump, "w")
for _, line in ipairs(digest) do
  if dump_file then dump_file:write(line, "\n") end
  for c = 1, #line do h = (h * 33 + line:byte(c)) % 4294967296 end
end
if dump_file then dump_file:close() end
print(string.format("digest %08x lines %d", h, #digest))
if theirs then
  local list = {}
  for item, count in pairs(allowed) do list[#list + 1] = string.format("%s: %d", item, count) end
  table.sort(list)
  print(string.format("compared %d answers (%d watcher events) with rspamd, %d unexplained differences; known: %s",
    checked, events, differences, #list > 0 and table.concat(list, ", ") or "none"))
else
  print(string.format("ours alone: %d repeatable answers", #digest))
end
if arg and arg[0] and differences > 0 then os.exit(1) end
return differences
