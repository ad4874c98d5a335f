-- SPDX-License-Identifier: MPL-2.0
-- A door that opens (moves up 3 m) when touched and closes after 2 seconds
-- (40 ticks at 20 Hz). Its child parts follow because they are its subtree.

function on_touch(by, element)
  if state.open then return end
  local x, y, z = world.pos(me)
  set_pos(me, x, y, z + fx(3))
  state.open = true
  state.opened_by = by
  set_timer(1, 40)
  say("the door opens for " .. (world.player_name(by) or "someone"))
end

function on_timer(id)
  if not state.open then return end
  local x, y, z = world.pos(me)
  set_pos(me, x, y, z - fx(3))
  state.open = false
end
