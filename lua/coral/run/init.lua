--- The runner: executes a plan. Scheduling comes from coral.dag (a task starts the moment its
-- own dependencies finish, longest remaining chain first, up to max_workers at once),
-- processes from an executor, and every state change is recorded (journal, joblog, activity
-- tracker, scratchpad, project state) before coral acts on it.
local check = require "coral.check"
local drivers = require "coral.drivers"
local executor_mod = require "coral.exec"
local fsutil = require "coral.fsutil"
local host = require "coral.host"
local plan_mod = require "coral.plan"
local progress = require "coral.view.progress"
local prompt = require "coral.prompt"
local records = require "coral.records"
local uv = require "luv"

local M = {}

M.modes = {
  DEPENDENCY_BASED = "dependency", PARALLEL = "parallel", SEQUENTIAL = "sequential",
  PIPELINE = "pipeline", PHASED = "phased",
}
local MODE_NAMES = { "dependency", "parallel", "sequential", "pipeline", "phased" }
local POLICIES = { "skip", "stop", "continue" }

local RUNNER_OPTIONS = {
  max_workers = "integer", timeout = "number", idle_timeout = "number", retry_failed = "boolean",
  retries = "integer", mode = "string", on_failure = "string", project_dir = "string",
  driver = "string", kill_grace = "number", backoff = "table", output = "string",
  on_event = "function", sim_scale = "number", executor = "string|table", env = "table",
  model = "string", description = "string", name = "string", output_cap = "integer", permission_mode = "string",
  rate_limit_retries = "integer",
}

local DEFAULTS = {
  max_workers = 4, timeout = 300, retries = 2, retry_failed = true, mode = "dependency",
  on_failure = "skip", project_dir = ".", driver = "auto", kill_grace = 5, output = "auto",
  rate_limit_retries = 5,
  output_cap = 64 * 1024 * 1024,   -- bytes kept of each stream of an attempt; 0 = no cap
  backoff = { base = 0.5, factor = 2, max = 30, jitter = 0.25 },
}

local Runner = {}
Runner.__index = Runner

--- Creates a runner. Options: max_workers (4), timeout (300 s per task, 0 = none), idle_timeout,
-- retries (2 extra attempts), retry_failed (true), mode ("dependency"), on_failure ("skip"),
-- project_dir ("."), driver ("auto"), kill_grace (5 s), backoff {base, factor, max, jitter},
-- output ("auto" | "live" | "lines" | "json" | "quiet"), on_event (fn(event)), executor.
function M.new(opts)
  check.options("coral.run", opts, RUNNER_OPTIONS, 2)
  local self = setmetatable({}, Runner)
  for k, v in pairs(DEFAULTS) do self[k] = v end
  for k, v in pairs(opts or {}) do self[k] = v end
  check.one_of("coral.run", "mode", self.mode, MODE_NAMES, 2)
  check.one_of("coral.run", "on_failure", self.on_failure, POLICIES, 2)
  check.one_of("coral.run", "output", self.output, { "auto", "live", "lines", "json", "quiet" }, 2)
  if self.max_workers < 1 then error("coral.runner: max_workers must be at least 1", 2) end
  local _, err = drivers.get(self.driver, self.project_dir)
  if err then error("coral.runner: " .. err, 2) end
  return self
end

--- A plan from the recipe library (or a recipe file) for a project description.
function Runner:create_parallel_plan(recipe_name, description)
  return require("coral.recipes").plan(recipe_name, description, 2)
end

-- {{{ history and estimates

-- The same median `coral history` shows for each agent.
local median = require("coral.view.timeline").median

--- Estimates from the durations recorded by earlier runs in the project: the median of the same
-- agent and task text, else of the same agent.
local function estimates_from_history(state, plan)
  local out = {}
  local agents = state and state.agents or {}
  for _, t in ipairs(plan.tasks) do
    local a = agents[t.agent]
    if a and type(a.history) == "table" then
      local same, any = {}, {}
      for _, h in ipairs(a.history) do
        if h.status == "completed" and type(h.duration) == "number" then
          any[#any + 1] = h.duration
          if h.task == t.task then same[#same + 1] = h.duration end
        end
      end
      out[t.id] = median(same) or median(any)
    end
  end
  return out
end

-- }}}
-- {{{ one run

local Run = {}
Run.__index = Run

local function reason_of(result, info)
  if result.error then return result.error end
  if info and info.timed_out then return info.timed_out end
  return "failed"
end

function Run:emit(name, fields)
  fields = fields or {}
  fields.event = name
  fields.t = fsutil.now()
  self.records:event(name, fields)
  self.reporter:event(fields, self)
  if self.runner.on_event then self.runner.on_event(fields) end
end

function Run:task_env(st)
  local r, task = self.records, st.task
  local bin_dir = host.exe and host.exe:match("^(.*)/[^/]*$")
  local env = {
    CORAL_NON_INTERACTIVE = "1", CORAL_RUN_ID = r.id, CORAL_TASK_ID = task.id,
    CORAL_AGENT = task.agent, CORAL_PROJECT_DIR = self.project_dir, CORAL_RUN_DIR = r.dir,
    CORAL_SCRATCHPAD = r.paths.scratchpad, CORAL_ACTIVITY = r.paths.activity,
    CORAL_BIN = host.exe, CORAL_ATTEMPT = tostring(#st.attempts),
  }
  if bin_dir then env.PATH = bin_dir .. ":" .. (os.getenv("PATH") or "/usr/bin:/bin") end
  for k, v in pairs(self.runner.env or {}) do env[k] = v end
  for k, v in pairs(task.env or {}) do env[k] = v end
  return env
end

function Run:driver_for(task)
  if task.driver then
    if type(task.driver) == "table" then return task.driver end
    return drivers.get(task.driver, self.project_dir)
  end
  if task.cmd then return drivers.get("cmd") end
  -- A role's driver hint applies only when the run lets coral choose (auto).
  local role = self.roles and select(2, self.roles(task))
  if self.runner.driver == "auto" and role and role.driver and role.driver ~= "auto" then
    return drivers.get(role.driver, self.project_dir)
  end
  return drivers.get(self.runner.driver, self.project_dir)
end

-- The attempt's context, handed to the driver.
function Run:context(st, n)
  local r, task = self.records, st.task
  return {
    attempt = n, project = self.description, project_dir = self.project_dir, run_dir = r.dir,
    scratchpad = r.paths.scratchpad, activity = r.paths.activity, coral_exe = host.exe,
    prompt_path = st.prompt_path, stdout_path = r:task_path(task.id, "out", n),
    stderr_path = r:task_path(task.id, "err", n), output_path = r:task_path(task.id, "output"),
    estimate = self.plan:estimate(task), sim_scale = self.runner.sim_scale,
    model = task.model or self.runner.model, timeout = task.timeout or self.runner.timeout,
    idle_timeout = task.idle_timeout or self.runner.idle_timeout,
    permission_mode = self.runner.permission_mode,
    role = self.roles and select(2, self.roles(task)),
  }
end

function Run:compose_prompt(st)
  local task = st.task
  local handoffs = {}
  for _, d in ipairs(task.depends_on) do
    local dst = self.state[d]
    if dst and dst.output_path then
      handoffs[#handoffs + 1] = { id = d, agent = dst.task.agent, output_path = dst.output_path }
    end
  end
  local r = self.records
  local text = prompt.compose(task, {
    project = self.description, project_dir = self.project_dir, scratchpad = r.paths.scratchpad,
    activity = r.paths.activity, handoffs = handoffs, role = self.roles and self.roles(task),
    plan = self.plan,
  })
  st.prompt_path = r:task_path(task.id, "prompt")
  assert(fsutil.write_atomic(st.prompt_path, text, tonumber("600", 8)))
  return text
end

function Run:max_attempts(task)
  if not self.runner.retry_failed then return 1 end
  return 1 + (task.retries or self.runner.retries)
end

function Run:start_attempt(st)
  local task = st.task
  local n = #st.attempts + 1
  -- An attempt adopted on resume (a cluster job still known to the executor) keeps its start.
  local adopt = st.adopt
  st.adopt = nil
  local attempt = { n = n, start = adopt and adopt.start or fsutil.now(), mono_start = uv.hrtime() }
  st.attempts[n] = attempt
  st.status = "running"
  if not st.first_start then st.first_start = attempt.start end
  self.running = self.running + 1
  if self.running > self.max_parallel then self.max_parallel = self.running end

  local driver, derr = self:driver_for(task)
  -- An agent gets a prompt (composed once, read back for a retry); a command does not.
  local prompt_text
  if driver and driver.name ~= "cmd" then
    prompt_text = n == 1 and self:compose_prompt(st) or fsutil.read(st.prompt_path)
  end
  local ctx = self:context(st, n)
  ctx.prompt = prompt_text
  local job, perr
  if driver then job, perr = driver.prepare(task, ctx) end
  if not job then
    return self:attempt_ended(st, attempt, nil, { ok = false, error = derr or perr, retryable = false })
  end
  if n == 1 and not adopt then self.records:scratchpad_start(task, attempt.start, driver and driver.name == "cmd") end

  if job.builtin then
    local result = job.builtin()
    return self:attempt_ended(st, attempt, { code = result.ok and 0 or 1, duration = 0 }, result, driver, ctx)
  end

  local env = self:task_env(st)
  for k, v in pairs(job.env or {}) do env[k] = v end
  local stdin = job.stdin
  if self.mode == "pipeline" and #task.depends_on > 0 then stdin = "pipe" end
  local on_stdout
  if self.mode == "pipeline" and self.has_dependents[task.id] then
    on_stdout = function(chunk) self:on_stream(st, chunk) end
  end
  local handle, err, code = self.executor:start({
    argv = job.argv or { "/bin/sh", "-c", job.cmd }, env = env,
    cwd = task.cwd or self.project_dir, stdin = stdin,
    stdout_path = ctx.stdout_path, stderr_path = ctx.stderr_path,
    timeout = task.timeout or self.runner.timeout,
    idle_timeout = task.idle_timeout or self.runner.idle_timeout,
    kill_grace = self.runner.kill_grace, on_stdout = on_stdout,
    slurm = task.slurm, adopt = adopt,
    on_submit = function(job_id) self:emit("submit", { task = task.id, attempt = n, job_id = job_id }) end,
  }, function(info)
    st.handle = nil
    if self.aborted then return end   -- killed by abort(): its records are closed
    self:attempt_ended(st, attempt, info, nil, driver, ctx)
  end)
  if not handle then
    return self:attempt_ended(st, attempt, nil,
      { ok = false, error = err, retryable = false, code = code }, driver, ctx)
  end
  st.handle = handle
  attempt.pid = handle.pid
  if adopt then
    self:emit("adopt", { task = task.id, agent = task.agent, attempt = n, job_id = handle.job_id })
  else
    self:emit("start", { task = task.id, agent = task.agent, attempt = n, pid = handle.pid, pgid = handle.pid })
  end
  if stdin == "pipe" then self:feed_pipeline(st) end
end

-- Classifies an attempt's end and decides: done, retry after backoff, or failed for good.
function Run:attempt_ended(st, attempt, info, result, driver, ctx)
  local task = st.task
  self.running = self.running - 1
  attempt.duration = info and info.duration or (uv.hrtime() - attempt.mono_start) / 1e9
  attempt.finish = attempt.start + attempt.duration
  self.busy = self.busy + attempt.duration
  if not result then
    if st.cancelled then
      result = { ok = false, error = st.cancelled, retryable = false }
    else
      result = (driver.finish or drivers.default_finish)(task, info, ctx)
    end
  end
  local outcome = "success"
  if not result.ok then
    outcome = (info and info.timed_out == "idle" and "idle-timeout") or (info and info.timed_out and "timeout")
      or (result.rate_limited and "rate-limited") or (st.cancelled and "cancelled") or "failed"
  end
  attempt.outcome, attempt.code, attempt.signal = outcome, info and info.code, info and info.signal
  attempt.error = not result.ok and reason_of(result, info) or nil
  attempt.cpu_seconds, attempt.max_rss_kb = info and info.cpu_seconds, info and info.max_rss_kb
  -- Keep at most output_cap bytes of each stream, and say so at the end of the stored file.
  -- The child writes its files itself (no pipe through coral: that costs a pipe and a read per
  -- task), so a flood is cut when the attempt ends; coral's memory is not involved either way.
  local cap = self.runner.output_cap
  if cap and cap > 0 and ctx and info then
    for _, stream in ipairs { "stdout", "stderr" } do
      local path = ctx[stream .. "_path"]
      local stat = path and uv.fs_stat(path)
      local fd = stat and stat.size > cap and uv.fs_open(path, "r+", 0)
      if fd then
        uv.fs_ftruncate(fd, cap)
        uv.fs_write(fd, string.format("\n[coral: %s cut at %d bytes; %d more bytes were dropped]\n",
          stream, cap, math.tointeger(stat.size - cap)), cap)
        uv.fs_close(fd)
      end
    end
  end
  self.records:joblog { task = task.id, attempt = attempt.n, start = attempt.start,
    duration = attempt.duration, exit = attempt.code, signal = attempt.signal, outcome = outcome }
  -- The output handed to dependents: the file the driver names (a command's stdout), else the
  -- driver's text written to output.md.
  local output_path
  if result.ok then
    output_path = result.output_path
    if not output_path then
      output_path = ctx and ctx.output_path or self.records:task_path(task.id, "output")
      assert(fsutil.write_file(output_path, result.text or "", tonumber("600", 8)))
    end
  end
  self:emit("end", { task = task.id, agent = task.agent, attempt = attempt.n, outcome = outcome,
    exit = attempt.code, signal = attempt.signal, duration = attempt.duration, error = attempt.error,
    output = output_path })

  attempt.usage, attempt.cost_usd = result.usage, result.cost_usd
  local retryable = not result.ok and result.retryable ~= false and not st.cancelled
  -- Rate-limited attempts have their own budget (rate_limit_retries): waiting out a limit is
  -- not a failure of the task, and --no-retry does not turn it into one.
  if result.rate_limited and retryable then st.rate_limits = (st.rate_limits or 0) + 1 end
  local counted = attempt.n - (st.rate_limits or 0)
  local final = result.ok or not retryable or self.stopping
    or (result.rate_limited and st.rate_limits > self.runner.rate_limit_retries)
    or (not result.rate_limited and counted >= self:max_attempts(task))
  self.records:activity {
    when = attempt.finish, agent = task.agent, id = task.id, task = task.task, mode = self.mode_label,
    group = self:group_label(task), deps = task.depends_on,
    outcome = result.ok and "success" or outcome,
    reason = not result.ok and (attempt.error .. (final and "" or " (will retry)")) or nil,
    duration = attempt.duration, attempt = attempt.n,
    attempts = math.max(attempt.n, self:max_attempts(task) + (st.rate_limits or 0)),
    retrying = not final,
  }
  if result.ok then
    st.output_path = output_path
    st.status, st.finish = "succeeded", attempt.finish
    self:record_history(st, "completed")
    self:release(st, true)
  elseif not final then
    st.status = "backoff"
    local b = self.runner.backoff
    local step = result.rate_limited and st.rate_limits or counted
    local delay = math.min((b.base or 0.5) * (b.factor or 2) ^ (step - 1), b.max or 30)
    delay = delay * (1 + (b.jitter or 0) * math.random())
    if result.rate_limited and result.retry_after then delay = math.max(delay, result.retry_after) end
    self:emit("retry", { task = task.id, attempt = attempt.n + 1, delay = delay, reason = attempt.error })
    local timer = uv.new_timer()
    st.backoff_timer = timer
    self.waiting = self.waiting + 1
    timer:start(math.floor(delay * 1000), 0, function()
      timer:close()
      st.backoff_timer = nil
      self.waiting = self.waiting - 1
      self.retry_queue[#self.retry_queue + 1] = st
      self:pump()
    end)
  else
    st.status, st.finish, st.error = "failed", attempt.finish, attempt.error
    self:record_history(st, "failed")
    self:release(st, false)
  end
  self:pump()
end

function Run:group_label(task)
  local p = self.phase_of[task.id]
  return p and ("Phase " .. p) or "-"
end

function Run:record_history(st, status)
  local a = st.attempts[#st.attempts]
  self.history[#self.history + 1] = {
    agent = st.task.agent, entry = {
      task = st.task.task, task_id = st.task.id, run_id = self.records.id, status = status,
      started = fsutil.timestamp(st.first_start), finished = fsutil.timestamp(a.finish),
      duration = math.floor((a.finish - st.first_start) * 1000 + 0.5) / 1000,
      attempts = #st.attempts, output = st.output_path, error = st.error,
    },
  }
  self:state_dirty()
end

-- Tells the graph a task ended and applies the failure policy.
function Run:release(st, ok, deferred)
  local id = st.task.id
  if self.mode == "pipeline" and not deferred then
    self:close_downstream(st, ok)
    if self.g:state(id) == "pending" then
      -- It ended before the graph handed it out (a consumer that read what it needed and left
      -- while its upstream still runs): the graph hears of it once its upstreams are done.
      st.release_later = ok
      return
    end
  end
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

function Run:skip(st, why)
  if st.status == "skipped" or st.status == "succeeded" or st.status == "failed" then return end
  st.status, st.error = "skipped", why
  self:emit("skip", { task = st.task.id, agent = st.task.agent, reason = why })
  self.records:activity {
    when = fsutil.now(), agent = st.task.agent, id = st.task.id, task = st.task.task,
    mode = self.mode_label, group = self:group_label(st.task), deps = st.task.depends_on,
    outcome = "skipped", reason = why,
  }
end

--- Stops the run: nothing new starts, running tasks get TERM (KILL after the grace period),
-- waiting tasks are skipped.
function Run:stop(why, hard)
  if not self.stopping then
    self.stopping = why
    self:emit("stopping", { reason = why })
  end
  for _, st in pairs(self.state) do
    if st.status == "running" and st.handle then
      st.cancelled = st.cancelled or ("cancelled: " .. why)
      st.handle:cancel(hard)
    elseif st.status == "backoff" and st.backoff_timer then
      st.backoff_timer:close()
      st.backoff_timer = nil
      self.waiting = self.waiting - 1
      st.status, st.error = "failed", "cancelled: " .. why
    end
  end
end

-- {{{ pipeline mode: a dependent starts once every upstream task has produced output, and reads
-- the upstream output on its stdin while the upstream keeps running.

function Run:on_stream(st, chunk)
  st.streamed = st.streamed or {}
  st.streamed[#st.streamed + 1] = chunk
  for _, dst in ipairs(st.downstream or {}) do
    if dst.handle and dst.handle.write then dst.handle:write(chunk) end
  end
  if not st.has_output then
    st.has_output = true
    self:pump()
  end
end

function Run:pipeline_ready(st)
  for _, d in ipairs(st.task.depends_on) do
    local up = self.state[d]
    if not (up.status == "succeeded" or (up.status == "running" and up.has_output)) then return false end
  end
  return true
end

function Run:feed_pipeline(st)
  local open = 0
  for _, d in ipairs(st.task.depends_on) do
    local up = self.state[d]
    up.downstream = up.downstream or {}
    up.downstream[#up.downstream + 1] = st
    for _, chunk in ipairs(up.streamed or {}) do st.handle:write(chunk) end
    if up.status ~= "succeeded" then open = open + 1 end
  end
  st.open_upstreams = open
  if open == 0 then st.handle:close_stdin() end
end

function Run:close_downstream(up, ok)
  for _, dst in ipairs(up.downstream or {}) do
    if dst.handle then
      if ok then
        dst.open_upstreams = dst.open_upstreams - 1
        if dst.open_upstreams == 0 then dst.handle:close_stdin() end
      else
        dst.cancelled = string.format("upstream task '%s' failed", up.task.id)
        dst.handle:cancel()
      end
    end
  end
end

-- }}}

-- Starts whatever may start now. Re-entrant calls (a builtin driver finishing at once) only
-- ask for another round.
function Run:pump()
  if self.pumping then self.pump_again = true; return end
  self.pumping = true
  repeat
    self.pump_again = false
    if not self.stopping then
      while self.running < self.max_workers and #self.retry_queue > 0 do
        self:start_attempt(table.remove(self.retry_queue, 1))
      end
      if self.mode == "pipeline" then self:pump_pipeline() end
      local free = self.max_workers - self.running
      if free > 0 then
        if self.mode == "phased" then
          self:pump_phased(free)
        elseif self.mode ~= "pipeline" then
          for _, id in ipairs(self.g:ready(free)) do
            local st = self.state[id]
            if st.status == "pending" then self:start_attempt(st) end
          end
        end
      end
    end
  until not self.pump_again
  self.pumping = false
  if self.running == 0 and self.waiting == 0 and #self.retry_queue == 0 then
    local c = self.g:counts()
    -- Held tasks (phased mode) are running for the graph but have not started.
    if self.stopping or (c.ready == 0 and c.running == #self.held) then self.finished = true end
  end
end

function Run:pump_pipeline()
  -- Tasks the graph released, then tasks whose upstreams are streaming.
  for _, id in ipairs(self.g:ready()) do
    local st = self.state[id]
    if st.release_later ~= nil then
      local ok = st.release_later
      st.release_later = nil
      self:release(st, ok, true)
    elseif st.status == "pending" then
      self.queue[#self.queue + 1] = st
    end
  end
  for _, t in ipairs(self.plan.tasks) do
    local st = self.state[t.id]
    if st.status == "pending" and not st.queued and #t.depends_on > 0 and self:pipeline_ready(st) then
      st.queued = true
      self.queue[#self.queue + 1] = st
    end
  end
  local i = 1
  while i <= #self.queue and self.running < self.max_workers do
    local st = table.remove(self.queue, i)
    if st.status == "pending" then self:start_attempt(st) end
  end
end

-- Phased mode: the old behaviour, a barrier between phases.
function Run:pump_phased(free)
  for _, id in ipairs(self.g:ready()) do
    local st = self.state[id]
    if st.status == "pending" then self.held[#self.held + 1] = st end
  end
  -- The current phase is the first one with a task not yet ended.
  local current
  for p, ids in ipairs(self.phases) do
    for _, id in ipairs(ids) do
      local s = self.state[id].status
      if s == "pending" or s == "running" or s == "backoff" then current = p; break end
    end
    if current then break end
  end
  local i = 1
  while i <= #self.held and free > 0 do
    local st = self.held[i]
    if self.phase_of[st.task.id] == current then
      table.remove(self.held, i)
      self:start_attempt(st)
      free = free - 1
    else
      i = i + 1
    end
  end
end

function Run:state_dirty()
  self.state_is_dirty = true
  if self.state_timer then return end
  self.state_timer = uv.new_timer()
  -- Once a second, and less often for big plans: the file grows with the plan.
  self.state_timer:start(1000 + #self.plan.tasks, 0, function()
    self.state_timer:close()
    self.state_timer = nil
    self:flush_state()
  end)
end

-- Writes the batched history into .coral/project_state.yaml (read-modify-write under the lock).
function Run:flush_state(final)
  if not self.state_is_dirty and not final then return end
  self.state_is_dirty = false
  local history, run = self.history, self
  self.history = {}
  local _, warning = self.records:update_state(function(state)
    state.project = run.description or state.project
    state.project_dir = run.project_dir
    state.updated = fsutil.timestamp()
    state.current_run = run.records.id
    state.plan = run.plan.name or state.plan
    state.current_phase = run:current_phase()
    state.status = final and run.final_status or "running"
    state.agents = state.agents or {}
    for _, h in ipairs(history) do
      local a = state.agents[h.agent] or {}
      state.agents[h.agent] = a
      a.history = a.history or {}
      a.history[#a.history + 1] = h.entry
      a.status, a.last_run = h.entry.status, h.entry.run_id
      -- Keep the newest 50 entries per agent: enough for medians, bounded in size.
      while #a.history > 50 do table.remove(a.history, 1) end
    end
    -- This run's handoffs: the outputs of finished tasks that other tasks depend on.
    state.handoffs = {}
    for _, st in pairs(run.state) do
      if st.output_path and run.has_dependents[st.task.id] then
        state.handoffs[st.task.id] = { agent = st.task.agent, output = st.output_path }
      end
    end
  end)
  if warning and not self.warned_state then
    self.warned_state = true
    io.stderr:write("coral: warning: project state was broken: ", warning, "\n")
  end
end

function Run:current_phase()
  for p, ids in ipairs(self.phases) do
    for _, id in ipairs(ids) do
      local s = self.state[id].status
      if s ~= "succeeded" and s ~= "failed" and s ~= "skipped" then return p end
    end
  end
  return #self.phases
end

-- Measured critical path: the longest chain of measured task durations along dependencies.
function Run:measured_critical_path()
  local best = {}
  local longest = 0
  for _, t in ipairs(self.plan.tasks) do   -- declaration order is not topological: recurse
    local function length(id)
      if best[id] then return best[id] end
      local st = self.state[id]
      local own = 0
      if st.first_start and st.finish then own = st.finish - st.first_start end
      local m = 0
      for _, d in ipairs(st.task.depends_on) do m = math.max(m, length(d)) end
      best[id] = own + m
      return best[id]
    end
    longest = math.max(longest, length(t.id))
  end
  return longest
end

function Run:summary()
  -- A resumed run counts the time of its earlier sessions too.
  local wall = self.finish_time - self.start_time + (self.prior_wall or 0)
  local seq, succeeded, failed, skipped = 0, 0, 0, 0
  local results, total_cost = {}, nil
  for _, t in ipairs(self.plan.tasks) do
    local st = self.state[t.id]
    local duration = 0
    for _, a in ipairs(st.attempts) do duration = duration + a.duration end
    seq = seq + duration
    if st.status == "succeeded" then succeeded = succeeded + 1
    elseif st.status == "skipped" or st.status == "pending" then skipped = skipped + 1
    else failed = failed + 1 end
    local last = st.attempts[#st.attempts]
    -- Token usage and cost, where the agent CLI reports them, summed over the attempts.
    local usage, cost
    for _, a in ipairs(st.attempts) do
      if type(a.usage) == "table" then
        usage = usage or {}
        for k, v in pairs(a.usage) do
          if math.type(v) then usage[k] = (usage[k] or 0) + v end
        end
      end
      if a.cost_usd then cost = (cost or 0) + a.cost_usd end
    end
    if cost then total_cost = (total_cost or 0) + cost end
    results[t.id] = {
      agent = t.agent, task = t.task,
      status = st.status == "succeeded" and "completed" or (st.status == "pending" and "skipped" or st.status),
      attempts = #st.attempts, exit_code = last and last.code, signal = last and last.signal,
      duration_seconds = duration, output_file = st.output_path, error = st.error,
      started = st.first_start, finished = st.finish, usage = usage, cost_usd = cost,
      rate_limited = st.rate_limits,
    }
  end
  local total = #self.plan.tasks
  return {
    run_id = self.records.id, run_dir = self.records.dir, plan = self.plan.name,
    project = self.description, mode = self.mode, max_workers = self.max_workers,
    total_agents = total, successful = succeeded, failed = failed, skipped = skipped,
    success_rate = total > 0 and succeeded / total * 100 or 0,
    total_time_seconds = wall, sequential_estimate_seconds = seq,
    time_saved_seconds = seq - wall,
    efficiency_gain_percent = seq > 0 and (seq - wall) / seq * 100 or 0,
    speedup = wall > 0 and seq / wall or 0,
    phases = #self.phases, max_parallel = self.max_parallel,
    critical_path_seconds = self:measured_critical_path(),
    worker_utilisation_percent = wall > 0 and self.busy / (wall * self.max_workers) * 100 or 0,
    interrupted = self.interrupted or false, stopped = self.stopping or nil,
    started = self.start_time, finished = self.finish_time,
    total_cost_usd = total_cost, results = results,
  }
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

-- }}}

-- {{{ resume: continue a run from its journal

--- Takes the project's run lock without waiting. The refusal names the run that holds it.
local function run_lock(paths)
  local coord = require "coral.coord"
  local lock, err = coord.lock(paths.coral .. "/run", { timeout = 0, mkdir = true,
    mode = tonumber("600", 8), dir_mode = tonumber("700", 8) })
  if lock then return lock end
  local owner = records.read_owner(paths)
  if owner then
    return nil, string.format("another coral run is in progress in %s: run %s (pid %s); wait for it or stop it",
      paths.project, owner.run_id or "?", tostring(math.tointeger(owner.pid) or owner.pid or "?"))
  end
  return nil, err
end

--- Kills what is left of the run's processes: every process whose environment carries this
-- run's id (a task's group leader, its children, even orphaned grandchildren).
local function kill_leftovers(run_id)
  local mark = "CORAL_RUN_ID=" .. run_id .. "\0"
  local victims = {}
  local dir = uv.fs_scandir("/proc")
  while dir do
    local name = uv.fs_scandir_next(dir)
    if not name then break end
    local pid = tonumber(name)
    if pid and pid ~= uv.os_getpid() then
      local env = fsutil.read("/proc/" .. name .. "/environ")
      if env and env:find(mark, 1, true) then victims[#victims + 1] = pid end
    end
  end
  for _, pid in ipairs(victims) do uv.kill(pid, "sigkill") end
  -- Wait (briefly) until they are gone, so a restarted task never meets its old self.
  local deadline = uv.hrtime() + 5e9
  for _, pid in ipairs(victims) do
    while uv.kill(pid, 0) == 0 and uv.hrtime() < deadline do
      local stat = fsutil.read("/proc/" .. pid .. "/stat")
      if not stat or stat:match("^%d+ %(.*%) ([ZX])") then break end
      uv.sleep(10)
    end
  end
  return #victims
end

--- Rebuilds the run's state from its journal: finished tasks are not run again, tasks that
-- were running or waiting to retry start again, failed tasks stay failed unless
-- `retry_failed`, skipped tasks are decided again.
function Run:restore(retry_failed)
  local status_mod = require "coral.view.status"
  local events = status_mod.journal(self.records.dir)
  local last = {}
  self.prior_wall = 0
  local session_start
  for _, e in ipairs(events) do
    if e.event == "run" then
      if session_start then self.prior_wall = self.prior_wall + (self.last_event_t - session_start) end
      session_start = e.t
    end
    self.last_event_t = e.t
    local st = e.task and self.state[e.task]
    if st then
      if e.event == "end" then
        st.attempts[#st.attempts + 1] = { n = e.attempt, start = e.t - (e.duration or 0), duration = e.duration or 0,
          finish = e.t, outcome = e.outcome, code = e.exit, signal = e.signal, error = e.error, restored = true }
        st.first_start = st.first_start or (e.t - (e.duration or 0))
      end
      if e.event ~= "submit" and e.event ~= "adopt" then last[e.task] = e end
    end
  end
  if session_start then self.prior_wall = self.prior_wall + (self.last_event_t - session_start) end
  -- An executor that can adopt (a cluster engine) takes back the jobs it still knows.
  local adopted = {}
  if self.executor.recover then
    local running = {}
    for id, e in pairs(last) do
      if e.event == "start" then running[id] = { attempt = e.attempt } end
    end
    adopted = self.executor:recover(self.records.id, running)
  end
  -- An attempt that was running when coral stopped ran for real: keep it, as interrupted.
  for id, e in pairs(last) do
    local st = self.state[id]
    if e.event == "start" and adopted[id] then
      st.adopt = { job_id = adopted[id].job_id, start = e.t }
      st.first_start = st.first_start or e.t
    elseif e.event == "start" then
      st.attempts[#st.attempts + 1] = { n = e.attempt, start = e.t, duration = self.last_event_t - e.t,
        finish = self.last_event_t, outcome = "interrupted", restored = true }
      st.first_start = st.first_start or e.t
    end
  end
  if not self.executor.recover then self.killed_leftovers = kill_leftovers(self.records.id) end

  -- Walk the graph: hand finished tasks back to it, hold the rest for the first pump.
  local outcome = {}
  for id, e in pairs(last) do
    local st = self.state[id]
    if e.event == "end" and e.outcome == "success" then
      outcome[id] = "done"
      st.output_path = e.output or self.records:task_path(id, "output")
      st.finish, st.resumed = e.t, true
    elseif e.event == "end" and not retry_failed then
      outcome[id] = "failed"
      st.finish, st.error, st.resumed = e.t, e.error, true
    end
  end
  self.resume_queue = {}
  repeat
    local ids = self.g:ready()
    for _, id in ipairs(ids) do
      local st = self.state[id]
      if outcome[id] == "done" then
        st.status = "succeeded"
        self.g:done(id, true)
      elseif outcome[id] == "failed" then
        st.status = "failed"
        self:release(st, false)
      else
        self.resume_queue[#self.resume_queue + 1] = st
      end
    end
  until #ids == 0
  for _, st in ipairs(self.resume_queue) do self.retry_queue[#self.retry_queue + 1] = st end
end

-- }}}

--- Runs a plan (or a raw list of phases) to the end and returns the summary table.
function Runner:execute_plan(plan, opts)
  if getmetatable(plan) ~= plan_mod.Plan then plan = plan_mod.plan(plan) end
  opts = opts or {}
  local project_dir = fsutil.absolute(self.project_dir)
  local st = uv.fs_stat(project_dir)
  if not st or st.type ~= "directory" then
    plan_mod.user_error(string.format("project dir %s is not a directory", project_dir))
  end
  if not uv.fs_access(project_dir, "W") then
    plan_mod.user_error(string.format("project dir %s is not writable", project_dir))
  end
  local mode = self.mode
  local run = setmetatable({
    runner = self, plan = plan, mode = mode, project_dir = project_dir,
    description = opts.description or plan.description or self.description,
    max_workers = mode == "sequential" and 1 or self.max_workers,
    running = 0, waiting = 0, busy = 0, max_parallel = 0,
    retry_queue = {}, queue = {}, held = {}, history = {}, state = {},
    roles = opts.roles or require("coral.agents").resolver(project_dir),
  }, Run)
  run.mode_label = ({ dependency = "PARALLEL", parallel = "PARALLEL", sequential = "SEQUENTIAL",
                      pipeline = "PIPELINE", phased = "PHASED" })[mode]

  local paths = records.paths(project_dir)
  local state, err = records.read_state(paths.state)
  if state then plan:set_estimates(estimates_from_history(state, plan)) end
  if not state and err then io.stderr:write("coral: warning: ", err, "\n") end

  if mode == "parallel" then
    for _, t in ipairs(plan.tasks) do
      if #t.depends_on > 0 then
        io.stderr:write("coral: warning: parallel mode ignores the plan's dependencies\n")
        break
      end
    end
  end
  run.g = plan:graph { no_edges = mode == "parallel" }
  assert(run.g:validate())
  run.phases = plan:phases()
  run.phase_of = plan:phase_of()
  run.has_dependents = {}
  for _, t in ipairs(plan.tasks) do
    run.state[t.id] = { task = t, status = "pending", attempts = {} }
    for _, d in ipairs(t.depends_on) do run.has_dependents[d] = true end
  end

  -- Every driver that runs an installed CLI finds it, before anything is written.
  if not self.executor or self.executor == "local" then
    for _, t in ipairs(plan.tasks) do
      local driver, derr = run:driver_for(t)
      if not driver then plan_mod.user_error(t.where .. ": " .. derr) end
      if driver.program and not fsutil.which(driver.program) then
        plan_mod.user_error(string.format("task '%s' needs the %s CLI (driver %s), which is not on PATH; " ..
          "install it, or choose another driver with --agent (sim, prompt, ...)", t.id, driver.program, driver.name))
      end
    end
  end
  run.executor = assert(executor_mod.get(self.executor, { kill_grace = self.kill_grace }))
  -- One run per project at a time: an fcntl lock, so a killed coral's lock is gone with it.
  local lock, lerr = run_lock(paths)
  if not lock then plan_mod.user_error(lerr) end
  run.lock = lock
  run.records = records.open(project_dir, opts.resume or opts.run_id)
  run.records:write_owner(lock)
  if opts.invocation and not opts.resume then run.records:write_invocation(opts.invocation) end
  run.reporter = progress.new(self.output, run)
  run.start_time = fsutil.now()
  -- Most of a run's garbage (events, strings) dies young: the generational collector keeps a
  -- 5000-task run at 38 MB instead of 44 MB and spends less time (measured, docs/PERFORMANCE.md).
  run.gc_mode = collectgarbage("generational")
  local ok, result = xpcall(Run.execute, plan_mod.traceback, run, opts)
  if not ok then
    run:abort()
    error(result, 0)
  end
  return result
end

-- Leaves nothing behind when a run is stopped by an error (a full disk, a driver that raised):
-- its processes are killed, its handles closed, its lock released; what was recorded stays.
function Run:abort()
  self.aborted = true
  for _, st in pairs(self.state) do
    if st.handle then pcall(st.handle.cancel, st.handle, true) end
    if st.backoff_timer then st.backoff_timer:close(); st.backoff_timer = nil end
  end
  for _, s in ipairs(self.signals or {}) do if not s:is_closing() then s:close() end end
  host.catch_signals()
  if self.state_timer then self.state_timer:close(); self.state_timer = nil end
  pcall(self.records.close, self.records)
  self.lock:unlock()
  collectgarbage(self.gc_mode)
end

-- The run itself, from its first event to its summary.
function Run:execute(opts)
  local run, plan = self, self.plan
  if opts.resume then run:restore(opts.retry_failed) end
  run:emit("run", { run_id = run.records.id, plan = plan.name, project = run.description,
                    tasks = #plan.tasks, mode = mode, max_workers = run.max_workers,
                    resumed = opts.resume and true or nil })
  run.state_is_dirty = true
  run:flush_state()
  run:watch_signals()

  run:pump()
  while not run.finished do
    uv.run("once")
    if not run.finished then run:pump() end
  end

  -- Tasks never reached (a stop) count as skipped.
  for _, t in ipairs(plan.tasks) do
    local s = run.state[t.id]
    if s.status == "pending" then run:skip(s, run.stopping or "not run") end
  end
  for _, s in ipairs(run.signals) do s:close() end
  host.catch_signals()   -- libuv put back the default actions: Ctrl-C must still end coral cleanly
  if run.state_timer then run.state_timer:close(); run.state_timer = nil end
  run.finish_time = fsutil.now()
  local summary = run:summary()
  run.final_status = run.interrupted and "interrupted" or
    ((summary.failed + summary.skipped == 0) and "completed" or "failed")
  summary.status = run.final_status
  run:flush_state(true)
  run.records:write_summary(summary)
  run:emit("done", { status = run.final_status, successful = summary.successful,
                     failed = summary.failed, skipped = summary.skipped,
                     total_time_seconds = summary.total_time_seconds })
  run.reporter:finish(summary)
  run.records:close()
  run.lock:unlock()
  collectgarbage(run.gc_mode)
  uv.run("nowait")
  return summary
end

M.Runner = Runner
return M
