-- The module under hostile scripts (issue #15): watchers that re-enter the list, watcher
-- closures that refer to their own list, and many lists. Runs under lua5.4 and luajit
-- (LUA_CPATH at the built module) and embedded in `cargo test`. Exits non-zero (or returns
-- the number of failures when embedded) if anything fails.

local upstream_list = require "upstream_list"
local passed, failed = 0, 0
local function test(name, fn)
  local started = os.clock()
  local ok, err = pcall(fn)
  print(string.format("  %.2f s  %s", os.clock() - started, name))
  if ok then passed = passed + 1 else
    failed = failed + 1
    io.stderr:write("FAIL ", name, ": ", tostring(err), "\n")
  end
end
local function eq(got, want, what)
  if got ~= want then
    error(string.format("%s: got %s, want %s", what or "value", tostring(got), tostring(want)), 2)
  end
end

test("a watcher that re-enters 10 000 times: no recursion, every event, in order", function()
  local l = upstream_list.create("127.0.0.1,127.0.0.2", 11333)
  local seen = {}
  l:add_watcher("success", function(_, up)
    seen[#seen + 1] = up:get_name()
    if #seen < 10000 then up:ok() end       -- raises the next success from inside a callback
  end)
  local up = l:get_upstream_round_robin()
  up:ok()
  eq(#seen, 10000, "events delivered")
  eq(seen[1], up:get_name(), "first")
  eq(seen[10000], up:get_name(), "last")
end)

test("a watcher that fails its own upstream: the chain ends when it goes offline", function()
  local l = upstream_list.create({max_consecutive_errors = 3}, "127.0.0.1,127.0.0.2", 11333)
  local events = {}
  l:add_watcher("failure", function(ev, up, errors)
    events[#events + 1] = ev .. " " .. errors
    up:fail()
  end)
  l:add_watcher("offline", function(ev, up)
    events[#events + 1] = ev .. " " .. up:get_name()
  end)
  l:get_upstream_round_robin():fail()
  eq(table.concat(events, ", "), "failure 1, failure 2, failure 3, offline 127.0.0.1", "events")
end)

test("a watcher that raises for every event is stopped with an error, not a hang", function()
  local l = upstream_list.create("127.0.0.1,127.0.0.2", 11333)
  l:add_watcher("success", function(_, up) up:ok() end)
  local ok, err = pcall(function() l:get_upstream_round_robin():ok() end)
  eq(ok, false, "stopped")
  assert(tostring(err):find("raised events for", 1, true), tostring(err))
  -- The list still works afterwards.
  local up = l:get_upstream_round_robin()
  eq(type(up:get_name()), "string", "usable")
end)

-- Embedded in `cargo test` (a debug build) the count is smaller; the interpreters run 100 000.
local nlists = HOSTILE_LISTS or 100000

test(nlists .. " lists whose watchers refer to their list are all collected", function()
  collectgarbage("collect")
  local before = collectgarbage("count")
  local alive = setmetatable({}, {__mode = "k"})
  for i = 1, nlists do
    local l = upstream_list.create("127.0.0.1,127.0.0.2", 11333)
    l:add_watcher("offline", function() return l end)   -- a cycle through the closure
    local up = l:get_upstream_round_robin()
    up:ok()
    if i % 100 == 0 then alive[l] = true end
  end
  collectgarbage("collect")
  collectgarbage("collect")
  local left = 0
  for _ in pairs(alive) do left = left + 1 end
  eq(left, 0, "lists left alive after collection")
  local after = collectgarbage("count")
  assert(after - before < 4096, string.format("Lua heap grew by %.0f KiB", after - before))
end)

test("a list with many watchers over its life keeps working (no registry slots used)", function()
  local l = upstream_list.create("127.0.0.1,127.0.0.2", 11333)
  local n = 0
  for _ = 1, 20000 do
    l:add_watcher("success", function() n = n + 1 end)
  end
  l:get_upstream_round_robin():ok()
  eq(n, 20000, "every watcher ran")
end)

local total = passed + failed
print(string.format("%s: hostile %d/%d tests passed", _VERSION .. (jit and (" " .. jit.version) or ""), passed, total))
if arg and arg[0] then os.exit(failed == 0 and 0 or 1) end
return failed
