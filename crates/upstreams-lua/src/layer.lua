-- The fast layer of upstream_list (see fast.rs): picks, verdicts, addresses and member
-- lists go through a small backend of C functions — FFI calls the JIT compiles under
-- LuaJIT (backend_ffi.lua), plain C functions under Lua 5.4 (c54 in fast.rs) — instead of
-- mlua's method dispatch; everything else goes through the mlua methods of the same list.
-- Called with (module, fast, make_backend); returns the module scripts get from `require`.
--
-- The backend B, made for the upstream metatable `Meta`:
--   B.pick(list, rotation, key) -> upstream or nil, code (0; < 0: a stale list)
--   B.ok(up) / B.fail(up, addr, reason) -> code (< 0: stale; -3: not an upstream), list
--   B.handle(x) -> the upstream handle of one of our upstreams, else nil
--   B.adopt(handle, list) -> an upstream wrapper without a pick
--   B.members(list) -> a table of upstream handles, or nil for a stale list
--   B.addr(handle) -> n, port, version, is_local, key, text (text may be nil: B.text(n))
--   B.proxy(mt, shared) -> a new empty userdata with metatable mt (or its copy; shared:
--     the same for every call with this mt)
local module, fast, make_backend = ...
local view, deliver, create, handle_of = fast.view, fast.deliver, module.create, fast.handle
local up_handle = fast.up_handle
local type, tostring, error, setmetatable, getmetatable = type, tostring, error, setmetatable,
  getmetatable

-- List states by list handle, for the upstreams picked from them (weak: a list may be
-- collected). A list's own state lives in its metatable, under a key only this layer has.
local lists = setmetatable({}, {__mode = "v"})
local STATE = {}

local function stale(what)
  error("upstream_list: " .. what .. " is no longer valid (a released or forged handle)", 3)
end
local function not_up(name, self)
  error(string.format("bad argument `self` to `LuaUpstream.%s`: expected an upstream, got %s",
    name, type(self)), 3)
end

local Upstream = {}
local Meta = {__index = Upstream}
-- The backend, made once `Meta` and `Upstream` are complete (LuaJIT's `ffi.metatype` takes a
-- metatable that must not change afterwards); the functions below only use it when called.
local B

-- The mlua view of each upstream, made once (weak: it goes when no wrapper needs it).
local views = setmetatable({}, {__mode = "v"})
local function as_view(self, name)
  local h = B.handle(self)
  if h == nil then not_up(name, self) end
  local v = views[h]
  if v == nil then
    v = view(h)
    if not v then stale("this upstream") end
    views[h] = v
  end
  return v
end

local function after(code, list, name, self)
  if code < 0 then
    if code == -3 then not_up(name, self) end
    stale("this upstream")
  end
  local st = lists[list]
  if st and st.watched then deliver(st.ud) end
end
-- Whether any list of this layer has a watcher (until then a verdict delivers nothing).
local any_watched = false
function Upstream.ok(self)
  local code, list = B.ok(self)
  if code ~= 0 or any_watched then after(code, list, "ok", self) end
end
function Upstream.fail(self, addr, reason)
  local kind = 0
  if addr == nil then
    reason = nil
  elseif type(addr) == "boolean" then
    if addr then kind = 1 end
  elseif type(addr) == "string" then
    reason = addr
  else
    if B.handle(self) == nil then not_up("fail", self) end
    error("upstream:fail: expected a boolean or a reason string, got " .. type(addr), 2)
  end
  if reason ~= nil and type(reason) ~= "string" then
    error("upstream:fail: reason must be a string, got " .. type(reason), 2)
  end
  local code, list = B.fail(self, kind, reason or "unknown")
  if code ~= 0 or any_watched then after(code, list, "fail", self) end
end
function Upstream.get_name(self) return as_view(self, "get_name"):get_name() end
function Upstream.get_port(self) return as_view(self, "get_port"):get_port() end
Meta.__tostring = function(self) return tostring(as_view(self, "__tostring")) end
Meta.__eq = function(a, b)
  local x, y = B.handle(a), B.handle(b)
  return x ~= nil and x == y
end

-- Addresses: userdata proxies (as the C path's are userdata) with their fields aside.
local Addr = {}
local addrs = setmetatable({}, {__mode = "k"})
local AddrMeta = {__index = Addr}
local function addr_text(a, with_port)
  if with_port and a.version == 6 then return "[" .. a.text .. "]:" .. a.port end
  if with_port and a.version == 4 then return a.text .. ":" .. a.port end
  return a.text
end
local function this_addr(self, name)
  local a = addrs[self]
  if a == nil then
    error(string.format("bad argument `self` to `LuaAddr.%s`: expected an address, got %s",
      name, type(self)), 3)
  end
  return a
end
function Addr.to_string(self, with_port) return addr_text(this_addr(self, "to_string"), with_port) end
function Addr.get_port(self) return this_addr(self, "get_port").port end
function Addr.get_version(self) return this_addr(self, "get_version").version end
function Addr.is_local(self) return this_addr(self, "is_local").is_local end
AddrMeta.__tostring = function(self) return this_addr(self, "__tostring").text end
AddrMeta.__eq = function(x, y)
  local a, b = addrs[x], addrs[y]
  return a ~= nil and b ~= nil and a.text == b.text and a.port == b.port
    and a.version == b.version
end
-- The last address object of each upstream, reused while the address is the same (they
-- are immutable; `==` compares contents either way).
local last_addr = setmetatable({}, {__mode = "v"})
local last_key = {}
function Upstream.get_addr(self)
  local h = B.handle(self)
  if h == nil then not_up("get_addr", self) end
  local n, port, version, is_local, key, text = B.addr(h)
  if n < 0 then stale("this upstream") end
  if n == 0 then return nil end
  local cached = last_addr[h]
  if cached ~= nil and last_key[h] == key then return cached end
  local a = B.proxy(AddrMeta, true)
  addrs[a] = {text = text or B.text(n), port = port, version = version, is_local = is_local}
  last_addr[h], last_key[h] = a, key
  return a
end

B = make_backend(Meta)

-- Lists: a userdata proxy (as the C path's lists are userdata), its state aside: the mlua
-- list, its handle, whether it has watchers.
local List = {}
local function list_tostring(self) return tostring(getmetatable(self)[STATE].ud) end
local function check_list(self, name)
  local mt = getmetatable(self)
  local st = mt and type(mt) == "table" and mt[STATE]
  if not st then
    error(string.format("bad argument `self` to `LuaList.%s`: expected an upstream_list, got %s",
      name, type(self)), 3)
  end
  return st
end
local function after_pick(st, up, code)
  if code < 0 then stale("this upstream_list") end
  if st.watched then deliver(st.ud) end
  return up
end
function List.get_upstream_by_hash(self, key)
  local st = check_list(self, "get_upstream_by_hash")
  local t = type(key)
  if t == "number" then
    key = tostring(key)
  elseif t ~= "string" then
    error("get_upstream_by_hash: key must be a string or a number, got " .. t, 2)
  end
  local up, code = B.pick(st.h, 2, key)
  if code ~= 0 or st.watched then return after_pick(st, up, code) end
  return up
end
function List.get_upstream_round_robin(self)
  local st = check_list(self, "get_upstream_round_robin")
  local up, code = B.pick(st.h, 0, nil)
  if code ~= 0 or st.watched then return after_pick(st, up, code) end
  return up
end
function List.get_upstream_master_slave(self)
  local st = check_list(self, "get_upstream_master_slave")
  local up, code = B.pick(st.h, 1, nil)
  if code ~= 0 or st.watched then return after_pick(st, up, code) end
  return up
end
-- An mlua upstream (a watcher's argument) as this layer's wrapper.
local function adopt(st, u)
  if u == nil then return nil end
  local h = up_handle(u)
  if h == 0 then return u end
  return B.adopt(h, st.h)
end
function List.get_upstream_except(self, up, key)
  local st = check_list(self, "get_upstream_except")
  if B.handle(up) ~= nil then up = as_view(up, "get_upstream_except") end
  -- A pick of the mlua path: its verdict and its release stay with its own wrapper.
  return st.ud:get_upstream_except(up, key)
end
function List.all_upstreams(self)
  local st = check_list(self, "all_upstreams")
  local handles = B.members(st.h)
  if handles == nil then stale("this upstream_list") end
  for i = 1, #handles do handles[i] = B.adopt(handles[i], st.h) end
  return handles
end
function List.add_watcher(self, what, callback)
  local st = check_list(self, "add_watcher")
  if type(callback) == "function" then
    local inner = callback
    callback = function(event, up, errors) return inner(event, adopt(st, up), errors) end
  end
  st.ud:add_watcher(what, callback)
  st.watched, any_watched = true, true
end

local wrapped = {}
for k, v in pairs(module) do wrapped[k] = v end
function wrapped.create(...)
  local ud, err = create(...)
  if not ud then return ud, err end
  local h = handle_of(ud)
  local st = {ud = ud, h = h, watched = false}
  local list = B.proxy({__index = List, __tostring = list_tostring, [STATE] = st}, false)
  lists[h] = st
  return list
end
return wrapped
