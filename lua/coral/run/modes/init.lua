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
--   mode:upcoming(n)          the ids of the (at most n) tasks pump() would start next, not started
--   mode:stdio(st, stdin)     stdin and on_stdout of the task's process
--   mode:started(st)          the task's process started
--   mode:release(st, ok)      the task ended; true when the mode tells the graph itself, later
--   mode:held()               tasks handed out by the graph that have not started yet
--   mode:check_added(tasks)   tasks added while the run goes on; raise a user error to refuse
--   mode:cut_output(st, cut)  optional: an attempt's files are to be cut to output_cap, now or later
--   mode:finish()             optional: the run is over
-- Adding a mode is adding a file here that extends one of these: it is found by its name.
local host = require "coral.host"
local uv = require "luv"

local M = {}

local DIR = "lua/coral/run/modes/"

--- The modes: the files of this directory (built in, and in a --dev / CORAL_LUA_PATH tree),
-- the default first, then by name.
function M.names()
  local found = {}
  for _, path in ipairs(host.embedded_files(DIR)) do
    local name = path:match("^" .. DIR .. "([%w_]+)%.lua$")
    if name and name ~= "init" then found[name] = true end
  end
  local handle = host.source_root and uv.fs_scandir(host.source_root .. "/" .. DIR)
  while handle do
    local file = uv.fs_scandir_next(handle)
    if not file then break end
    local name = file:match("^([%w_]+)%.lua$")
    if name and name ~= "init" then found[name] = true end
  end
  local names = {}
  for name in pairs(found) do names[#names + 1] = name end
  table.sort(names, function(a, b)
    if (a == "dependency") ~= (b == "dependency") then return a == "dependency" end
    return a < b
  end)
  return names
end

--- The mode class called `name`, or nil and an error naming the modes.
function M.get(name)
  local names = M.names()
  for _, n in ipairs(names) do
    if n == name then return (require("coral.run.modes." .. name)) end
  end
  return nil, string.format("mode must be one of %s, got '%s'", table.concat(names, ", "), tostring(name))
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

return M
