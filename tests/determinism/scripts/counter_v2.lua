-- SPDX-License-Identifier: MPL-2.0
-- Version 2: keeps the count from version 1 and adds a history.

function on_touch(by, element)
  state.n = (state.n or 0) + 10
  state.version = 2
  state.history = state.history or {}
  state.history[#state.history + 1] = world.tick()
  set_timer(1, 4)
  say("v2 " .. state.n)
end

function on_timer(id)
  state.ticked = world.tick()
end
