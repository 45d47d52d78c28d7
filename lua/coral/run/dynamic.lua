--- Tasks added while a run goes on. A task's `on_success(result, run)` hook is called once
-- when the task succeeds, before its dependents are released, and may `run:add(...)` tasks;
-- Run:add is the mechanism under it (a hook, and whatever else adds to a live run, go through
-- it). Added tasks are checked as a plan is, and join the plan, the graph, the run's state and
-- its phases all or nothing; each is journaled (an `add` event with its definition) before
-- anything acts on it. A resumed run calls the hooks of the tasks it restores as succeeded
-- again, so what they added comes back with its functions, and rebuilds from the journal any
-- added task that no hook added back.
local check = require "coral.check"
local journal = require "coral.records.journal"
local plan_mod = require "coral.plan"

local M = {}

-- A value as JSON can keep it: strings, booleans, finite numbers and tables of them.
local function plain(v, depth)
  local kind = type(v)
  if kind == "string" or kind == "boolean" then return v end
  if kind == "number" then return (v == v and v ~= math.huge and v ~= -math.huge) and v or nil end
  if kind ~= "table" or depth > 16 then return nil end
  local out = {}
  if #v > 0 then
    for _, x in ipairs(v) do out[#out + 1] = plain(x, depth + 1) end
  else
    for k, x in pairs(v) do
      if type(k) == "string" or math.type(k) then out[tostring(k)] = plain(x, depth + 1) end
    end
  end
  return out
end

-- What the journal keeps of a task: its options but its functions, and the names of what it
-- cannot keep (`when`, `on_success`, a driver given as a table).
local function definition(t)
  local spec, lost = {}, {}
  for k in pairs(plan_mod.TASK_OPTIONS) do
    local v = t[k]
    if type(v) == "function" or (k == "driver" and type(v) == "table") then
      lost[#lost + 1] = k
    elseif v ~= nil then
      spec[k] = plain(v, 0)
    end
  end
  table.sort(lost)
  return spec, lost
end

local function absolute_outputs(run, task)
  local outputs = {}
  for i, o in ipairs(task.outputs or {}) do outputs[i] = run.project_dir .. "/" .. o end
  return outputs
end

local function duration_of(attempts)
  local sum = 0
  for _, a in ipairs(attempts) do sum = sum + (a.duration or 0) end
  return sum
end

-- What a hook is given of its task, as a `when` condition sees a dependency, and more.
local function result_of(run, st)
  return { id = st.task.id, status = st.status, output = st.output_path, outputs = absolute_outputs(run, st.task),
           attempts = #st.attempts, duration = duration_of(st.attempts) }
end

-- A resume's warning, before the run's first event: as coral's other warnings.
local function warn(text)
  io.stderr:write("coral: warning: ", text, "\n")
end

-- Records an event of the run. A resume rebuilds before its session's `run` event: its events
-- wait for it (M.started), so that they count in this session's time, not in the last one's.
local function emit(run, name, fields)
  if run.deferred_events then
    local list = run.deferred_events
    list[#list + 1] = { name, fields }
  else
    run:emit(name, fields)
  end
end

-- A task a hook adds could not start before the hook's task succeeded: it depends on it (the
-- tasks that depend on another of the batch through that one), so it is given its output, and
-- the graph and the critical path show why it waited.
local function depend_on_adder(batch, by)
  local in_batch = {}
  for _, t in ipairs(batch) do in_batch[t.id] = true end
  for _, t in ipairs(batch) do
    local root = true
    for _, d in ipairs(t.depends_on) do
      if in_batch[d] or d == by then root = false end
    end
    if root then
      t.depends_on = { table.unpack(t.depends_on) }
      t.depends_on[#t.depends_on + 1] = by
    end
  end
end

--- Adds tasks to `run`: `items` a list of coral.task objects or raw task tables (or, with
-- opts.prepared, tasks made by plan:prepare). All or nothing: a task option's mistake, a
-- duplicate id, an unknown dependency, a cycle, or a mode that takes no added task return
-- nil and the error ("file:line: message", the line that declared the culprit). opts: where
-- (blamed for a raw table), by (the task whose hook adds them), pump (start what may start
-- now), rebuilding (a resume bringing them back: the plan is written once at the end),
-- journaled (ids whose `add` event the journal already has). Returns the list of their ids.
function M.add(run, items, opts)
  opts = opts or {}
  if run.finish_time then return nil, "the run is over: no task can be added to it" end
  local plan = run.plan
  local ok, batch = pcall(function()
    local list = opts.prepared and items or plan:prepare(items, opts.where, {})
    if #list == 0 then return list end
    if opts.by then depend_on_adder(list, opts.by) end
    plan:check_added(list)
    run.mode:check_added(list)
    for _, t in ipairs(list) do run:preflight_task(t) end
    return list
  end)
  if not ok then
    if check.is_user_error(batch) then return nil, tostring(batch) end
    error(batch, 0)
  end
  local ids = {}
  if #batch == 0 then return ids end
  -- The journal first: a resume rebuilds what it names.
  for i, t in ipairs(batch) do
    ids[i] = t.id
    if not (opts.journaled and opts.journaled[t.id]) then
      local spec, lost = definition(t)
      emit(run, "add", { task = t.id, agent = t.agent, by = opts.by, where = t.where, spec = spec,
                        lost = #lost > 0 and lost or nil })
    end
  end
  local g = run.g
  local graph_options = run.mode:graph_options()
  local no_edges = graph_options and graph_options.no_edges
  for _, t in ipairs(batch) do
    -- checked above: the graph cannot refuse them
    assert(g:add(t.id, no_edges and {} or t.depends_on, { weight = plan:estimate(t), priority = t.priority or 0 }))
  end
  assert(g:validate())
  -- Phases: not one that is over, and after the task whose hook adds them.
  local floor = run:current_phase()
  if opts.by and run.phase_of[opts.by] then floor = math.max(floor, run.phase_of[opts.by] + 1) end
  local phases = plan:add(batch, floor)
  run.phases = plan:phases()
  for i, t in ipairs(batch) do
    run.phase_of[t.id] = phases[i]
    run.state[t.id] = { task = t, status = "pending", attempts = {}, added_by = opts.by }
  end
  -- A task behind a dependency that failed or was skipped is skipped at once by the graph.
  for _, t in ipairs(batch) do
    if g:state(t.id) == "skipped" then
      local st, why = run.state[t.id], "a dependency did not succeed"
      for _, d in ipairs(t.depends_on) do
        local dst = run.state[d]
        if dst.status == "failed" then
          why = string.format("dependency '%s' failed", d)
          break
        elseif dst.status == "skipped" then
          why = string.format("dependency '%s' was skipped (%s)", d, tostring(dst.error))
          st.by_condition = dst.by_condition
          break
        end
      end
      run:skip(st, why)
    end
  end
  if not opts.rebuilding then run:write_plan() end
  if opts.pump then run:pump() end
  return ids
end

-- {{{ what a hook sees as `run`

local Hook = {}
Hook.__index = Hook

--- run:add(task_or_list, ...): tasks to add when the hook returns (all of them, or none if it
-- raises or the run refuses them). Returns their ids.
function Hook:add(...)
  if self.closed then
    check.fail(string.format("run:add: the on_success hook of task '%s' has returned", self.by), 2)
  end
  local items, n = {}, select("#", ...)
  if n == 0 then check.fail("run:add: expected a task or a list of tasks", 2) end
  for i = 1, n do
    local v = select(i, ...)
    if type(v) ~= "table" then
      check.fail(string.format("run:add: argument %d must be a task or a list of tasks, got %s", i, type(v)), 2)
    end
    if getmetatable(v) == plan_mod.Task or v.agent ~= nil or v.id ~= nil then
      items[#items + 1] = v
    else
      for _, x in ipairs(v) do items[#items + 1] = x end
    end
  end
  local ids = {}
  for i, t in ipairs(self.run.plan:prepare(items, check.where(1), self.batch)) do ids[i] = t.id end
  return table.unpack(ids)
end

--- run:task(id): { id, status, output, attempts, error } of a task of the run, or nil. On
-- resume (the hook called again before the run goes on): as the journal recorded it.
function Hook:task(id)
  local st = self.run.state[id]
  if not st then return nil end
  local past = self.past and self.past.tasks[id]
  if past then
    return { id = id, status = past.status, output = past.output, attempts = #past.attempts, error = past.error }
  elseif self.past then
    return { id = id, status = "pending", attempts = 0 }
  end
  return { id = id, status = st.status, output = st.output_path, attempts = #st.attempts, error = st.error }
end

-- }}}

--- Calls the on_success hook of `st`'s task (it has just succeeded, or a resume restored it:
-- then `result` is the one it had). What it adds joins the run when it returns. A hook that
-- raises, or whose tasks the run refuses, adds nothing: the task stays succeeded, a warning
-- and a `hook_error` event name the hook and its error, and the run goes on (it will end
-- failed). opts: rebuilding, journaled (as M.add takes them), past (the journal's replay).
function M.on_success(run, st, result, opts)
  opts = opts or {}
  local task = st.task
  local hook = setmetatable({ run = run, by = task.id, batch = {}, past = opts.past }, Hook)
  local ok, err = pcall(task.on_success, result or result_of(run, st), hook)
  hook.closed = true
  local what
  if not ok then
    what = "raised an error: " .. tostring(err)
  elseif #hook.batch > 0 then
    local ids, aerr = M.add(run, hook.batch, { prepared = true, by = task.id, rebuilding = opts.rebuilding,
                                              journaled = opts.journaled })
    if not ids then what = "added tasks the run refused: " .. aerr end
  end
  if not what then return true end
  local info = debug.getinfo(task.on_success, "S")
  local where = info.short_src .. ":" .. info.linedefined
  local text = string.format("on_success of task '%s' (%s) %s", task.id, where, what)
  run.hook_errors = run.hook_errors or {}
  run.hook_errors[#run.hook_errors + 1] = { task = task.id, error = text }
  emit(run, "hook_error", { task = task.id, hook = "on_success", where = where, error = text })
  return false
end

-- The result a hook had, from the journal's replay of its task.
local function result_from(run, task, past)
  return { id = task.id, status = past.status, output = past.output or run.records:task_path(task.id, "output"),
           outputs = absolute_outputs(run, task), attempts = #past.attempts, duration = duration_of(past.attempts) }
end

-- An added task that no hook added back this time: from its journaled definition. Returns
-- what it lost ("id (when)") if it will run again without it.
local function rebuild_from_journal(run, e, journaled, past)
  local spec = {}
  for k, v in pairs(e.spec) do spec[k] = v end
  for _, k in ipairs { "retries", "priority" } do   -- JSON numbers come back as floats
    if type(spec[k]) == "number" then spec[k] = math.tointeger(spec[k]) or spec[k] end
  end
  spec.id = e.task
  local by = type(e.by) == "string" and e.by or nil
  local ids, err = M.add(run, { spec }, { where = type(e.where) == "string" and e.where or nil, by = by,
                                          rebuilding = true, journaled = journaled })
  if not ids then
    warn(string.format("task '%s', added during the run, cannot be rebuilt from the journal: %s", e.task, err))
  elseif type(e.lost) == "table" and #e.lost > 0 and not (past and past.status == "succeeded") then
    return string.format("%s (%s)", e.task, table.concat(e.lost, ", "))
  end
end

--- On resume, before the journal's states are restored: brings back the tasks the run added.
-- The journal is walked in its order, which is the order things happened: a task that ended
-- succeeded has its on_success hook called again with the result it had (what it adds comes
-- back with its functions); a task the journal says was added, and that no hook has added back
-- by then, is rebuilt from its journaled definition, without its functions.
function M.rebuild(run)
  run.deferred_events = {}
  local events = journal.read(run.records.dir)
  local journaled, any = {}, false
  for _, e in ipairs(events) do
    if e.event == "add" and type(e.task) == "string" then journaled[e.task], any = true, true end
  end
  local past, called, before, lost = journal.replay(events), {}, #run.plan.tasks, {}
  for _, e in ipairs(events) do
    if ((e.event == "end" and e.outcome == "succeeded") or e.event == "up_to_date") and not called[e.task] then
      local task, pt = run.plan.by_id[e.task], past.tasks[e.task]
      if task and task.on_success and pt and (pt.status == "succeeded" or pt.status == "up_to_date") then
        called[e.task] = true
        M.on_success(run, run.state[e.task], result_from(run, task, pt),
                     { rebuilding = true, journaled = journaled, past = past })
      end
    elseif any and e.event == "add" and journaled[e.task] and not run.plan.by_id[e.task] and type(e.spec) == "table" then
      lost[#lost + 1] = rebuild_from_journal(run, e, journaled, past.tasks[e.task])
    end
  end
  if #lost > 0 then
    warn("no hook added these tasks back, so they are rebuilt from the journal without their functions: " ..
      table.concat(lost, ", "))
  end
  if #run.plan.tasks > before then run:write_plan() end
end

--- The run's session has begun (its `run` event is written): records what a resume's rebuild
-- held back, before anything acts on it.
function M.started(run)
  local list = run.deferred_events
  run.deferred_events = nil
  for _, e in ipairs(list or {}) do run:emit(e[1], e[2]) end
end

return M
