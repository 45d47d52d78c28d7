--- `coral status [RUN]` and `coral why TASK`: a run read back through its records (the
-- journal replayed by coral.view.timeline, the plan it recorded, its summary when it ended),
-- so it works for a finished, a running and a killed run alike.
local progress = require "coral.view.progress"
local records = require "coral.records"
local timeline = require "coral.view.timeline"

local M = {}

--- The run `id` (default: the newest) of `project_dir`, as coral.view.timeline loads it; or
-- nil and why not.
function M.load(project_dir, id)
  local dir, err = records.find_run(project_dir, id)
  if not dir then return nil, err end
  return timeline.load(dir)
end

local function task_time(t)
  local sum
  for _, a in ipairs(t.attempts) do sum = (sum or 0) + (a.duration or 0) end
  return sum
end

--- What `coral status --json` prints: the run and each task's state, attempts and time.
function M.json(run)
  local tasks = {}
  for _, id in ipairs(run.order) do
    local t = run.tasks[id]
    tasks[id] = { agent = t.agent, status = t.status, attempts = #t.attempts, duration = task_time(t),
                  error = t.error, depends_on = t.depends_on, added_by = t.added_by }
  end
  return {
    id = run.id, dir = run.dir, status = run.status, plan = run.plan_name, project = run.project,
    mode = run.mode, started = run.started, ended = run.ended, order = run.order, tasks = tasks,
    summary = run.summary, hook_errors = run.hook_errors,
  }
end

local function when(ts)
  return ts and os.date("%Y-%m-%d %H:%M:%S", math.floor(ts)) or "?"
end

-- The first task of `id` and what it depends on (directly or not) whose definition changed
-- since it ran, as a resume will find it (`current`: id -> digests of the recipe's definitions
-- now): that task's id and "cmd and env"; or nil.
local function changed(run, id, current, seen)
  seen = seen or {}
  if seen[id] then return nil end
  seen[id] = true
  local t = run.tasks[id]
  if not (current and t and t.recorded and t.recorded.driver and current[id]) then return nil end
  local uptodate = require "coral.run.uptodate"
  local fields = uptodate.changed(uptodate.digests(t.recorded), current[id])
  if #fields > 0 then return id, uptodate.join(fields) end
  for _, d in ipairs(t.depends_on or {}) do
    local root, what = changed(run, d, current, seen)
    if root then return root, what end
  end
  return nil
end

local why

--- Why `task` will or will not run when the run is resumed; nil and an error for a task the
-- run does not have. `current` (optional): the definitions the recipe declares now (digests by
-- task id, coral.run.uptodate), so that a task edited since it ran is said to run again. A
-- task a hook added says so: resume calls that hook again.
function M.why(run, task, current)
  local text, err = why(run, task, current)
  local t = run.tasks[task]
  if text and t.added_by then
    text = text .. string.format(" (added by the on_success hook of '%s', which resume calls again)", t.added_by)
  end
  return text, err
end

function why(run, task, current)
  local t = run.tasks[task]
  if not t then return nil, string.format("no task '%s' in run %s", task, run.id) end
  local n = #t.attempts
  if t.status == "succeeded" or t.status == "up_to_date" then
    local root, what = changed(run, task, current)
    if root then
      local because = root == task and string.format("its %s changed since it ran", what)
        or string.format("it depends on '%s', whose %s changed since it ran", root, what)
      return string.format("%s will run again on resume: %s (it %s at %s)", task, because,
        t.status == "succeeded" and "succeeded" or "was up to date", when(t.finish))
    end
    if t.status == "up_to_date" then
      return string.format("%s will not run again: it was up to date at %s (its outputs as run %s left them, " ..
        "its inputs not newer, its definition unchanged); --force runs it", task, when(t.finish), tostring(t.since))
    end
    return string.format("%s will not run again: it finished successfully at %s (attempt %d)", task, when(t.finish), n)
  elseif t.status == "failed" then
    return string.format("%s will not run on resume unless --retry-failed is given: it failed at %s with %s " ..
      "after %d attempt%s", task, when(t.finish), t.error or "an error", n, n == 1 and "" or "s")
  elseif t.status == "running" or t.status == "interrupted" then
    local last = t.attempts[n]
    return string.format("%s will run again: it was running (pid %s) when the run stopped; " ..
      "its old process group is killed first", task, tostring(last and last.pid))
  elseif t.status == "retrying" then
    return string.format("%s will run again: it was waiting to retry after attempt %d failed", task, n)
  elseif t.status == "budget_exhausted" then
    return string.format("%s will run on resume if the budget allows it: it was not started because %s " ..
      "(coral resume --budget-usd N sets a new ceiling)", task, t.error or "the run's budget was exhausted")
  end
  local waiting = {}
  for _, d in ipairs(t.depends_on or {}) do
    local dt = run.tasks[d]
    if not dt or (dt.status ~= "succeeded" and dt.status ~= "up_to_date") then
      waiting[#waiting + 1] = d .. " (" .. (dt and #dt.attempts > 0 and dt.status or "not started") .. ")"
    end
  end
  if t.status == "skipped" and t.error == "condition" then
    return string.format("%s was skipped by its condition (when); on resume the condition is asked again%s", task,
      #waiting > 0 and (", once these finish: " .. table.concat(waiting, ", ")) or "")
  end
  if t.status == "skipped" then
    return string.format("%s was skipped because %s; on resume it runs once its dependencies succeed%s", task,
      t.error or "a dependency failed", #waiting > 0 and (": waiting for " .. table.concat(waiting, ", ")) or "")
  end
  local again = t.rerun and (" (it runs again: " .. t.rerun .. ")") or ""
  if #waiting > 0 then
    return task .. " will run on resume once these finish: " .. table.concat(waiting, ", ") .. again
  end
  if t.rerun then return task .. " will run on resume: " .. t.rerun end
  return task .. " will run on resume: it has not started yet and nothing it needs is missing"
end

--- The run as text: a line per task, then the summary when the run ended.
function M.text(run)
  local lines = { string.format("run %s  %s%s", run.id, run.status, run.plan_name and ("  plan " .. run.plan_name) or "") }
  if run.project then lines[#lines + 1] = "project: " .. run.project end
  local width = 11
  for _, id in ipairs(run.order) do width = math.max(width, #run.tasks[id].status) end
  for _, id in ipairs(run.order) do
    local t = run.tasks[id]
    lines[#lines + 1] = string.format("  %-" .. width .. "s %-28s attempts %d  %s%s", t.status, id, #t.attempts,
      progress.fmt_duration(task_time(t)), t.error and ("  " .. t.error) or "")
  end
  if run.summary then
    lines[#lines + 1] = progress.summary_text(run.summary)
  else   -- the summary lists them when there is one
    for _, h in ipairs(run.hook_errors or {}) do lines[#lines + 1] = "  hook error  " .. tostring(h.error) end
  end
  return table.concat(lines, "\n") .. "\n"
end

return M
