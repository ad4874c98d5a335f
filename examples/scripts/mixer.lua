-- SPDX-License-Identifier: GPL-3.0-or-later
-- Exercises everything that must be identical on every replica: pairs order
-- over string, integer, table and function keys, math.random, fx maths,
-- timers and messages.

function on_touch(by, element)
  local t = {}
  for i = 1, 40 do t["k" .. math.random(1, 1000)] = i end
  t.alpha, t.beta, t.gamma = 1, 2, 3
  t[17], t[-4], t[3] = "x", "y", "z"
  local order = {}
  for k in pairs(t) do order[#order + 1] = tostring(k) end
  state.order = table.concat(order, ",")
  -- Tables and functions as keys iterate in one order everywhere too.
  local objs, by_key = {}, {}
  for i = 1, 12 do objs[i] = { id = i } end
  for i = 12, 1, -1 do by_key[objs[i]] = i end
  for i = 1, 4 do by_key[function() return i end] = -i end
  by_key[objs[math.random(1, 12)]] = nil
  local seen = {}
  for k, v in pairs(by_key) do seen[#seen + 1] = type(k) == "table" and k.id or v end
  state.table_keys = table.concat(seen, ",")
  local a = fx("1.5")
  local b = fx.mul(a, fx.sin(fx(2))) + fx.sqrt(fx(2)) - fx.atan2(fx(1), fx(-3))
  state.fx = fx.tostring(fx.div(b, fx.cos(fx("0.25"))))
  state.r = math.random(0)
  state.n = (state.n or 0) + 1
  set_timer(1, 2)
  send(me, "echo " .. state.n)
end

function on_timer(id)
  state.timers = (state.timers or 0) + 1
  local x, y, z = world.pos(me)
  -- Walk in a circle of radius 2 around where we are.
  local angle = fx.mul(fx(state.timers), fx("0.3"))
  set_pos(me, x + fx.mul(fx(2), fx.cos(angle)) - fx.mul(fx(2), fx.cos(angle - fx("0.3"))), y, z)
end

function on_message(from, body)
  state.last = body
  local keys = {}
  for k in pairs(state) do keys[#keys + 1] = k end
  table.sort(keys)
  state.keys = table.concat(keys, " ")
end
