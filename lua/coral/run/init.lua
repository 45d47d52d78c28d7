--- The runner: executes a plan. Scheduling comes from coral.dag (a task starts the moment its
-- own dependencies finish, longest remaining chain first, up to max_workers at once) through an
-- execution mode (coral.run.modes), processes from an executor (coral.exec), and every state
-- change is recorded (coral.records: journal, joblog, activity tracker, scratchpad, project
-- state) before coral acts on it. The parts:
--   run/options.lua        the runner's options, declared once
--   run/init.lua           this file: coral.runner, execute_plan, the pump, stop, signals
--   run/attempt.lua        one attempt: its driver, prompt, process, end, retry and backoff
--   run/standby.lua        the task next in line, started by coral.proc at the next clean exit
--   run/modes/*.lua        the execution modes
--   run/project_state.lua  each agent's history in .coral/project_state.yaml, and estimates
--   run/resume.lua         the run lock, and a run rebuilt from its journal
--   run/script.lua         a script that calls execute_plan itself, and its resume
--   run/summary.lua        the summary of a run
local admission = require "coral.run.admission"
local attempt = require "coral.run.attempt"
local budget = require "coral.run.budget"
local check = require "coral.check"
local control = require "coral.control"
local drivers = require "coral.drivers"
local dynamic = require "coral.run.dynamic"
local exec = require "coral.exec"
local fsutil = require "coral.fsutil"
local host = require "coral.host"
local limits = require "coral.run.limits"
local live_usage = require "coral.run.usage"
local modes = require "coral.run.modes"
local options = require "coral.run.options"
local plan_mod = require "coral.plan"
local proc = require "coral.proc"
local progress = require "coral.view.progress"
local project_state = require "coral.run.project_state"
local records = require "coral.records"
local resume = require "coral.run.resume"
local standby = require "coral.run.standby"
local script = require "coral.run.script"
local states = require "coral.records.states"
local summary_mod = require "coral.run.summary"
local uptodate = require "coral.run.uptodate"
local uv = require "luv"
local workspaces = require "coral.run.workspaces"

local M = {}

--- The execution modes by their old constant names (coral.modes.PIPELINE == "pipeline").
M.modes = {}
for _, name in ipairs(modes.names()) do M.modes[name:upper()] = name end
M.modes.DEPENDENCY_BASED = "dependency"

local Runner = {}
Runner.__index = Runner

--- Creates a runner. Its options and their defaults are declared in coral.run.options
-- (docs/runner.md lists them).
function M.new(opts)
  local err = options.check(opts)
  if err then check.fail(err, 2) end
  local self = setmetatable({}, Runner)
  for _, o in ipairs(options.LIST) do self[o.key] = options.default(o.key) end
  for k, v in pairs(opts or {}) do self[k] = v end
  local _, derr = drivers.get(self.driver, self.project_dir)
  if derr then check.fail("coral.runner: " .. derr, 2) end
  return self
end

--- A plan from the recipe library (or a recipe file) for a project description.
function Runner:create_parallel_plan(recipe_name, description)
  -- the API of the tool coral replaces: an unknown type gets the default plan, with a warning
  return require("coral.recipes").plan(recipe_name, description, { default_plan = true })
end

-- {{{ one run

local Run = {}
Run.__index = Run
M.Run = Run

--- Records an event (the journal first), then tells the progress view (now, or at
-- tell_views) and on_event.
function Run:emit(name, fields)
  fields = fields or {}
  local held = self.held_starts
  if held and name == "end" and held[fields.task] then self:emit_held_starts() end   -- its own first
  fields.event = name
  fields.t = fields.t or fsutil.now()
  self.records:event(name, fields)
  local later = self.views_later
  if later then later[#later + 1] = fields else self.reporter:event(fields, self) end
  if self.runner.on_event then self.runner.on_event(fields) end
  if self.control then self.control:on_event(fields) end   -- live control: its subscribers
  -- a stop or a live-control action may hold what the standby would start (run/standby.lua)
  if self.standby and (name == "control" or name == "stopping") then standby.disarm(self) end
  if self.held_starts and name == "end" then self:emit_held_starts() end
end

--- The start of a task that coral.proc's standby started at another task's exit is told after
-- that exit's end (the next end): in the records and to every listener, no more than
-- max_workers tasks run at once, as on the machine. Its time is the start's own.
function Run:hold_start(fields)
  fields.t = fsutil.now()
  local held = self.held_starts or {}
  self.held_starts = held
  held[#held + 1] = fields
  held[fields.task] = true
end

function Run:emit_held_starts()
  local held = self.held_starts
  self.held_starts = nil
  for _, fields in ipairs(held or {}) do self:emit("start", fields) end
end

--- Takes down the standby (run/standby.lua): its task will not start at the next clean exit.
function Run:disarm_standby()
  standby.disarm(self)
end

--- From now until tell_views, the progress view gets the events afterwards, in order: an
-- attempt's end and the starts it frees are journaled at once, drawn after those starts.
-- Returns true when this call began the deferral (its caller then calls tell_views).
function Run:defer_views()
  if self.views_later then return false end
  self.views_later = {}
  return true
end

function Run:tell_views()
  local later = self.views_later
  self.views_later = nil
  for _, fields in ipairs(later or {}) do self.reporter:event(fields, self) end
end

--- Writes plan.json: the plan as it runs now, with each task's definition (a resume compares
-- them, run/uptodate.lua).
function Run:write_plan()
  local runner = self.runner
  self.records:write_plan(self.plan, function(t) return uptodate.recorded(t, runner) end)
end

--- Starts the first (or next) attempt of a task.
function Run:start(st)
  attempt.start(self, st)
end

--- Adds tasks to the run while it goes on (coral.run.dynamic): a task, or a list of tasks
-- (coral.task objects or raw task tables), all or nothing. Returns the list of their ids, or
-- nil and what is wrong ("file:line: message").
function Run:add(tasks)
  if getmetatable(tasks) == plan_mod.Task or (type(tasks) == "table" and (tasks.agent or tasks.id)) then
    tasks = { tasks }
  end
  if type(tasks) ~= "table" then return nil, "run:add: expected a task or a list of tasks, got " .. type(tasks) end
  return dynamic.add(self, tasks, { where = check.where(1), pump = true })
end

--- Calls the on_success hook of a task that has just succeeded (coral.run.dynamic).
function Run:on_success(st)
  dynamic.on_success(self, st)
end

function Run:group_label(task)
  local p = self.phase_of[task.id]
  return p and ("Phase " .. p) or "-"
end

--- The first phase with a task not yet ended. A task that ended stays ended, so the position
-- (phase, task in it) only moves forward: amortised O(1) a call, asked on every pump in phased
-- mode. (Whatever makes an ended task run again must reset phase_at and phase_task_at.)
function Run:current_phase()
  local p, i = self.phase_at or 1, self.phase_task_at or 1
  local phases = self.phases
  while p <= #phases do
    local ids = phases[p]
    while i <= #ids and states.ended(self.state[ids[i]].status) do i = i + 1 end
    if i <= #ids then break end
    p, i = p + 1, 1
  end
  self.phase_at, self.phase_task_at = p, i
  return math.min(p, #phases)
end

--- Tells the graph that a task ended and applies the failure policy. `deferred`: the mode
-- held the release back and gives it now.
function Run:release(st, ok, deferred)
  if not deferred and self.mode:release(st, ok) then return end
  local id = st.task.id
  if ok then
    self.g:done(id, true)
  elseif self.runner.on_failure == "continue" then
    self.g:done(id, false, { release = true })
  else
    local skipped = self.g:done(id, false) or {}
    for _, sid in ipairs(skipped) do
      self:skip(self.state[sid], string.format("dependency '%s' failed", id))
    end
    if self.runner.on_failure == "stop" then self:stop(string.format("task '%s' failed (on_failure = stop)", id)) end
  end
end

--- Skips a task that will not run: a dependency failed, or the run stopped first. A task that
-- is already running (a pipeline consumer starts before its upstream ends) is stopped and
-- skipped when its process has ended (run/attempt.lua).
function Run:skip(st, why)
  if states.ended(st.status) then return end
  if st.status == "running" then
    st.skip_reason = why
    st.cancelled = st.cancelled or ("cancelled: " .. why)
    if st.handle then st.handle:cancel() end
    return
  end
  self:skipped(st, why)
end

--- A task whose condition (`when`) said no, or failed: skipped, and its dependents with it,
-- whatever the failure policy (a condition is not a failure).
function Run:skip_by_condition(st, why)
  st.by_condition = true
  self:skipped(st, why)
  for _, sid in ipairs(self.g:done(st.task.id, false) or {}) do
    self.state[sid].by_condition = true
    self:skip(self.state[sid], string.format("dependency '%s' was skipped (%s)", st.task.id, why))
  end
  self:pump()
end

--- A task that need not run: what it makes is up to date (run/uptodate.lua). Its dependents
-- go on as after a success, with the output its last success recorded.
function Run:up_to_date(st, entry)
  local task = st.task
  st.status, st.finish = "up_to_date", fsutil.now()
  if type(entry.output) == "string" and uv.fs_stat(entry.output) then st.output_path = entry.output end
  self:emit("up_to_date", { task = task.id, agent = task.agent, since = entry.run_id, output = st.output_path })
  self.records:activity {
    when = st.finish, agent = task.agent, id = task.id, task = task.task, mode = self.mode.label,
    group = self:group_label(task), deps = task.depends_on, outcome = "up_to_date",
    reason = "since run " .. tostring(entry.run_id),
  }
  -- what it would add had it run, it adds now (its result is its last success's)
  if task.on_success then self:on_success(st) end
  self:release(st, true)
  self:pump()
end

--- A task the gates will not start in this run (run/admission.lua): its status is `state`
-- (budget_exhausted), and its dependents wait with it; a resume decides again.
function Run:park(st, state, why)
  st.status, st.error = state, why
  self:emit("park", { task = st.task.id, agent = st.task.agent, state = state, reason = why })
  self.records:activity {
    when = fsutil.now(), agent = st.task.agent, id = st.task.id, task = st.task.task,
    mode = self.mode.label, group = self:group_label(st.task), deps = st.task.depends_on,
    outcome = state, reason = why,
  }
end

--- Live usage of a running attempt, cumulative for the attempt (a streaming CLI's driver
-- reports it as it goes). A task whose own budget it passes is stopped (budget_exceeded).
function Run:usage(st, a, usage, cost_usd)
  live_usage.report(self, st, a, usage, cost_usd)   -- the journal's usage events, the live view
  if st.handle == nil or a ~= st.attempts[#st.attempts] then return end
  local stop = self.budget:live(st, usage, cost_usd)
  if stop and not st.cancelled then
    st.budget_exceeded, st.cancelled = true, stop
    st.handle:cancel()
  end
end

--- A streaming CLI saw its API refuse for a rate limit while the attempt runs (it may retry
-- by itself): the driver's limit adapts now, not only when the attempt ends.
function Run:rate_limit_seen(st, a, retry_after)
  local driver = st.driver_name
  if driver then self.limits:throttle(driver, self.limits.used[driver] or 1, a, retry_after) end
end

--- Sets limit `name` to `n` while the run goes on (live control).
function Run:set_limit(name, n)
  self.limits:set(name, n)
  self:pump()
end

--- Tasks that wait for a task parked by the budget wait with it: their status is its.
function Run:park_dependents()
  if self.parked == 0 then return end
  for _, t in ipairs(self.plan.tasks) do   -- in dependency order: a dependent's dependency is decided first
    local st = self.state[t.id]
    if st.status == "pending" then
      for _, d in ipairs(t.depends_on) do
        local dst = self.state[d]
        if dst.status == "budget_exhausted" then
          st.status = "budget_exhausted"
          st.error = string.format("waits for '%s' (%s)", d, dst.parked and "budget" or dst.error or "budget")
          self:emit("park", { task = t.id, agent = t.agent, state = st.status, reason = st.error })
          break
        end
      end
    end
  end
end

--- Records that a task is skipped (it is not running).
function Run:skipped(st, why)
  st.skip_reason = nil
  if st.armed then attempt.disarm(self, st) end
  if st.backoff_timer then
    st.backoff_timer:close()
    st.backoff_timer = nil
    self.waiting = self.waiting - 1
  end
  st.status, st.error = "skipped", why
  self:emit("skip", { task = st.task.id, agent = st.task.agent, reason = why })
  self.records:activity {
    when = fsutil.now(), agent = st.task.agent, id = st.task.id, task = st.task.task,
    mode = self.mode.label, group = self:group_label(st.task), deps = st.task.depends_on,
    outcome = "skipped", reason = why,
  }
end

--- Stops the run: nothing new starts, running tasks get TERM (KILL after the grace period,
-- or at once when `hard`), tasks waiting to retry fail.
function Run:stop(why, hard)
  if not self.stopping then
    self.stopping = why
    self:emit("stopping", { reason = why })
    admission.drop(self)
  end
  for _, st in pairs(self.state) do
    if st.status == "running" and st.handle then
      st.cancelled = st.cancelled or ("cancelled: " .. why)
      st.handle:cancel(hard)
    elseif st.status == "retrying" and st.backoff_timer then
      st.backoff_timer:close()
      st.backoff_timer = nil
      self.waiting = self.waiting - 1
      st.status, st.error = "failed", "cancelled: " .. why
    end
  end
end

--- Starts whatever may start now: retries first, then what the mode picks. Re-entrant calls
-- (a built-in driver ends at once) only ask for another round.
function Run:pump()
  if self.pumping then self.pump_again = true; return end
  self.pumping = true
  repeat
    self.pump_again = false
    if not self.stopping then
      while self.running < self.max_workers and #self.retry_queue > 0 do
        self:start(table.remove(self.retry_queue, 1))
      end
      admission.pump(self, function(st) attempt.begin(self, st) end)
      -- the mode's ready tasks; again while some went to wait for a gate and workers are free
      local free = self.max_workers - self.running
      while free > 0 and not self.stopping do
        local held = #self.held
        self.mode:pump(free)
        local now_free = self.max_workers - self.running
        if now_free == 0 or #self.held == held then break end
        free = now_free
      end
    end
  until not self.pump_again
  self.pumping = false
  if self.running >= self.max_workers and not self.stopping then self:prepare_next() end
  -- tasks long enough that the latency of each start counts more than coral's CPU
  local latency = standby.worth(self)
  if latency ~= (self.yielding == true) then self:yield_to_children(latency) end
  standby.arm(self, latency)
  if self.running == 0 and self.waiting == 0 and #self.retry_queue == 0 and #self.held == 0 then
    local c = self.g:counts()
    if self.stopping or (c.ready == 0 and c.running == self.mode:held() + self.parked) then self.finished = true end
  end
end

--- Every worker is busy: the tasks next in line get their dir and inputs now, while the loop
-- would wait, rather than between a task's end and the start of the one after it.
function Run:prepare_next()
  for _, id in ipairs(self.mode:upcoming(math.min(self.max_workers, 64))) do
    local st = self.state[id]
    -- not one that may not run at all (its condition, its outputs up to date) or gets a worktree
    if st and st.status == "pending" and #st.attempts == 0 and not st.workspace and not st.task.when
       and not st.task.outputs then
      attempt.prepare(self, st)
    end
  end
end

function Run:watch_signals()
  self.signals = {}
  for _, name in ipairs { "sigint", "sigterm", "sighup" } do
    local s = uv.new_signal()
    s:start(name, function()
      if self.interrupted then
        self:stop("interrupted again", true)        -- a second Ctrl-C kills at once
      else
        self.interrupted = name
        self:stop("interrupted by " .. name:upper())
      end
    end)
    self.signals[#self.signals + 1] = s
  end
end

function Run:unwatch_signals()
  for _, s in ipairs(self.signals or {}) do if not s:is_closing() then s:close() end end
  self.signals = {}
  host.catch_signals()   -- libuv put back the default actions: Ctrl-C must still end coral cleanly
end

--- While the run's tasks are long enough (run/standby.lua's worth), coral's thread yields the
-- CPU to the children it wakes (coral.proc's host_batch): a task's process started on coral's
-- CPU wakes coral in the middle of its exec, and finishes the exec before coral's bookkeeping
-- for the next task takes that CPU from it (docs/PERFORMANCE.md; with short tasks, when coral's
-- own CPU is what the run waits for, it costs more than it gives). The tasks themselves run
-- with the normal policy; coral's own comes back when they are short again and at the run's
-- end. A policy the user gave coral (chrt) is left as it is (and not asked again), and a system
-- that refuses the change runs the same, without it.
function Run:yield_to_children(on)
  if on then
    if self.yield_refused then return end
    self.yielding = proc.host_batch(true) == true
    self.yield_refused = not self.yielding
  elseif self.yielding then
    self.yielding = nil
    proc.host_batch(false)
  end
end

-- Leaves nothing behind when a run is stopped by an error (a full disk, a driver that raised):
-- its processes are killed, its handles closed, its lock released; what was recorded stays.
function Run:abort()
  self.aborted = true
  pcall(standby.disarm, self)
  if self.views_later then pcall(self.tell_views, self) end   -- what the journal has, shown too
  for _, st in pairs(self.state) do
    if st.handle then pcall(st.handle.cancel, st.handle, true) end
    if st.backoff_timer then st.backoff_timer:close(); st.backoff_timer = nil end
    if st.armed then pcall(attempt.disarm, self, st) end
  end
  if self.executor.close then pcall(self.executor.close, self.executor) end
  if self.control then pcall(self.control.close, self.control) end
  self:unwatch_signals()
  self:yield_to_children(false)
  if self.project_state then self.project_state:close() end
  pcall(self.records.close, self.records, 0)   -- nobody waits for a coordination lock now
  if self.reporter and self.reporter.close then pcall(self.reporter.close, self.reporter) end
  self.lock:unlock()
  if self.gc_mode then collectgarbage(self.gc_mode) end
end

-- How long after its first starts a run's project state first says it is on (ms).
local STATE_FIRST_FLUSH_MS = 200

-- The run itself, from its first event to its summary.
function Run:execute(opts)
  local plan = self.plan
  if opts.resume then
    dynamic.rebuild(self)   -- the tasks added by hooks first: the journal's states are theirs too
    resume.restore(self, opts.retry_failed)
    self.budget:restore(self.state)   -- what the earlier sessions spent counts against the ceiling
  end
  control.open(self, opts.resume)   -- its gates, and what a resume keeps of live control
  self:emit("run", { run_id = self.records.id, plan = plan.name, project = self.description,
                     tasks = #plan.tasks, mode = self.mode.name, max_workers = self.max_workers,
                     resumed = opts.resume and true or nil })
  for _, r in ipairs(self.reruns or {}) do self:emit("rerun", r) end
  if self.workspace then
    self:emit("workspace", { base = self.workspace.base, top = self.workspace.top })
  end
  dynamic.started(self)
  self.control:listen()   -- <run dir>/control.sock (coral ctl, coral attach)
  self:watch_signals()

  self:pump()
  -- The project state says the run is on a moment after its first tasks started: its
  -- read-modify-write (a lock, two fsyncs) is not worth their wait, nor that of the first
  -- ends, and a run over by then writes it once, at its end.
  self.project_state:flush_in(STATE_FIRST_FLUSH_MS)
  while not self.finished do
    uv.run("once")
    if not self.finished then self:pump() end
  end
  standby.disarm(self)
  if self.held_starts then self:emit_held_starts() end
  -- Nothing the tasks started outlives the run (coral.exec.reaper).
  if self.executor.close then self.executor:close() end
  for _, st in pairs(self.state) do   -- made ready for a start that did not come (a stop)
    if st.armed then attempt.disarm(self, st) end
  end

  -- Tasks waiting for one the budget held wait with it; tasks never reached (a stop) are skipped.
  if not self.stopping then self:park_dependents() end
  for _, t in ipairs(plan.tasks) do
    local s = self.state[t.id]
    if s.status == "pending" then self:skip(s, self.stopping or "not run") end
  end
  if self.mode.finish then self.mode:finish() end
  self:unwatch_signals()
  self:yield_to_children(false)
  -- the worktree tasks' results merged into one branch (git, blocking: the loop is over)
  self.workspace_result = workspaces.finish(self)
  self.finish_time = fsutil.now()
  -- A minor collection first: the young garbage of the run's last tasks goes before the summary
  -- adds its own (100,000 tasks: the heap 142 -> 125 MB, and the run's peak no longer at its end)
  collectgarbage("step", 0)
  local summary = summary_mod.of(self, opts.results)
  self.final_status = summary.status
  -- the run's own records first (the journal's waiting lines, then the summary made from them);
  -- then the shared state, which may wait for its lock (coordq)
  self.records:flush_records()
  self.records:write_summary(summary, opts.results == "unsuccessful" and function(emit)
    summary_mod.each_result(self, emit)
  end or nil)
  self.project_state:flush(true)
  self:emit("done", { status = summary.status, succeeded = summary.succeeded,
                      failed = summary.failed, skipped = summary.skipped,
                      total_time_seconds = summary.total_time_seconds })
  self.control:close()
  self.reporter:finish(summary)
  -- after Ctrl-C nobody waits for a coordination file's lock: what waits is reported
  self.records:close(self.interrupted and 0 or nil)
  self.lock:unlock()
  -- A script goes on with the collector it had. The command line (an invocation) prints the
  -- summary and exits: switching back, a full collection (288 ms at 100,000 tasks), would only
  -- delay that.
  if not opts.invocation then collectgarbage(self.gc_mode) end
  uv.run("nowait")
  if self.interrupted and not opts.invocation then
    -- A script of the user's that ran the plan is interrupted too, as lua.c interrupts one: the
    -- signal again, now to the host's handler, raises "interrupted by SIG..." in the script,
    -- which ends it with exit 130 (the command line, which passes an invocation, prints the
    -- summary and exits 130 itself).
    uv.kill(uv.os_getpid(), self.interrupted)
  end
  return summary
end

-- }}}

--- Checks what a task needs before it runs (raises a user error): its driver, an agent's
-- role, and the CLI it runs. For the plan's tasks before anything is written; for a task
-- added while the run goes on, before it joins.
function Run:preflight_task(t)
  local driver, derr = attempt.driver_for(self, t)
  if not driver then check.user_error(derr, t.where) end
  -- A real agent gets its role's prompt: a role name with a typo would give it a generic one.
  if driver.program and self.roles and not self.roles(t) then
    local known_roles = require("coral.agents").load(self.project_dir).order
    check.user_error(string.format("task '%s': no agent role '%s'%s, and the %s driver runs an agent that " ..
      "needs one ('coral agents' lists the roles; a project adds its own in .coral/agents/)", t.id, t.agent,
      check.did_you_mean(t.agent, known_roles), driver.name), t.where)
  end
  if self.executor.on_this_machine and driver.program and not fsutil.which(driver.program) then
    check.user_error(string.format("task '%s' needs the %s CLI (driver %s), which is not on PATH; " ..
      "install it, or choose another driver with --agent (sim, prompt, ...)", t.id, driver.program, driver.name))
  end
end

-- Checks what a run needs before anything is written: the project dir, each task's driver
-- and the CLI it runs.
local function preflight(run, project_dir)
  local st = uv.fs_stat(project_dir)
  if not st or st.type ~= "directory" then
    check.user_error(string.format("project dir %s is not a directory", project_dir))
  end
  if not uv.fs_access(project_dir, "W") then
    check.user_error(string.format("project dir %s is not writable", project_dir))
  end
  local force = run.runner.force
  if type(force) == "table" then
    for _, id in ipairs(force) do
      if type(id) ~= "string" or not run.state[id] then
        local ids = {}
        for _, t in ipairs(run.plan.tasks) do ids[#ids + 1] = t.id end
        check.user_error(string.format("force: no task '%s' in the plan%s", tostring(id), check.did_you_mean(id, ids)))
      end
    end
  end
  for _, t in ipairs(run.plan.tasks) do run:preflight_task(t) end
  run.limits:preflight(run.plan.tasks)
  workspaces.plan(run, function(t) return attempt.driver_for(run, t) end)
end

--- Whether every task of `plan` is a command run by the cmd driver: no role is needed to start
-- it (the roles are then read when a task asks for one, not before the run).
function M.commands_only(plan)
  for _, t in ipairs(plan.tasks) do
    if t.cmd == nil or t.driver ~= nil then return false end
  end
  return true
end

--- Runs a plan (or a raw list of phases) to the end and returns the summary table.
-- opts: description, invocation (how the command line started it, for resume), resume (a
-- run id to continue), retry_failed, roles (a role resolver), run_id, results ("all", the
-- default, or "unsuccessful": the summary's `results` then holds only the tasks that neither
-- succeeded nor were up to date; summary.json holds them all either way).
local EXECUTE_OPTIONS = { description = "string", invocation = "table", resume = "string", retry_failed = "boolean",
                          results = "string",
                          roles = "function", run_id = "string" }

function Runner:execute_plan(plan, opts)
  check.options("execute_plan", opts, EXECUTE_OPTIONS, 2)
  if opts and opts.results then check.one_of("execute_plan", "option 'results'", opts.results, { "all", "unsuccessful" }, 2) end
  if getmetatable(plan) ~= plan_mod.Plan then plan = plan_mod.plan(plan) end
  if #plan.tasks == 0 then check.user_error("the plan has no tasks: nothing to run", plan.where) end
  opts = opts or {}
  local project_dir = fsutil.absolute(self.project_dir)
  -- A call from a script run as `coral script.lua`: its run records how to run the script
  -- again, and on `coral resume` it continues the run it started before (run/script.lua).
  opts = script.call_options(opts, project_dir)
  local Mode = assert(modes.get(self.mode))
  local run = setmetatable({
    runner = self, plan = plan, project_dir = project_dir,
    description = opts.description or plan.description or self.description,
    running = 0, waiting = 0, busy = 0, ended_attempts = 0, max_parallel = 0,
    retry_queue = {}, state = {}, live_tasks = {},
    roles = opts.roles or require("coral.agents").resolver(project_dir, { lazy = M.commands_only(plan) }),
  }, Run)
  admission.init(run)
  run.mode = modes.new(Mode, run)
  run.max_workers = run.mode:workers(self.max_workers)
  local executor, xerr = exec.get(self.executor, { kill_grace = self.kill_grace })
  if not executor then check.user_error(xerr) end
  run.executor = executor
  local function driver_name(t)
    local driver = attempt.driver_for(run, t)
    return driver and driver.name
  end
  run.limits = limits.new(run, driver_name)
  admission.add(run, run.limits)

  local paths = records.paths(project_dir)
  -- A link where coral's own files belong stops the run before it reads or writes any (exit 1)
  local own_ok, own_err = require("coral.guard").check(paths)
  if not own_ok then error(own_err, 0) end
  local state, err = records.read_state(paths.state)
  if state then plan:set_estimates(project_state.estimates(state, plan)) end
  run.built = state and type(state.built) == "table" and state.built or {}
  run.budget = budget.new(run, budget.history(state), function(t) return driver_name(t) ~= "cmd" end)
  admission.add(run, run.budget)
  if not state and err then io.stderr:write("coral: warning: ", err, "\n") end

  workspaces.insert_resolvers(run)
  run.mode:check(plan)
  run.g = plan:graph(run.mode:graph_options())
  assert(run.g:validate())
  run.phases = plan:phases()
  run.phase_of = plan:phase_of()
  for _, t in ipairs(plan.tasks) do
    run.state[t.id] = { task = t, status = "pending", attempts = {} }
  end
  preflight(run, project_dir)

  -- One run per project at a time: an fcntl lock, so a killed coral's lock is gone with it.
  local lock, lerr = resume.lock(paths)
  if not lock then check.user_error(lerr) end
  run.lock = lock
  local ok, result = xpcall(function()
    run.records = records.open(project_dir, opts.resume or opts.run_id)
    run.records.batch = true   -- journal and joblog lines written together (records/init.lua)
    run.records.refuses_links = executor.refuses_links   -- (records/init.lua's task_path)
    run.records:write_owner()
    local invocation = opts.invocation or opts.script_invocation
    if invocation and not opts.resume then run.records:write_invocation(invocation) end
    -- the plan this run's tasks ran under: a resume reruns what was changed since
    if opts.resume then run.previous_plan = records.read_plan(run.records.dir) end
    run:write_plan()
    workspaces.open(run, opts.resume)
    run.project_state = project_state.new(run)
    run.reporter = progress.new(self.output, run)
    -- a coordination file whose lock is held falls behind, and is told as a warning
    run.records:coord_queue().on_event = function(name, fields) run:emit(name, fields) end
    run.start_time = fsutil.now()
    -- Most of a run's garbage (events, strings) dies young: the generational collector keeps a
    -- 5000-task run at 38 MB instead of 44 MB and spends less time (docs/PERFORMANCE.md).
    run.gc_mode = collectgarbage("generational")
    -- Lua 5.4.4 makes no minor collection after the switch until a first major one, when the
    -- heap has grown by 60 %: the plan's 100,000 tasks and their garbage took 168 MB before it.
    -- One explicit step (a minor collection) starts the minor cycles at once.
    collectgarbage("step", 0)
    return run:execute(opts)
  end, check.traceback)
  if not ok then
    if run.records then
      run:abort()
    else
      lock:unlock()
    end
    error(result, 0)
  end
  return result
end

M.Runner = Runner
return M
