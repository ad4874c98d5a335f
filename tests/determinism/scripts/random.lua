-- SPDX-License-Identifier: MPL-2.0
-- math.random in all its forms, seeded from the tick seed and script id.

function on_touch(by, element)
  local r = {}
  for i = 1, 8 do r[#r + 1] = math.random(1, 1000) end
  r[#r + 1] = math.random(6)
  r[#r + 1] = math.random(0)
  r[#r + 1] = math.random(-50, 50)
  local f = math.random()
  r[#r + 1] = math.floor(f * 1000000)
  state.rolls = table.concat(r, " ")
  state.count = (state.count or 0) + 1
  set_timer(1, 3)
end

function on_timer(id)
  state.timer_roll = math.random(1, 1 << 40)
end
