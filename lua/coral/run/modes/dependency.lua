--- Dependency mode, the default: each task starts the moment its own dependencies have
-- succeeded, longest remaining chain first, up to max_workers at once. It is also the base the
-- other modes extend: what a mode does not define is done as here.
local Dependency = {
  name = "dependency",
  label = "PARALLEL",
  summary = "each task starts as soon as its own dependencies succeed (default)",
}
Dependency.__index = Dependency

--- Sets up the instance of one run (self.run is set): nothing to do here.
function Dependency.init() end

function Dependency.check() end

function Dependency.graph_options() return nil end

function Dependency.workers(_, n) return n end

function Dependency:pump(free)
  local run = self.run
  for _, id in ipairs(run.g:ready(free)) do
    local st = run.state[id]
    if st.status == "pending" then run:start(st) end
  end
end

--- The tasks that pump() would start next (Run:prepare_next), without starting them.
function Dependency:upcoming(n)
  return self.run.g:peek(n)
end

--- The task's own stdin (a string, or none); its output goes to its files only.
function Dependency.stdio(_, _, stdin) return stdin, nil end

function Dependency.started() end

function Dependency.release() return false end

function Dependency.held() return 0 end

--- Tasks added while the run goes on (a hook's run:add): raise coral.check.user_error to
-- refuse them. The dependency mode takes them.
function Dependency.check_added() end

return Dependency
