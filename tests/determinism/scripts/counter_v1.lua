-- SPDX-License-Identifier: MPL-2.0
-- Version 1 of a hot-reloaded script: counts touches.

function on_touch(by, element)
  state.n = (state.n or 0) + 1
  state.version = 1
  say("v1 " .. state.n)
end
