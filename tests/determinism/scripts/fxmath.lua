-- SPDX-License-Identifier: MPL-2.0
-- fx maths: every helper over a spread of arguments, folded into one sum.

function on_touch(by, element)
  local acc = fx(0)
  for i = -20, 20 do
    local a = fx.div(fx(i), fx(7))
    acc = acc + fx.sin(a) + fx.cos(a) + fx.atan2(a, fx("0.5"))
    acc = acc + fx.mul(a, a) - fx.sqrt(fx.mul(a, a) + fx(1))
  end
  state.acc = fx.tostring(acc)
  state.bits = acc
  local x, y, z = world.pos(me)
  local step = fx.mul(fx.cos(fx(state.bits % 7)), fx("0.25"))
  set_pos(me, x + step, y, z)
end
