-- The rspamd_upstream_list API, exercised function by function.
-- Runs under a real lua5.4 / luajit (LUA_CPATH pointing at the built module) and inside
-- `cargo test` through the embedded registration. Exits non-zero (or returns the number of
-- failures when embedded) if anything fails.

local upstream_list = require "upstream_list"
local rspamd_upstream_list = require "rspamd_upstream_list"

local passed, failed = 0, 0
local function test(name, fn)
  local ok, err = pcall(fn)
  if ok then
    passed = passed + 1
  else
    failed = failed + 1
    io.stderr:write("FAIL ", name, ": ", tostring(err), "\n")
  end
end

local function eq(got, want, what)
  if got ~= want then
    error(string.format("%s: got %s, want %s", what or "value", tostring(got), tostring(want)), 2)
  end
end

local function raises(fn, pattern)
  local ok, err = pcall(fn)
  if ok then error("expected an error matching " .. pattern, 2) end
  if not string.find(tostring(err), pattern, 1, true) then
    error(string.format("error %q does not contain %q", tostring(err), pattern), 2)
  end
end

-- Calls `poll` until it returns true, for at most `seconds` of wall time (Lua has no sleep;
-- os.time has 1 s resolution, so the bound is coarse but wall-clock).
local function eventually(seconds, poll)
  local deadline = os.time() + seconds + 1
  while os.time() <= deadline do
    if poll() then return true end
  end
  return false
end

test("both module names load the same API", function()
  eq(type(upstream_list.create), "function", "create")
  eq(type(rspamd_upstream_list.create), "function", "rspamd create")
end)

test("create: every argument form", function()
  local forms = {
    upstream_list.create("127.0.0.1,127.0.0.2"),
    upstream_list.create("127.0.0.1,127.0.0.2", 11333),
    upstream_list.create("127.0.0.1,127.0.0.2", "11333"),
    upstream_list.create(nil, "127.0.0.1,127.0.0.2", 11333),
    upstream_list.create({max_errors = 2}, "127.0.0.1,127.0.0.2", 11333),
    upstream_list.create({"127.0.0.1", "127.0.0.2"}, 11333),
    upstream_list.create({max_errors = 2}, {"127.0.0.1", "127.0.0.2"}, 11333),
  }
  eq(#forms, 7, "lists created")
  for i, l in ipairs(forms) do
    eq(#l:all_upstreams(), 2, "form " .. i .. " upstreams")
  end
  eq(forms[1]:all_upstreams()[1]:get_port(), 0, "default port 0")
  eq(forms[2]:all_upstreams()[1]:get_port(), 11333, "default port")
  eq(forms[3]:all_upstreams()[2]:get_port(), 11333, "numeric string port")
end)

test("create: bad definitions return nil and a message", function()
  local l, err = upstream_list.create("127.0.0.1, foo:99999", 11333)
  eq(l, nil, "list")
  eq(err, 'entry 2 "foo:99999" at byte 11: port out of range (1..=65535)', "message")
  l, err = upstream_list.create("")
  eq(l, nil, "empty list")
  eq(err, "empty upstream list definition", "empty message")
end)

test("create: misuse raises", function()
  raises(function() upstream_list.create(123) end, "invalid arguments")
  raises(function() upstream_list.create() end, "invalid arguments")
  raises(function() upstream_list.create({bogus = 1}, "127.0.0.1") end, 'unknown cfg option "bogus"')
  raises(function() upstream_list.create({max_errors = "x"}, "127.0.0.1") end, "cfg.max_errors must be a finite number")
  raises(function() upstream_list.create({revive_jitter = 2}, "127.0.0.1") end, "revive_jitter")
  raises(function() upstream_list.create({hash = "nope"}, "127.0.0.1") end, "unknown hash mode")
  raises(function() upstream_list.create("127.0.0.1", 70000) end, "out of range")
  raises(function() upstream_list.create("127.0.0.1", {}) end, "default port must be a number")
  raises(function() upstream_list.create({}, {"127.0.0.1", 5}) end, "definition table holds a number")
end)

test("get_upstream_by_hash: rspamd's golden picks", function()
  local l = upstream_list.create("127.0.0.1,127.0.0.2,127.0.0.3", 11333)
  local want = {hello = "127.0.0.2", test = "127.0.0.3", ["user@example.com"] = "127.0.0.3",
    ["key-1"] = "127.0.0.3", ["key-2"] = "127.0.0.1"}
  for key, name in pairs(want) do
    eq(l:get_upstream_by_hash(key):get_name(), name, key)
  end
  eq(l:get_upstream_by_hash(42):get_name(), l:get_upstream_by_hash("42"):get_name(), "number key")
  raises(function() l:get_upstream_by_hash({}) end, "key must be a string or a number, got table")
  raises(function() l:get_upstream_by_hash() end, "got nil")
end)

test("get_upstream_by_hash: cfg hash = balanced", function()
  local l = upstream_list.create({hash = "balanced"}, "127.0.0.1,127.0.0.2,127.0.0.3", 11333)
  local seen = {}
  for i = 1, 300 do
    seen[l:get_upstream_by_hash("k" .. i):get_name()] = true
  end
  eq(seen["127.0.0.1"] and seen["127.0.0.2"] and seen["127.0.0.3"], true, "all three used")
  eq(l:get_upstream_by_hash("hello"):get_name(), l:get_upstream_by_hash("hello"):get_name(), "stable")
end)

test("get_upstream_round_robin: smooth weighted", function()
  local l = upstream_list.create("127.0.0.1:1:5,127.0.0.2:1:1,127.0.0.3:1:1")
  local seq = {}
  for i = 1, 7 do
    local up = l:get_upstream_round_robin()
    seq[i] = string.sub(up:get_name(), 9, 9)
    up:ok()
  end
  eq(table.concat(seq), "1121311", "sequence")
end)

test("get_upstream_master_slave and the prefix", function()
  local l = upstream_list.create("master-slave:127.0.0.1,127.0.0.2")
  for _ = 1, 3 do eq(l:get_upstream_master_slave():get_name(), "127.0.0.1", "master") end
  eq(l:get_upstream_round_robin():get_name(), "127.0.0.1", "prefix wins over the call")
  local eq_prio = upstream_list.create("127.0.0.1,127.0.0.2,127.0.0.3")
  for _ = 1, 3 do eq(eq_prio:get_upstream_master_slave():get_name(), "127.0.0.1", "config order") end
end)

test("get_upstream_except", function()
  local l = upstream_list.create("127.0.0.1,127.0.0.2")
  local first = l:get_upstream_round_robin()
  for _ = 1, 4 do
    eq(l:get_upstream_except(first):get_name() ~= first:get_name(), true, "another one")
    eq(l:get_upstream_except(first, "some-key"):get_name() ~= first:get_name(), true, "keyed")
  end
end)

test("all_upstreams: configuration order, a view", function()
  local l = upstream_list.create("10.0.0.3,10.0.0.1,[::1]:53,/run/x.sock", 11333)
  local all = l:all_upstreams()
  eq(#all, 4, "count")
  eq(all[1]:get_name(), "10.0.0.3", "first")
  eq(all[3]:get_name(), "::1", "v6 name")
  eq(all[4]:get_name(), "/run/x.sock", "socket")
  all = nil
  collectgarbage()
  local names = {}
  for i = 1, 4 do names[l:get_upstream_round_robin():get_name()] = true end
  eq(names["10.0.0.3"] and names["10.0.0.1"] and names["::1"] and names["/run/x.sock"], true, "still all selectable")
end)

test("upstream: name, port, address object", function()
  local l = upstream_list.create("127.0.0.1:8080,[::1]:53,/run/x.sock", 11333)
  local all = l:all_upstreams()
  local v4, v6, sock = all[1], all[2], all[3]
  eq(v4:get_name(), "127.0.0.1:8080", "name")
  eq(v4:get_port(), 8080, "port")
  local a = v4:get_addr()
  eq(tostring(a), "127.0.0.1", "tostring(addr)")
  eq(a:to_string(), "127.0.0.1", "to_string()")
  eq(a:to_string(true), "127.0.0.1:8080", "to_string(true)")
  eq(a:get_port(), 8080, "addr port")
  eq(a:get_version(), 4, "version 4")
  eq(a:is_local(), true, "loopback is local")
  local b = v6:get_addr()
  eq(tostring(b), "::1", "v6 tostring")
  eq(b:to_string(true), "[::1]:53", "v6 with port")
  eq(b:get_version(), 6, "version 6")
  eq(tostring(sock:get_addr()), "/run/x.sock", "socket address")
  eq(upstream_list.create("10.1.2.3"):all_upstreams()[1]:get_addr():is_local(), false, "not local")
  eq(upstream_list.create({dns = false}, "pending.example"):all_upstreams()[1]:get_addr(), nil, "pending: nil")
end)

test("create resolves names right away (hosts file: localhost)", function()
  local l = upstream_list.create("localhost:6379")
  local up = l:get_upstream_round_robin()
  eq(up ~= nil, true, "localhost is selectable at once")
  local a = up:get_addr()
  eq(a:get_port(), 6379, "port")
  eq(a:is_local(), true, "loopback")
  raises(function() upstream_list.create({dns = "not a server"}, "x.example") end, "cfg.dns")
  raises(function() upstream_list.create({dns = 5}, "x.example") end, "cfg.dns must be a string or false")
end)

test("upstream: __tostring and __eq", function()
  local l = upstream_list.create("127.0.0.1,127.0.0.2")
  local a1 = l:get_upstream_master_slave()
  local a2 = l:all_upstreams()[1]
  local b = l:all_upstreams()[2]
  eq(tostring(a1), "127.0.0.1", "tostring")
  eq(a1 == a2, true, "two wrappers of one upstream")
  eq(a1 == b, false, "different upstreams")
  eq(string.find(tostring(l), "127.0.0.1,127.0.0.2", 1, true) ~= nil, true, "tostring(list)")
end)

test("fail and ok: every argument form, counted without cfg", function()
  local l = upstream_list.create("127.0.0.1,127.0.0.2")
  local errors = {}
  l:add_watcher("failure", function(what, up, cur) errors[#errors + 1] = cur end)
  local up = l:all_upstreams()[1]
  up:fail()
  up:fail(true)
  up:fail(true, "connect refused")
  up:fail(false, "bad reply")
  up:fail("timeout")
  eq(table.concat(errors, " "), "1 2 3 4 5", "failure counts")
  raises(function() up:fail({}) end, "expected a boolean or a reason string, got table")
  raises(function() up:fail(true, {}) end, "reason must be a string")
  up:ok()
  up:fail()
  eq(errors[#errors], 1, "ok() cleared the window")
end)

test("add_watcher: real offline and online cycle", function()
  local cfg = {max_consecutive_errors = 2, revive_time = 0.2, revive_jitter = 0}
  local l = upstream_list.create(cfg, "127.0.0.1,127.0.0.2")
  local log = {}
  l:add_watcher({"failure", "offline", "online"}, function(what, up, cur)
    log[#log + 1] = string.format("%s %s %d", what, up:get_name(), cur)
  end)
  local successes = 0
  l:add_watcher("success", function(what, up, cur)
    eq(what, "success", "event name")
    eq(cur, 0, "errors after ok")
    successes = successes + 1
  end)
  local up = l:all_upstreams()[1]
  up:fail("first")
  up:fail("second")
  eq(table.concat(log, ","), "failure 127.0.0.1 1,failure 127.0.0.1 2,offline 127.0.0.1 2", "going offline")
  for _ = 1, 4 do
    local p = l:get_upstream_round_robin()
    eq(p:get_name(), "127.0.0.2", "only the other one while offline")
    p:ok()
  end
  eq(successes, 4, "success on every ok")
  local revived = eventually(3, function()
    local p = l:get_upstream_round_robin()
    p:ok()
    return p:get_name() == "127.0.0.1"
  end)
  eq(revived, true, "picked again after revive_time")
  eq(log[#log], "online 127.0.0.1 0", "revived")
  eq(#log, 4, "one online event")
end)

test("add_watcher: misuse raises, a failing callback is swallowed", function()
  local l = upstream_list.create("127.0.0.1,127.0.0.2")
  raises(function() l:add_watcher("sucess", function() end) end, 'unknown event "sucess"')
  raises(function() l:add_watcher({"success", 3}, function() end) end, "event names must be strings")
  raises(function() l:add_watcher("success", "not a function") end, "callback must be a function")
  raises(function() l:add_watcher(5, function() end) end, "invalid arguments")
  local after = 0
  l:add_watcher("success", function() error("watcher bug") end)
  l:add_watcher("success", function() after = after + 1 end)
  local up = l:get_upstream_round_robin()
  up:ok()
  eq(after, 1, "later watchers still run")
  eq(l:get_upstream_round_robin() ~= nil, true, "list still works")
end)

test("a watcher may call back into the list", function()
  local l = upstream_list.create("127.0.0.1,127.0.0.2")
  local picked
  l:add_watcher("failure", function(what, up)
    picked = l:get_upstream_except(up):get_name()
  end)
  l:all_upstreams()[1]:fail()
  eq(picked, "127.0.0.2", "re-entrant pick")
end)

test("methods on the wrong object raise", function()
  local l = upstream_list.create("127.0.0.1")
  local up = l:get_upstream_round_robin()
  raises(function() l.get_upstream_round_robin(up) end, "bad argument `self` to `LuaList.get_upstream_round_robin`")
  raises(function() up.get_name(l) end, "bad argument `self` to `LuaUpstream.get_name`")
  raises(function() l.get_upstream_round_robin(nil) end, "bad argument `self`")
  raises(function() up:get_addr().get_port(up) end, "bad argument `self` to `LuaAddr.get_port`")
end)

test("dropped wrappers release their picks", function()
  local l = upstream_list.create("p2c:127.0.0.1,127.0.0.2")
  for _ = 1, 1000 do
    l:get_upstream_round_robin() -- never ok'd: released by the garbage collector
  end
  collectgarbage()
  collectgarbage()
  local counts = {}
  for _ = 1, 1000 do
    local up = l:get_upstream_round_robin()
    counts[up:get_name()] = (counts[up:get_name()] or 0) + 1
    up:ok()
  end
  -- With leaked in-flight counts p2c would starve one side; both stay in use.
  eq((counts["127.0.0.1"] or 0) > 100 and (counts["127.0.0.2"] or 0) > 100, true, "both used")
end)

test("create({}) is an empty list whose pickers answer nil (rspamd)", function()
  local l = upstream_list.create({})
  eq(type(l), "userdata", "a list")
  eq(#l:all_upstreams(), 0, "no upstreams")
  eq(l:get_upstream_by_hash("k"), nil, "hash")
  eq(l:get_upstream_round_robin(), nil, "round-robin")
  eq(l:get_upstream_master_slave(), nil, "master-slave")
end)

test("a random: list balances by power of two choices (rspamd 4.x, SPEC 47)", function()
  local l = upstream_list.create("random:127.0.0.1,127.0.0.2")
  -- Picks held in flight: least-loaded-of-two never lets one upstream get two ahead (plain
  -- random would within a few picks), whichever method asks.
  local held, count = {}, {["127.0.0.1"] = 0, ["127.0.0.2"] = 0}
  for i = 1, 40 do
    local up = (i % 3 == 0) and l:get_upstream_by_hash("k" .. i)
      or (i % 3 == 1) and l:get_upstream_round_robin() or l:get_upstream_master_slave()
    count[up:get_name()] = count[up:get_name()] + 1
    held[#held + 1] = up
    local gap = count["127.0.0.1"] - count["127.0.0.2"]
    assert(gap >= -1 and gap <= 1, string.format("pick %d: %d vs %d", i, count["127.0.0.1"], count["127.0.0.2"]))
  end
  for _, up in ipairs(held) do up:ok() end
end)

local total = passed + failed
print(string.format("%s: %d/%d tests passed", _VERSION .. (jit and (" " .. jit.version) or ""), passed, total))
if arg and arg[0] then
  os.exit(failed == 0 and 0 or 1)
end
return failed
