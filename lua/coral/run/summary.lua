--- The summary of a run (summary.json, the text `coral run` prints, the `done` JSON line):
-- per task its state, attempts, times, usage and cost; for the run its counts, wall time,
-- speedup over the measured sequential time, and the measured critical path.
local budget = require "coral.run.budget"
local dag = require "coral.dag"

local M = {}

--- The measured critical path: the chain, along dependencies, of the time each task added
-- after its dependencies had ended (from the later of its first start and their last end to
-- its own end; retries and backoff count). For a task that waited for its dependencies this
-- is its span; a pipeline consumer, which runs beside its upstream, adds only what it ran
-- after it, so the path is never longer than the run. `span(id)`: a task's first start and
-- last end, or nothing for a task that did not run (a function, not a table of them: at the
-- end of a 100,000-task run that table was 13 MB); `tasks`: the plan's tasks (id,
-- depends_on). Computed by coral.dag, without recursion.
---@return string[] path, number seconds
function M.critical_path(tasks, span)
  local g = dag.new()
  local opts = {}   -- one for every add (read by it): 100,000 tasks, 8 MB less at the run's end
  for _, t in ipairs(tasks) do
    local weight = 0
    local from, finish = span(t.id)
    if from then
      for _, d in ipairs(t.depends_on) do
        local _, up_finish = span(d)
        if up_finish and up_finish > from then from = up_finish end
      end
      weight = math.max(0, finish - from)
    end
    opts.weight = weight
    assert(g:add(t.id, t.depends_on, opts))
  end
  assert(g:validate())
  local path, length = g:critical_path()
  g:close()
  -- Tasks that never ran add nothing: they are not on the path that was measured.
  while #path > 0 and span(path[#path]) == nil do path[#path] = nil end
  while #path > 0 and span(path[1]) == nil do table.remove(path, 1) end
  return path, length
end

-- Token usage and cost, where the agent CLI reports them, summed over the attempts.
local function usage_of(attempts)
  local usage, cost
  for _, a in ipairs(attempts) do
    if type(a.usage) == "table" then
      usage = usage or {}
      for k, v in pairs(a.usage) do
        if math.type(v) then usage[k] = (usage[k] or 0) + v end
      end
    end
    if a.cost_usd then cost = (cost or 0) + a.cost_usd end
  end
  return usage, cost
end

-- What a task's state says at the run's end: its status (a task never reached is skipped), the
-- time its attempts took, its last attempt, and its usage and cost.
local function facts(st)
  local duration = 0
  for _, a in ipairs(st.attempts) do duration = duration + a.duration end
  local usage, cost = usage_of(st.attempts)
  return st.status == "pending" and "skipped" or st.status, duration, st.attempts[#st.attempts], usage, cost
end

-- A task's entry in `results`.
local function result_of(t, st, status, duration, last, usage, cost)
  -- The fields most tasks have in the constructor, which sizes the table for them (with
  -- all 20 there, a nil one still counts: 32 slots a task, 100 MB for 100,000 tasks); the
  -- rest only when the task has them.
  local r = {
    agent = t.agent, task = t.task, status = status, attempts = #st.attempts,
    exit_code = last and last.code, duration_seconds = duration, output_file = st.output_path,
    started = st.first_start, finished = st.finish, driver = st.driver_name,
  }
  r.signal, r.error, r.rate_limited = last and last.signal, st.error, st.rate_limits
  r.usage, r.cost_usd = usage, cost
  -- a worktree task's result: its branch and what it changed against its base
  r.branch, r.commit = st.branch, st.commit
  if st.changes then
    r.files_changed, r.lines_added, r.lines_removed = st.changes.files, st.changes.added, st.changes.removed
  end
  return r
end

-- Whether a task's status counts as a success (`results = "unsuccessful"` leaves it out).
local function successful(status) return status == "succeeded" or status == "up_to_date" end

--- Calls `emit(result, id)` for each task of `run`, in the plan's order, with its entry in
-- `results`, made for the call: summary.json's results, written without holding them all
-- (M.of's `which`).
function M.each_result(run, emit)
  for _, t in ipairs(run.plan.tasks) do
    local st = run.state[t.id]
    emit(result_of(t, st, facts(st)), t.id)
  end
end

--- The summary of `run` (coral.run's Run, at its end). `which`: the tasks its `results` holds,
-- "all" (the default) or "unsuccessful" (those that neither succeeded nor were up to date:
-- the command line, which prints those and nothing else of the results; summary.json holds
-- every task either way, through M.each_result). A result is ~600 bytes: 60 MB for 100,000 tasks.
function M.of(run, which)
  local every = which ~= "unsuccessful"
  -- A resumed run counts the time of its earlier sessions too.
  local wall = run.finish_time - run.start_time + (run.prior_wall or 0)
  local sequential, succeeded, failed, skipped, unfinished, by_condition, up_to_date = 0, 0, 0, 0, 0, 0, 0
  local budget_exhausted = 0
  local results, total_cost = {}, nil
  local total_tokens, by_role, by_driver = nil, {}, {}
  local function add_spend(into, key, cost, tokens)
    if not key or (not cost and not tokens) then return end
    local e = into[key] or { usd = 0, tokens = 0, tasks = 0 }
    into[key] = e
    e.usd, e.tokens, e.tasks = e.usd + (cost or 0), e.tokens + (tokens or 0), e.tasks + 1
  end
  for _, t in ipairs(run.plan.tasks) do
    local st = run.state[t.id]
    local status, duration, last, usage, cost = facts(st)
    sequential = sequential + duration
    if status == "succeeded" then succeeded = succeeded + 1
    elseif status == "up_to_date" then up_to_date = up_to_date + 1
    elseif status == "skipped" then
      skipped = skipped + 1
      if st.by_condition then by_condition = by_condition + 1 end
    elseif status == "interrupted" then unfinished = unfinished + 1
    elseif status == "budget_exhausted" then budget_exhausted = budget_exhausted + 1
    else failed = failed + 1 end
    if cost then total_cost = (total_cost or 0) + cost end
    local tokens = usage and budget.tokens(usage) or nil
    if tokens then total_tokens = (total_tokens or 0) + tokens end
    add_spend(by_role, t.agent, cost, tokens)
    add_spend(by_driver, st.driver_name, cost, tokens)
    if every or not successful(status) then
      results[t.id] = result_of(t, st, status, duration, last, usage, cost)
    end
  end
  local total = #run.plan.tasks
  local ws = run.workspace_result
  local _, critical_seconds = M.critical_path(run.plan.tasks, function(id)
    local st = run.state[id]
    if st and st.first_start and st.finish then return st.first_start, st.finish end
  end)
  return {
    run_id = run.records.id, run_dir = run.records.dir, plan = run.plan.name,
    project = run.description, mode = run.mode.name, max_workers = run.max_workers,
    -- a task its condition skipped (and what depended on it) is the plan's choice, not a failure;
    -- an on_success hook that failed is the recipe's mistake: what it meant to add did not run
    status = run.interrupted and "interrupted"
      -- worktree results that do not merge leave no one result: that is a failure too
      or ((failed + skipped - by_condition + unfinished + budget_exhausted == 0 and not run.hook_errors and not (ws and ws.error))
          and "succeeded" or "failed"),
    hook_errors = run.hook_errors,
    tasks = total, succeeded = succeeded, failed = failed, skipped = skipped, interrupted_tasks = unfinished,
    skipped_by_condition = by_condition, up_to_date = up_to_date, budget_exhausted = budget_exhausted,
    -- a task up to date is as good as one that succeeded
    success_rate = total > 0 and (succeeded + up_to_date) / total * 100 or 0,
    total_time_seconds = wall, sequential_estimate_seconds = sequential,
    time_saved_seconds = sequential - wall,
    efficiency_gain_percent = sequential > 0 and (sequential - wall) / sequential * 100 or 0,
    speedup = wall > 0 and sequential / wall or 0,
    phases = #run.phases, max_parallel = run.max_parallel,
    critical_path_seconds = critical_seconds,
    worker_utilisation_percent = wall > 0 and run.busy / (wall * run.max_workers) * 100 or 0,
    interrupted = run.interrupted or false, stopped = run.stopping or nil,
    started = run.start_time, finished = run.finish_time,
    total_cost_usd = total_cost, total_tokens = total_tokens, results = results,
    spend = (total_cost or total_tokens) and { by_role = by_role, by_driver = by_driver } or nil,
    budget = run.budget and run.budget:summary() or nil,
    limits = run.limits and #run.limits.changes > 0 and run.limits.changes or nil,
    workspace = ws and { base = ws.base, base_branch = ws.base_branch, result = ws.result, result_branch = ws.branch,
                         error = ws.error, conflicts = ws.conflicts } or nil,
  }
end

return M
