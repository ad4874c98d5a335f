-- The sandbox prelude. Runs once per Lua state, with the real globals, before
-- the script. It hardens the standard library in place and returns the
-- base environment the script's globals fall back to, and `seal`, which the
-- host calls once the script's top level has run (docs/adr/0004). `H` holds
-- the host's Rust functions.
local H = ...

-- The debug library is loaded for the host's own use (walking the script's
-- functions and tables to seal them) and removed before any script runs.
local dbg_getupvalue, dbg_getinfo = debug.getupvalue, debug.getinfo
local dbg_getmetatable, dbg_setmetatable = debug.getmetatable, debug.setmetatable
debug = nil

local type, error, select, rawget, rawequal = type, error, select, rawget, rawequal
local rawset_raw, setmetatable_raw, getmetatable_raw = rawset, setmetatable, getmetatable
local raw_pcall, raw_xpcall, raw_tostring, raw_next = pcall, xpcall, tostring, next
local co_resume, co_close, co_create = coroutine.resume, coroutine.close, coroutine.create
local raw_format, pack, unpack = string.format, table.pack, table.unpack
local check, check_format, faulted = H.check, H.check_format, H.faulted

-- Library tables scripts see are empty proxies; `frozen` lists them so that
-- rawset cannot write into them either.
local frozen = {}
-- Tables sealed after load: table -> shadow holding its contents.
local shadow_of = {}
-- Sealed tables used as metatables: table -> the metatable given instead.
local derived = {}
-- Metatables of ours whose `__metatable` field we added (replaceable).
local ours = {}
-- True while the top level runs.
local loading = false

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
    local mt = dbg_getmetatable(v)
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
-- operations (or the script's load) for boolean, number and string keys
-- (the string hash seed is pinned at build time) and for tables and Lua
-- functions (our Lua hashes them by creation number, restarted at every
-- call: vendor/lua-src/PATCHES.md). Coroutines, userdata and library (C)
-- functions still hash by address, which differs between replicas: refuse
-- them.
local function det_next(t, k)
  local s = shadow_of[t]
  if s then t = s end
  local k2, v = raw_next(t, k)
  local tk = type(k2)
  if tk == "thread" or tk == "userdata"
    or (tk == "function" and dbg_getinfo(k2, "S").what == "C") then
    error("pairs/next: this table has a " .. (tk == "function" and "library function" or tk)
      .. " as a key, and such keys have no iteration order that every replica agrees on;"
      .. " key by a string or number id instead", 2)
  end
  return k2, v
end

local function det_pairs(t)
  local mt = dbg_getmetatable(t)
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
local function no_load_coroutines()
  if loading then
    error("coroutines cannot be created while the script loads (they would keep state between calls); create them inside handlers", 3)
  end
end
coroutine.create = function(f) no_load_coroutines(); return co_create(f) end
coroutine.resume = function(...) return check(co_resume(...)) end
coroutine.close = function(co)
  if faulted() then check(false) end
  return check(co_close(co))
end
coroutine.wrap = function(f)
  no_load_coroutines()
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
local sealed_msg = "this table was made when the script loaded and is read-only; keep data that changes in `state`"
local make_derived
local function s_setmetatable(t, mt)
  if frozen[t] then error("library tables are read-only", 2) end
  if shadow_of[t] then error(sealed_msg, 2) end
  if shadow_of[mt] then
    local d = derived[mt] or make_derived(mt)
    local old = dbg_getmetatable(t)
    if old ~= nil and ours[old] then return dbg_setmetatable(t, d) end
    return setmetatable_raw(t, d)
  end
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
  local old = dbg_getmetatable(t)
  if old ~= nil and ours[old] then return dbg_setmetatable(t, mt) end
  return setmetatable_raw(t, mt)
end
local raw_rawget, raw_rawlen = rawget, rawlen
local function s_rawget(t, k)
  local s = shadow_of[t]
  if s then return raw_rawget(s, k) end
  return raw_rawget(t, k)
end
local function s_rawlen(t)
  local s = shadow_of[t]
  if s then return raw_rawlen(s) end
  return raw_rawlen(t)
end
local function s_rawset(t, k, v)
  if frozen[t] then error("library tables are read-only", 2) end
  if shadow_of[t] then error(sealed_msg, 2) end
  if banned(k) then error(gc_msg, 2) end
  return rawset_raw(t, k, v)
end

-- Harden the real library tables (strings reach `string` through their
-- metatable, so it must be safe too).
string.dump = nil
string.format = safe_format
-- Pattern functions whose backtracking is charged to the budget.
string.find, string.match = H.patterns.find, H.patterns.match
string.gmatch, string.gsub = H.patterns.gmatch, H.patterns.gsub
getmetatable("").__metatable = false
math.random = H.random
math.randomseed = nil
for _, f in ipairs({ "sin", "cos", "tan", "asin", "acos", "atan", "exp", "log" }) do
  math[f] = nil
end

local base = {
  assert = assert, error = error, ipairs = ipairs, select = select,
  tonumber = tonumber, type = type, rawequal = rawequal, rawlen = s_rawlen,
  rawget = s_rawget, getmetatable = getmetatable_raw, _VERSION = _VERSION,
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
  impulse = H.impulse,
  set_velocity = H.set_velocity,
  state = unavailable("state", "the top level runs once, when the script loads; use state inside handlers"),
}

-- Sealing (docs/adr/0004). After the top level has run, everything the
-- script's globals and functions can reach is made read-only, so the only
-- thing a handler can change that outlives its call is `state` (which the
-- host stores and decodes again at every call). A cached Lua state and a
-- fresh one then compute the same results.
local own = { [base] = true, [seal_mt] = true }

local function deny_write(_, k)
  error("this table was made when the script loaded and is read-only (cannot set "
    .. safe_tostring(k) .. "); keep data that changes in `state`", 2)
end
local function sealed_len(t) return raw_rawlen(shadow_of[t]) end

-- The metatable that `setmetatable(x, t)` installs for a sealed `t`: a
-- private copy of t's contents, so the object behaves as before and nobody
-- can change it.
make_derived = function(t)
  local d = {}
  for k, v in raw_next, shadow_of[t] do
    if banned(k) then error(gc_msg, 3) end
    d[k] = v
  end
  if d.__metatable == nil then
    d.__metatable = t
    ours[d] = true
  end
  derived[t] = d
  return d
end

local function seal(env, env_mt)
  own[env_mt] = true
  -- Everything reachable from the globals: tables (keys, values,
  -- metatables) and the upvalues of the script's own functions.
  local seen, list, todo = {}, {}, { env }
  while #todo > 0 do
    local v = todo[#todo]
    todo[#todo] = nil
    local tv = type(v)
    if tv == "table" then
      if not seen[v] and not own[v] and not frozen[v] then
        seen[v] = true
        list[#list + 1] = v
        for k, x in raw_next, v do todo[#todo + 1] = k; todo[#todo + 1] = x end
        local mt = dbg_getmetatable(v)
        if mt ~= nil then todo[#todo + 1] = mt end
      end
    elseif tv == "function" then
      if not seen[v] then
        seen[v] = true
        if dbg_getinfo(v, "S").source == "=script" then
          local i = 1
          while true do
            local name, x = dbg_getupvalue(v, i)
            if name == nil then break end
            todo[#todo + 1] = x
            i = i + 1
          end
        end
      end
    elseif tv == "thread" then
      error("a coroutine made while loading would keep state between calls; create coroutines inside handlers", 0)
    elseif tv == "userdata" then
      error("the script keeps a userdata value at load, which cannot be sealed", 0)
    end
  end
  -- Move each table's contents into its shadow.
  for i = 1, #list do
    local t = list[i]
    local s, keys = {}, {}
    for k, x in raw_next, t do s[k] = x; keys[#keys + 1] = k end
    for j = 1, #keys do rawset_raw(t, keys[j], nil) end
    shadow_of[t] = s
  end
  local env_shadow = shadow_of[env]
  for k, x in raw_next, base do
    if k ~= "state" and raw_rawget(env_shadow, k) == nil then env_shadow[k] = x end
  end
  -- `state` is decoded on first use in a call (the host clears it before
  -- each call); a handler that never uses it costs no decode or encode.
  local touch_state = H.touch_state
  setmetatable_raw(env_shadow, { __index = H.state_index })
  -- Give each its read-only metatable, keeping the behaviour of the
  -- script's own metatable.
  for i = 1, #list do
    local t = list[i]
    local s = shadow_of[t]
    local old = dbg_getmetatable(t)
    local user = old ~= nil and not own[old] and old or nil
    local sm = {}
    if user then
      local m = shadow_of[user]
      for k, x in raw_next, m do
        if not banned(k) then sm[k] = x end
      end
      local idx = raw_rawget(m, "__index")
      if idx == nil then
        sm.__index = s
      elseif type(idx) == "table" then
        setmetatable_raw(s, { __index = idx })
        sm.__index = s
      else
        sm.__index = function(self, k)
          local x = raw_rawget(s, k)
          if x ~= nil then return x end
          return idx(self, k)
        end
      end
      if raw_rawget(m, "__metatable") == nil then sm.__metatable = user end
    else
      sm.__index = s
      sm.__metatable = false
    end
    if t == env then
      sm.__newindex = function(_, k, v)
        if k == "state" then touch_state(); rawset_raw(env_shadow, "state", v) return end
        error("globals are read-only after load (cannot set " .. safe_tostring(k)
          .. "); keep data in `state`", 2)
      end
    else
      sm.__newindex = deny_write
    end
    if sm.__len == nil then sm.__len = sealed_len end
    dbg_setmetatable(t, sm)
  end
  -- Tables that look like metatables get their stand-in now, so memory
  -- use does not depend on which calls used them.
  for i = 1, #list do
    local t = list[i]
    for k in raw_next, shadow_of[t] do
      if type(k) == "string" and k:sub(1, 2) == "__" then
        pcall(make_derived, t)
        break
      end
    end
  end
  return env_shadow
end

local function set_loading(on) loading = on end

return { base = base, seal = seal, set_loading = set_loading }
