--- Phased mode: a barrier between phases. A task starts once its dependencies have succeeded
-- and every task of the phases before its own has ended.
local Phased = require("coral.run.modes").extend("dependency", {
  name = "phased",
  label = "PHASED",
  summary = "a barrier between phases: a phase starts when the one before has ended",
})

function Phased:init()
  self.waiting = {}   -- tasks handed out by the graph, waiting for their phase
end

function Phased:pump(free)
  local run = self.run
  -- The graph hands out every ready task; those of a later phase wait here.
  for _, id in ipairs(run.g:ready()) do
    local st = run.state[id]
    if st.status == "pending" then self.waiting[#self.waiting + 1] = st end
  end
  local current = run:current_phase()
  local i = 1
  while i <= #self.waiting and free > 0 do
    local st = self.waiting[i]
    if run.phase_of[st.task.id] == current then
      table.remove(self.waiting, i)
      run:start(st)
      free = free - 1
    else
      i = i + 1
    end
  end
end

function Phased:upcoming(n)
  local run, ids = self.run, {}
  local current = run:current_phase()
  for _, st in ipairs(self.waiting) do
    if #ids >= n then break end
    if run.phase_of[st.task.id] == current then ids[#ids + 1] = st.task.id end
  end
  return ids
end

function Phased:held() return #self.waiting end

return Phased
