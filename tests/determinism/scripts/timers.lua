-- SPDX-License-Identifier: MPL-2.0
-- Timers: three ids on different periods, messages between scripts.

function on_touch(by, element)
  state.started = world.tick()
  set_timer(1, 2)
  set_timer(2, 5)
  set_timer(3, 11)
end

function on_timer(id)
  state["fired" .. id] = (state["fired" .. id] or 0) + 1
  local x, y, z = world.pos(me)
  set_pos(me, x, y + fx("0.1") * id, z)
  if id == 1 and state.fired1 < 40 then set_timer(1, 2) end
  if id == 2 and state.fired2 < 15 then set_timer(2, 5) end
  if id == 3 then
    say("tick " .. world.tick())
    send(me, "ping " .. state.fired3)
    if state.fired3 < 6 then set_timer(3, 11) end
  end
end

function on_message(from, body)
  state.last = body
  state.from = from
end
