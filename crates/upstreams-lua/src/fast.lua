-- The LuaJIT FFI layer of upstream_list (see fast.rs): the hot calls go through C function
-- pointers the JIT compiles; everything else through the mlua methods of the same list.
-- Called with (module, fast); returns the module scripts get from `require`.
local module, fast = ...
local ffi = require "ffi"

local pick = ffi.cast("double (*)(double, int, const char *, size_t, double *)", fast.pick)
local ok_ = ffi.cast("double (*)(double, double)", fast.ok)
local fail_ = ffi.cast("double (*)(double, double, int, const char *, size_t)", fast.fail)
local release = ffi.cast("void (*)(double)", fast.release)
local members = ffi.cast("double (*)(double, double *, size_t)", fast.members)
local up_handle = fast.up_handle
local addr_of = ffi.cast(
  "double (*)(double, uint8_t *, size_t, double *, double *, double *, double *)", fast.addr)
local out = ffi.new("double[1]")
local handle_of, view, deliver, create = fast.handle, fast.view, fast.deliver, module.create
local type, tostring, error, setmetatable = type, tostring, error, setmetatable

-- List states by list handle, for the upstreams picked from them (weak: a list may be
-- collected). A list's own state lives in its metatable, under a key only this layer has.
local lists = setmetatable({}, {__mode = "v"})
local STATE = {}
local getmetatable = getmetatable

local function stale(what)
  error("upstream_list: " .. what .. " is no longer valid (a released or forged handle)", 3)
end

-- Upstreams: one small cdata per pick (the pick's handle until its verdict, then 0; the
-- upstream's handle; the list's). Its finaliser releases a pick collected before its
-- verdict; the verdict removes the finaliser, so the usual wrapper is collected without one
-- (a finaliser run inside a trace would abort it).
-- An anonymous struct: a type of this layer's own (the module may be loaded more than once,
-- under both of its names, each with its own layer).
local UpstreamT = ffi.typeof("struct { double pick; double up; double list; }")
local function finalise(self) release(self.pick) end
local Upstream = {}
local function check_up(self, name)
  if not ffi.istype(UpstreamT, self) then
    error(string.format("bad argument `self` to `LuaUpstream.%s`: expected an upstream, got %s",
      name, type(self)), 3)
  end
end
local function after(list)
  local l = lists[list]
  if l and l.watched then deliver(l.ud) end
end
local function reported(self)
  if self.pick ~= 0 then
    self.pick = 0
    ffi.gc(self, nil)
  end
end
function Upstream.ok(self)
  check_up(self, "ok")
  if ok_(self.pick, self.up) < 0 then stale("this upstream") end
  reported(self)
  after(self.list)
end
function Upstream.fail(self, addr, reason)
  check_up(self, "fail")
  local kind = 0
  if addr == nil then
    reason = nil
  elseif type(addr) == "boolean" then
    if addr then kind = 1 end
  elseif type(addr) == "string" then
    reason = addr
  else
    error("upstream:fail: expected a boolean or a reason string, got " .. type(addr), 2)
  end
  if reason ~= nil and type(reason) ~= "string" then
    error("upstream:fail: reason must be a string, got " .. type(reason), 2)
  end
  local r = reason or "unknown"
  if fail_(self.pick, self.up, kind, r, #r) < 0 then stale("this upstream") end
  reported(self)
  after(self.list)
end
-- The mlua view of each upstream, made once (weak: it goes when no wrapper needs it).
local views = setmetatable({}, {__mode = "v"})
local function as_view(self, name)
  check_up(self, name)
  local v = views[self.up]
  if v == nil then
    v = view(self.up)
    if not v then stale("this upstream") end
    views[self.up] = v
  end
  return v
end
function Upstream.get_name(self) return as_view(self, "get_name"):get_name() end
function Upstream.get_port(self) return as_view(self, "get_port"):get_port() end
-- Addresses: userdata proxies (as the C path's are userdata) with their fields aside.
local Addr = {}
local addrs = setmetatable({}, {__mode = "k"})
local addr_template = newproxy(true)
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
do
  local mt = getmetatable(addr_template)
  mt.__index = Addr
  mt.__tostring = function(self) return this_addr(self, "__tostring").text end
  mt.__eq = function(x, y)
    local a, b = addrs[x], addrs[y]
    return a ~= nil and b ~= nil and a.text == b.text and a.port == b.port
      and a.version == b.version
  end
end
local text_buf = ffi.new("uint8_t[?]", 4096)
local nums = ffi.new("double[4]")
-- The last address object of each upstream, reused while the address is the same (they
-- are immutable; `==` compares contents either way).
local last_addr = setmetatable({}, {__mode = "v"})
local last_key = {}
function Upstream.get_addr(self)
  check_up(self, "get_addr")
  local n = addr_of(self.up, text_buf, 4096, nums, nums + 1, nums + 2, nums + 3)
  if n < 0 then stale("this upstream") end
  if n == 0 then return nil end
  local cached = last_addr[self.up]
  if cached ~= nil and last_key[self.up] == nums[3] then return cached end
  local a = newproxy(addr_template)
  addrs[a] = {text = ffi.string(text_buf, n), port = nums[0], version = nums[1],
    is_local = nums[2] ~= 0}
  last_addr[self.up], last_key[self.up] = a, nums[3]
  return a
end
local UpstreamMeta = {
  __index = Upstream,
  __tostring = function(self) return tostring(as_view(self, "__tostring")) end,
  __eq = function(a, b)
    return ffi.istype(UpstreamT, a)
      and ffi.istype(UpstreamT, b) and a.up == b.up
  end,
}
local new_upstream = ffi.metatype(UpstreamT, UpstreamMeta)

-- Lists: a userdata proxy (as the C path's lists are userdata), its state aside: the mlua
-- list, its handle, whether it has watchers.
local List = {}
local function list_tostring(self) return tostring(getmetatable(self)[STATE].ud) end
local function check_list(self, name)
  local mt = type(self) == "userdata" and getmetatable(self)
  local st = mt and mt[STATE]
  if not st then
    error(string.format("bad argument `self` to `LuaList.%s`: expected an upstream_list, got %s",
      name, type(self)), 3)
  end
  return st
end
local function wrap(st, h)
  if h < 0 then stale("this upstream_list") end
  local up = nil
  if h > 0 then up = ffi.gc(new_upstream(h, out[0], st.h), finalise) end
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
  return wrap(st, pick(st.h, 2, key, #key, out))
end
function List.get_upstream_round_robin(self)
  local st = check_list(self, "get_upstream_round_robin")
  return wrap(st, pick(st.h, 0, nil, 0, out))
end
function List.get_upstream_master_slave(self)
  local st = check_list(self, "get_upstream_master_slave")
  return wrap(st, pick(st.h, 1, nil, 0, out))
end
-- An mlua upstream (a watcher's argument, a retry pick) as this layer's wrapper.
local function adopt(st, u)
  if u == nil then return nil end
  local h = up_handle(u)
  if h == 0 then return u end
  return new_upstream(0, h, st.h)
end
function List.get_upstream_except(self, up, key)
  local st = check_list(self, "get_upstream_except")
  if ffi.istype(UpstreamT, up) then up = as_view(up, "get_upstream_except") end
  -- A pick of the mlua path: its verdict and its release stay with its own wrapper.
  return st.ud:get_upstream_except(up, key)
end
local room = 64
local buffer = ffi.new("double[?]", room)
function List.all_upstreams(self)
  local st = check_list(self, "all_upstreams")
  local n = members(st.h, buffer, room)
  if n < 0 then stale("this upstream_list") end
  if n > room then
    room = n
    buffer = ffi.new("double[?]", room)
    n = members(st.h, buffer, room)
  end
  local t = {}
  for i = 1, n do t[i] = new_upstream(0, buffer[i - 1], st.h) end
  return t
end
function List.add_watcher(self, what, callback)
  local st = check_list(self, "add_watcher")
  if type(callback) == "function" then
    local inner = callback
    callback = function(event, up, errors) return inner(event, adopt(st, up), errors) end
  end
  st.ud:add_watcher(what, callback)
  st.watched = true
end

local wrapped = {}
for k, v in pairs(module) do wrapped[k] = v end
function wrapped.create(...)
  local ud, err = create(...)
  if not ud then return ud, err end
  local h = handle_of(ud)
  local list = newproxy(true)
  local st = {ud = ud, h = h, watched = false}
  local mt = getmetatable(list)
  mt.__index, mt.__tostring, mt[STATE] = List, list_tostring, st
  lists[h] = st
  return list
end
return wrapped
