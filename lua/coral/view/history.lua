--- `coral history`: the past runs of a project (id, plan, when, outcome, wall time, speedup)
-- and, per agent, the median duration across runs: the figure the runner uses as the estimate
-- of an agent's task when the recipe gives none (from .coral/project_state.yaml).
local fsutil = require "coral.fsutil"
local records = require "coral.records"
local states = require "coral.records.states"
local project_state = require "coral.run.project_state"
local timeline = require "coral.view.timeline"

local M = {}

local fmt = timeline.fmt_seconds

--- The runs of `project_dir`, oldest first: { id, plan, started, status, wall, speedup, tasks, ok }.
function M.runs(project_dir)
  local out = {}
  for _, id in ipairs(records.run_ids(project_dir)) do
    local dir = records.paths(project_dir).runs .. "/" .. id
    local s = records.read_summary(dir)
    local row = { id = id }
    if s and s.total_time_seconds then
      row.plan, row.started, row.status = s.plan, s.started, states.normalize(s.status)
      row.wall, row.speedup = s.total_time_seconds, s.speedup
      row.tasks = math.tointeger(s.tasks or s.total_agents)
      -- done: succeeded, or up to date (as good, without running)
      row.ok = math.tointeger((s.succeeded or s.successful or 0) + (s.up_to_date or 0))
    else
      -- No summary: a run still going, or one that was killed; measure it from its journal.
      local run = timeline.load(dir)
      row.plan, row.started, row.status = run.plan_name, run.started, run.status
      row.wall, row.speedup = run.figures.wall, run.figures.speedup
      row.tasks, row.ok = run.figures.tasks, run.figures.succeeded + run.figures.up_to_date
    end
    out[#out + 1] = row
  end
  return out
end

--- Per agent, from the project state: { agent, runs, median, min, max, failed } over the
-- succeeded entries (as the runner's estimates count them), sorted by agent.
function M.agents(project_dir)
  local state = records.read_state(records.paths(project_dir).state) or {}
  local out = {}
  for agent, a in pairs(type(state.agents) == "table" and state.agents or {}) do
    local durations, failed = project_state.durations(a.history), 0
    for _, h in ipairs(type(a.history) == "table" and a.history or {}) do
      if h.status == "failed" then failed = failed + 1 end
    end
    table.sort(durations)
    out[#out + 1] = { agent = agent, runs = #durations, failed = failed, median = project_state.median(durations),
                      min = durations[1], max = durations[#durations] }
  end
  table.sort(out, function(x, y) return x.agent < y.agent end)
  return out
end

--- The history as text.
function M.text(project_dir)
  local runs, agents = M.runs(project_dir), M.agents(project_dir)
  local lines = {}
  if #runs == 0 then
    lines[#lines + 1] = "no runs in " .. fsutil.absolute(project_dir) .. "/.coral/runs"
  else
    lines[#lines + 1] = string.format("%-28s %-16s %-19s %-11s %6s %8s %8s", "run", "plan", "started", "outcome",
      "tasks", "wall", "speedup")
    for _, r in ipairs(runs) do
      lines[#lines + 1] = string.format("%-28s %-16s %-19s %-11s %6s %8s %8s", r.id, r.plan or "-",
        r.started and os.date("%Y-%m-%d %H:%M:%S", math.floor(r.started)) or "-", r.status or "-",
        r.tasks and string.format("%d/%d", r.ok or 0, r.tasks) or "-", fmt(r.wall),
        r.speedup and string.format("%.2fx", r.speedup) or "-")
    end
  end
  if #agents > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = string.format("%-28s %5s %8s %8s %8s %7s", "agent (succeeded tasks)", "runs", "median", "min",
      "max", "failed")
    for _, a in ipairs(agents) do
      lines[#lines + 1] = string.format("%-28s %5d %8s %8s %8s %7d", a.agent, a.runs, fmt(a.median), fmt(a.min),
        fmt(a.max), a.failed)
    end
    lines[#lines + 1] = "the median is the estimate the runner uses for an agent's task without one of its own"
  end
  return table.concat(lines, "\n") .. "\n"
end

return M
