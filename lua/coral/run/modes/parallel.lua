--- Parallel mode: every task at once (up to max_workers), the plan's dependencies ignored.
local Parallel = require("coral.run.modes").extend("dependency", {
  name = "parallel",
  label = "PARALLEL",
  summary = "every task at once, dependencies ignored",
})

function Parallel.check(_, plan)
  for _, t in ipairs(plan.tasks) do
    if #t.depends_on > 0 then
      io.stderr:write("coral: warning: parallel mode ignores the plan's dependencies\n")
      return
    end
  end
end

function Parallel.graph_options() return { no_edges = true } end

return Parallel
