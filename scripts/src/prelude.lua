-- The sandbox prelude. Runs once per Lua state, with the real globals, before
-- any script. It hardens the standard library in place and returns the
-- read-only base environment that every call's fresh environment falls
-- back to. `H` holds the host's Rust functions.
local H = ...

local type, error, select, rawget, rawequal = type, error, select, rawget, rawequal
local rawset_raw, setmetatable_raw, getmetatable_raw = rawset, setmetatable, getmetatable
local raw_pcall, raw_xpcall, raw_tostring, raw_next = pcall, xpcall, tostring, next
local co_resume, co_close, co_create = coroutine.resume, coroutine.close, coroutine.create
local raw_format, pack, unpack = string.format, table.pack, table.unpack
local check, check_format, faulted = H.check, H.check_format, H.faulted

-- Library tables scripts see are empty proxies; `frozen` lists them so that
-- rawset cannot write into them either.
local frozen = {}

local function is_ref(t)
  return t == "table" or t == "function" or t == "thread" or t == "userdata"
end

local function freeze(t, name, extra)
  local mt = {
    __index = t,
    __newindex = function(_, k)
      error(name .. " is read-only (cannot set " .. raw_tostring(k) .. ")", 2)
    end,
    __metatable = false,
  }
  if extra then
    for k, v in raw_next, extra do mt[k] = v end
  end
  local p = setmetatable_raw({}, mt)
  frozen[p] = true
  return p
end

local function unavailable(name, why)
  local p = setmetatable_raw({}, {
    __index = function(_, k)
      error(name .. "." .. raw_tostring(k) .. " is not available to scripts: " .. why, 2)
    end,
    __newindex = function()
      error(name .. " is not available to scripts: " .. why, 2)
    end,
    __metatable = false,
  })
  frozen[p] = true
  return p
end

local function deny(name, why)
  return function()
    error(name .. " is not available to scripts: " .. why, 2)
  end
end

-- tostring and %s never show addresses: tables, functions, coroutines and
-- userdata print as their type name unless they have __tostring.
local function safe_tostring(v)
  local t = type(v)
  if t == "table" or t == "userdata" then
    local mt = getmetatable_raw(v)
    if type(mt) == "table" and rawget(mt, "__tostring") ~= nil then
      return raw_tostring(v)
    end
    return t
  elseif t == "function" or t == "thread" then
    return t
  end
  return raw_tostring(v)
end

local function safe_format(fmt, ...)
  check_format(fmt)
  local n = select("#", ...)
  if n == 0 then return raw_format(fmt) end
  local a = pack(...)
  for i = 1, n do
    if is_ref(type(a[i])) then a[i] = safe_tostring(a[i]) end
  end
  return raw_format(fmt, unpack(a, 1, n))
end

-- pairs/next: raw order is a deterministic function of the call's own
-- operations for boolean, number and string keys (the string hash seed is
-- pinned at build time). Keys that are tables, functions or coroutines hash
-- by address, which differs between replicas: refuse them.
local function det_next(t, k)
  local k2, v = raw_next(t, k)
  if is_ref(type(k2)) then
    error("pairs/next: this table has a " .. type(k2)
      .. " as a key, and such keys have no iteration order that every replica agrees on;"
      .. " key by a string or number id instead", 2)
  end
  return k2, v
end

local function det_pairs(t)
  local mt = getmetatable_raw(t)
  if type(mt) == "table" then
    local p = rawget(mt, "__pairs")
    if p ~= nil then return p(t) end
  end
  if type(t) ~= "table" then
    error("bad argument #1 to 'pairs' (table expected, got " .. type(t) .. ")", 2)
  end
  return det_next, t, nil
end

-- Running out of instructions or memory cannot be caught: every catcher
-- passes its results through `check`, which re-raises a budget fault.
--
-- A budget error is raised from the VM's hook, and Lua runs the code that
-- follows it until the next protected boundary with hooks off: xpcall
-- message handlers, and __close handlers when a coroutine that died of it
-- is closed. Those paths must not run script code once the budget is gone.
local function s_pcall(...) return check(raw_pcall(...)) end
local function s_xpcall(f, h, ...)
  return check(raw_xpcall(f, function(e)
    if faulted() then return e end
    return h(e)
  end, ...))
end
coroutine.resume = function(...) return check(co_resume(...)) end
coroutine.close = function(co)
  if faulted() then check(false) end
  return check(co_close(co))
end
coroutine.wrap = function(f)
  local co = co_create(f)
  return function(...)
    local r = pack(co_resume(co, ...))
    if r[1] then return unpack(r, 2, r.n) end
    check(false, r[2])
    co_close(co)
    error(r[2], 0)
  end
end

-- No finalisers and no weak tables: garbage collection must not be
-- observable. A table used as a metatable is sealed against gaining them.
-- No __close either: Lua runs __close handlers while unwinding from a
-- budget error with the VM's hooks off, so they could run for ever.
local gc_msg = "metatables may not have __gc, __mode or __close in scripts (garbage collection must not be observable; to-be-closed variables are not supported)"
local function banned(k) return k == "__gc" or k == "__mode" or k == "__close" end
local sealed = "sealed metatable"
local seal_mt = {
  __newindex = function(mt, k, v)
    if banned(k) then error(gc_msg, 2) end
    rawset_raw(mt, k, v)
  end,
  __metatable = sealed,
}
local function s_setmetatable(t, mt)
  if frozen[t] then error("library tables are read-only", 2) end
  if mt ~= nil then
    if type(mt) ~= "table" then
      error("bad argument #2 to 'setmetatable' (nil or table expected)", 2)
    end
    if rawget(mt, "__gc") ~= nil or rawget(mt, "__mode") ~= nil or rawget(mt, "__close") ~= nil then
      error(gc_msg, 2)
    end
    local mmt = getmetatable_raw(mt)
    if mmt == nil then
      setmetatable_raw(mt, seal_mt)
    elseif not rawequal(mmt, sealed) then
      error("a table used as a metatable may not have a metatable of its own in scripts", 2)
    end
  end
  return setmetatable_raw(t, mt)
end
local function s_rawset(t, k, v)
  if frozen[t] then error("library tables are read-only", 2) end
  if banned(k) then error(gc_msg, 2) end
  return rawset_raw(t, k, v)
end

-- Harden the real library tables (strings reach `string` through their
-- metatable, so it must be safe too).
string.dump = nil
string.format = safe_format
getmetatable("").__metatable = false
math.random = H.random
math.randomseed = nil
for _, f in ipairs({ "sin", "cos", "tan", "asin", "acos", "atan", "exp", "log" }) do
  math[f] = nil
end

local base = {
  assert = assert, error = error, ipairs = ipairs, select = select,
  tonumber = tonumber, type = type, rawequal = rawequal, rawlen = rawlen,
  rawget = rawget, getmetatable = getmetatable_raw, _VERSION = _VERSION,
  next = det_next, pairs = det_pairs, pcall = s_pcall, xpcall = s_xpcall,
  tostring = safe_tostring, setmetatable = s_setmetatable, rawset = s_rawset,
  string = freeze(string, "string"),
  table = freeze(table, "table"),
  math = freeze(math, "math"),
  utf8 = freeze(utf8, "utf8"),
  coroutine = freeze(coroutine, "coroutine"),
  os = unavailable("os", "scripts cannot reach the operating system (use world.time_ms() for time)"),
  io = unavailable("io", "scripts cannot read or write files"),
  debug = unavailable("debug", "the debug library can break the sandbox"),
  package = unavailable("package", "scripts are single files (no modules)"),
  load = deny("load", "scripts cannot compile code at run time"),
  loadstring = deny("loadstring", "scripts cannot compile code at run time"),
  dofile = deny("dofile", "scripts cannot read files"),
  loadfile = deny("loadfile", "scripts cannot read files"),
  require = deny("require", "scripts are single files (no modules)"),
  collectgarbage = deny("collectgarbage", "garbage collection is not observable in scripts"),
  print = deny("print", "use say(text) to speak"),
  fx = freeze(H.fx, "fx", { __call = function(_, v) return H.fx.new(v) end }),
  world = freeze(H.world, "world"),
  say = H.say,
  send = H.send,
  set_timer = H.set_timer,
  set_pos = H.set_pos,
  set_name = H.set_name,
}
return base
