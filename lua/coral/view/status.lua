--- Reading a run back: `coral status [RUN]`. Uses summary.json when the run finished, else
-- rebuilds the state from the journal (a run still going, or one that was killed).
local cjson = require "cjson.safe"
local fsutil = require "coral.fsutil"
local progress = require "coral.view.progress"
local records = require "coral.records"
local uv = require "luv"

local M = {}

--- Run ids of a project, oldest first.
function M.run_ids(project_dir)
  local ids = {}
  local handle = uv.fs_scandir(records.paths(project_dir).runs)
  while handle do
    local name, kind = uv.fs_scandir_next(handle)
    if not name then break end
    if kind == "directory" then ids[#ids + 1] = name end
  end
  table.sort(ids)
  return ids
end

--- Reads the journal of a run: the list of events. A line cut short by a crash is ignored.
function M.journal(run_dir)
  local events = {}
  local f = io.open(run_dir .. "/journal.jsonl", "rb")
  if not f then return events end
  for line in f:lines() do
    local e = cjson.decode(line)
    if type(e) == "table" then events[#events + 1] = e end
  end
  f:close()
  return events
end

--- The state of run `id` (default: the newest) in `project_dir`.
function M.load(project_dir, id)
  local ids = M.run_ids(project_dir)
  if #ids == 0 then return nil, "no runs in " .. fsutil.absolute(project_dir) .. "/.coral/runs" end
  id = id or ids[#ids]
  local dir = records.paths(project_dir).runs .. "/" .. id
  if not uv.fs_stat(dir) then return nil, "no run '" .. id .. "' in " .. fsutil.absolute(project_dir) end
  local run = { id = id, dir = dir, tasks = {}, order = {} }
  local summary = fsutil.read(dir .. "/summary.json")
  run.summary = summary and cjson.decode(summary) or nil
  for _, e in ipairs(M.journal(dir)) do
    if e.event == "run" then run.started, run.plan, run.project, run.total = e.t, e.plan, e.project, e.tasks end
    local id_ = e.task
    if id_ then
      local t = run.tasks[id_]
      if not t then
        t = { id = id_, agent = e.agent, attempts = 0, status = "pending" }
        run.tasks[id_] = t
        run.order[#run.order + 1] = id_
      end
      if e.event == "start" then t.status, t.attempts, t.started, t.pid = "running", e.attempt, t.started or e.t, e.pid
      elseif e.event == "end" then
        t.status = e.outcome == "success" and "completed" or "failed"
        t.duration, t.error, t.finished = (t.duration or 0) + (e.duration or 0), e.error, e.t
      elseif e.event == "retry" then t.status = "retrying"
      elseif e.event == "skip" then t.status, t.error = "skipped", e.reason end
    end
    if e.event == "done" then run.status = e.status end
  end
  run.status = run.status or (run.summary and run.summary.status) or "running or killed"
  return run
end

--- Why `task` will or will not run when the run is resumed. `deps`: its dependencies, if known.
function M.why(run, task, deps)
  local t = run.tasks[task]
  local when = function(ts) return ts and os.date("%Y-%m-%d %H:%M:%S", math.floor(ts)) or "?" end
  if t and t.status == "completed" then
    return string.format("%s will not run again: it finished successfully at %s (attempt %d)", task, when(t.finished), t.attempts)
  elseif t and t.status == "failed" then
    return string.format("%s will not run on resume unless --retry-failed is given: it failed at %s with %s after %d attempt(s)",
      task, when(t.finished), t.error or "an error", t.attempts)
  elseif t and t.status == "running" then
    return string.format("%s will run again: it was running (pid %s) when the run stopped; its old process group is killed first",
      task, tostring(t.pid))
  elseif t and t.status == "retrying" then
    return string.format("%s will run again: it was waiting to retry after attempt %d failed", task, t.attempts)
  end
  local waiting = {}
  for _, d in ipairs(deps or {}) do
    local dt = run.tasks[d]
    if not dt or dt.status ~= "completed" then waiting[#waiting + 1] = d .. " (" .. (dt and dt.status or "not started") .. ")" end
  end
  if t and t.status == "skipped" then
    return string.format("%s was skipped because %s; on resume it runs once its dependencies succeed%s", task,
      t.error or "a dependency failed", #waiting > 0 and (": waiting for " .. table.concat(waiting, ", ")) or "")
  end
  if #waiting > 0 then return task .. " will run on resume once these finish: " .. table.concat(waiting, ", ") end
  return task .. " will run on resume: it has not started yet and nothing it needs is missing"
end

function M.text(run)
  local lines = { string.format("run %s  %s%s", run.id, run.status, run.plan and ("  plan " .. run.plan) or "") }
  if run.project then lines[#lines + 1] = "project: " .. run.project end
  for _, id in ipairs(run.order) do
    local t = run.tasks[id]
    lines[#lines + 1] = string.format("  %-10s %-28s attempts %d  %s%s", t.status, id, t.attempts,
      progress.fmt_duration(t.duration), t.error and ("  " .. t.error) or "")
  end
  if run.summary then
    lines[#lines + 1] = progress.summary_text(run.summary)
  end
  return table.concat(lines, "\n") .. "\n"
end

return M
