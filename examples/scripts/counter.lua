-- SPDX-License-Identifier: AGPL-3.0-or-later
-- Counts touches in its persistent state and says the count.

function on_touch(by, element)
  state.n = (state.n or 0) + 1
  say("touched " .. state.n .. " times")
end
