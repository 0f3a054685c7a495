-- The LuaJIT backend of layer.lua: FFI calls through the C functions' addresses (fast.rs),
-- which the JIT compiles into its traces. Called with `fast`; returns make_backend.
local fast = ...
local ffi = require "ffi"
local pick_ = ffi.cast("double (*)(double, int, const char *, size_t, double *)", fast.pick)
local ok_ = ffi.cast("double (*)(double, double)", fast.ok)
local fail_ = ffi.cast("double (*)(double, double, int, const char *, size_t)", fast.fail)
local release = ffi.cast("void (*)(double)", fast.release)
local members = ffi.cast("double (*)(double, double *, size_t)", fast.members)
local addr_of = ffi.cast(
  "double (*)(double, uint8_t *, size_t, double *, double *, double *, double *)", fast.addr)
local out = ffi.new("double[1]")
local text_buf = ffi.new("uint8_t[?]", 4096)
local nums = ffi.new("double[4]")

return function(Meta)
  -- One small cdata per pick: the pick's handle until its verdict (then 0), the upstream's
  -- handle, the list's. An anonymous struct, so each layer has a type of its own (the module
  -- may be loaded under both of its names). Its finaliser releases a pick collected before
  -- its verdict; the verdict removes it, so the usual wrapper is collected without one (a
  -- finaliser run inside a trace would abort it).
  local T = ffi.typeof("struct { double pick; double up; double list; }")
  local new = ffi.metatype(T, Meta)
  local function finalise(self) release(self.pick) end
  local function reported(up)
    if up.pick ~= 0 then
      up.pick = 0
      ffi.gc(up, nil)
    end
  end
  local B = {}
  function B.pick(list, rotation, key)
    local h = pick_(list, rotation, key, key and #key or 0, out)
    if h > 0 then return ffi.gc(new(h, out[0], list), finalise), 0 end
    if h == 0 then return nil, 0 end
    return nil, h
  end
  function B.ok(up)
    if not ffi.istype(T, up) then return -3 end
    local code = ok_(up.pick, up.up)
    if code >= 0 then reported(up) end
    return code, up.list
  end
  function B.fail(up, kind, reason)
    if not ffi.istype(T, up) then return -3 end
    local code = fail_(up.pick, up.up, kind, reason, #reason)
    if code >= 0 then reported(up) end
    return code, up.list
  end
  function B.handle(x)
    if ffi.istype(T, x) then return x.up end
    return nil
  end
  function B.adopt(h, list) return new(0, h, list) end
  local room = 64
  local buffer = ffi.new("double[?]", room)
  function B.members(list)
    local n = members(list, buffer, room)
    if n < 0 then return nil end
    if n > room then
      room = n
      buffer = ffi.new("double[?]", room)
      n = members(list, buffer, room)
    end
    local t = {}
    for i = 1, n do t[i] = buffer[i - 1] end
    return t
  end
  function B.addr(h)
    local n = addr_of(h, text_buf, 4096, nums, nums + 1, nums + 2, nums + 3)
    return n, nums[0], nums[1], nums[2] ~= 0, nums[3], nil
  end
  function B.text(n) return ffi.string(text_buf, n) end
  -- newproxy gives a fresh metatable (filled with mt's fields) or shares a template
  -- proxy's: one template per shared metatable (kept: the layer has one, for addresses).
  local templates = {}
  function B.proxy(mt, shared)
    local t = shared and templates[mt]
    if not t then
      t = newproxy(true)
      local own = getmetatable(t)
      for k, v in pairs(mt) do own[k] = v end
      if not shared then return t end
      templates[mt] = t
    end
    return newproxy(t)
  end
  return B
end
