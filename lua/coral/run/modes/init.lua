--- The execution modes, one file each in this directory, found by name. A mode decides how the
-- ready set is chosen, what a task's stdin is, what the end of a task means to the graph, and
-- what it refuses; the run does everything else. A mode is a class: the run makes one instance
-- (`mode = M.new(Mode, run)`: self.run is the run) and calls (the dependency mode has the
-- defaults, see its file):
--   mode:init()               set up the instance
--   mode:check(plan)          before anything is written; raise with coral.check.user_error to refuse
--   mode:graph_options()      options of plan:graph() (parallel drops the edges)
--   mode:workers(n)           the number of workers out of max_workers (sequential: 1)
--   mode:pump(free)           start the tasks that may start now (run:start(st)), at most `free`
--   mode:stdio(st, stdin)     stdin and on_stdout of the task's process
--   mode:started(st)          the task's process started
--   mode:release(st, ok)      the task ended; true when the mode tells the graph itself, later
--   mode:held()               tasks handed out by the graph that have not started yet
-- Adding a mode is adding a file here that extends one of these, plus its name in NAMES.
local M = {}

--- The modes, in the order --help lists them.
M.NAMES = { "dependency", "phased", "sequential", "parallel", "pipeline" }

--- The mode class called `name`, or nil and an error naming the modes.
function M.get(name)
  for _, n in ipairs(M.NAMES) do
    if n == name then return require("coral.run.modes." .. name) end
  end
  return nil, string.format("mode must be one of %s, got '%s'", table.concat(M.NAMES, ", "), tostring(name))
end

--- The instance of mode class `Mode` for `run`.
function M.new(Mode, run)
  local mode = setmetatable({ run = run }, Mode)
  mode:init()
  return mode
end

--- A mode class that takes what it does not define from the mode `base`.
function M.extend(base, class)
  class.__index = class
  return setmetatable(class, { __index = require("coral.run.modes." .. base) })
end

--- One line per mode: its name and summary.
function M.summaries()
  local out = {}
  for _, n in ipairs(M.NAMES) do out[#out + 1] = { name = n, summary = M.get(n).summary } end
  return out
end

return M
