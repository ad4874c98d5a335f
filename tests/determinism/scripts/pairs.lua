-- SPDX-License-Identifier: MPL-2.0
-- pairs order over string, integer, boolean, table and function keys, and
-- next() on a table that changed shape: the same on every replica.

local function walk(t)
  local out = {}
  for k, v in pairs(t) do
    local kk = type(k) == "table" and ("t" .. k.id) or (type(k) == "function" and "f" .. v or tostring(k))
    out[#out + 1] = kk
  end
  return table.concat(out, ",")
end

function on_touch(by, element)
  local n = (state.n or 0) + 1
  state.n = n
  local strings = {}
  for i = 1, 30 + n do strings["key" .. (i * 7919 % 1000)] = i end
  strings.alpha, strings.beta, strings[""] = 1, 2, 3
  for i = 1, n do strings["key" .. (i * 31 % 1000)] = nil end
  state.strings = walk(strings)
  local mixed = { 10, 20, 30, [true] = "t", [false] = "f", [-7] = 1, [2 ^ 40] = 2 }
  mixed[2] = nil
  state.mixed = walk(mixed)
  local objs, by_obj = {}, {}
  for i = 1, 16 do objs[i] = { id = i } end
  for i = 16, 1, -1 do by_obj[objs[i]] = i end
  for i = 1, 5 do by_obj[function() return i end] = 100 + i end
  by_obj[objs[(n % 16) + 1]] = nil
  state.tables = walk(by_obj)
  -- Nested plain data in state round-trips in its canonical order.
  state.nested = { b = { 3, 2, 1 }, a = { x = n, y = -n }, [5] = "five" }
  say("pairs " .. n)
end

function on_heard(from, text)
  state.heard = (state.heard or 0) + 1
end
