--- One attempt of a task, from start to end: the driver that turns the task into a process,
-- the prompt, the process (through the run's executor), then the attempt's classification and
-- what follows it: done, a retry after backoff, or failed for good.
local admission = require "coral.run.admission"
local drivers = require "coral.drivers"
local fsutil = require "coral.fsutil"
local host = require "coral.host"
local prompt = require "coral.prompt"
local resources = require "coral.run.resources"
local uptodate = require "coral.run.uptodate"
local live_usage = require "coral.run.usage"
local uv = require "luv"
local workspaces = require "coral.run.workspaces"

local M = {}

local PRIVATE_FILE = tonumber("600", 8)

-- How an attempt's file over the output cap is opened to be cut: read-write, not through a
-- link, not held by a FIFO.
local CAP_OPEN_FLAGS = uv.constants.O_RDWR | host.O_NOFOLLOW | uv.constants.O_NONBLOCK

-- What coral.proc's nofollow open of an attempt's file says when something else is there.
local REFUSED_OPEN = { ELOOP = true, ENXIO = true, EISDIR = true, EMLINK = true }

--- The driver of `task` in `run`: the task's own, `cmd` for a command, the role's hint when
-- the run lets coral choose, else the run's. Returns the driver, or nil and an error.
function M.driver_for(run, task)
  if task.driver then
    if type(task.driver) == "table" then return task.driver end
    return drivers.get(task.driver, run.project_dir)
  end
  if task.cmd then return drivers.get("cmd") end
  local role = run.roles and select(2, run.roles(task))
  if run.runner.driver == "auto" and role and role.driver and role.driver ~= "auto" then
    return drivers.get(role.driver, run.project_dir)
  end
  return drivers.get(run.runner.driver, run.project_dir)
end

--- The name of the variable that gives a task dependency `id`'s output: CORAL_INPUT_<ID>,
-- upper-cased, every other character than a letter or digit as "_".
function M.input_variable(id)
  return "CORAL_INPUT_" .. id:upper():gsub("[^%w]", "_")
end

-- The output a dependency hands on: its final output once it succeeded, else (a failed one,
-- under on_failure = continue) the stdout of its last attempt.
local function output_of(run, dst)
  if dst.output_path then return dst.output_path end
  local last = dst.attempts[#dst.attempts]
  return last and run.records:task_path(dst.task.id, "out", last.n) or nil
end

-- Data flow: what a task is given of its dependencies, as inputs.json (CORAL_INPUTS) and one
-- variable per dependency (into `env`, when given). Returns the file's text, or nil for a task
-- without dependencies.
local function inputs_of(run, st, env)
  local task = st.task
  if #task.depends_on == 0 then return nil end
  local inputs = {}
  for _, d in ipairs(task.depends_on) do
    local dst = run.state[d]
    local output = output_of(run, dst)
    local outputs = {}
    for i, o in ipairs(dst.task.outputs or {}) do outputs[i] = run.project_dir .. "/" .. o end
    inputs[d] = { status = dst.status, output = output, outputs = outputs }
    local handoff = workspaces.handoff(st, d)
    if handoff then
      for k, v in pairs(handoff) do inputs[d][k] = v end
    end
    if output and env then env[M.input_variable(d)] = output end
  end
  return require("coral.json").encode(inputs) .. "\n"
end

-- Written at each attempt's start, as the dependencies are then; a first attempt's may have
-- been written while the task waited for a worker (M.prepare), and is not written again when
-- it still says the same.
local function add_inputs(run, st, env)
  local text = inputs_of(run, st, env)
  if not text then return end
  local path = run.records:task_path(st.task.id, "inputs")
  if st.inputs_written ~= text then assert(fsutil.write_file(path, text, PRIVATE_FILE)) end
  st.inputs_written = nil
  env.CORAL_INPUTS = path
end

-- The PATH a task gets: coral's own dir first (a task can run `coral`), then coral's PATH.
-- The same for every task of the run: made once.
local function task_path_var(run)
  if run.path_var == nil then
    local bin_dir = host.exe and host.exe:match("^(.*)/[^/]*$")
    run.path_var = bin_dir and (bin_dir .. ":" .. (os.getenv("PATH") or "/usr/bin:/bin")) or false
  end
  return run.path_var or nil
end

-- The environment of attempt `n` of the task.
local function task_env(run, st, n)
  local r, task = run.records, st.task
  local env = {
    CORAL_NON_INTERACTIVE = "1", CORAL_RUN_ID = r.id, CORAL_TASK_ID = task.id,
    CORAL_AGENT = task.agent, CORAL_PROJECT_DIR = run.project_dir, CORAL_RUN_DIR = r.dir,
    CORAL_SCRATCHPAD = r.paths.scratchpad, CORAL_ACTIVITY = r.paths.activity,
    CORAL_BIN = host.exe, CORAL_ATTEMPT = tostring(n),
    CORAL_TASK_DIR = r:task_path(task.id, "dir"),
  }
  add_inputs(run, st, env)
  env.PATH = task_path_var(run)
  for k, v in pairs(run.runner.env or {}) do env[k] = v end
  for k, v in pairs(task.env or {}) do env[k] = v end
  return env
end

-- The attempt's context, handed to the driver: the attempt's own fields, and the run's (the
-- same for every attempt: one table a run, read through the metatable).
local function context(run, st, n, driver)
  local r, task, runner = run.records, st.task, run.runner
  if not run.context_mt then
    run.context_mt = { __index = {
      project = run.description, project_dir = run.project_dir, run_dir = r.dir,
      scratchpad = r.paths.scratchpad, activity = r.paths.activity, coral_exe = host.exe,
      sim_scale = runner.sim_scale, permission_mode = runner.permission_mode,
    } }
  end
  return setmetatable({
    attempt = n, prompt_path = st.prompt_path, stdout_path = r:task_path(task.id, "out", n),
    stderr_path = r:task_path(task.id, "err", n), output_path = r:task_path(task.id, "output"),
    estimate = run.plan:estimate(task),
    model = task.model or runner.model, timeout = task.timeout or runner.timeout,
    idle_timeout = task.idle_timeout or runner.idle_timeout,
    -- a command has no role (and a plan of commands reads none)
    role = driver and driver.name ~= "cmd" and run.roles and select(2, run.roles(task)) or nil,
  }, run.context_mt)
end

--- Readies what the first attempt of a task next in line for a worker would make at its start
-- (Run:prepare_next, while every worker is busy): its dir, and its inputs.json, which its
-- dependencies, all ended, no longer change. A command run by an executor that refuses links
-- in its open (nothing there to check by path later) is also armed: what its launch computes
-- before the process (driver, context, spec, environment) is made now, so that the path from
-- one attempt's end to this task's process is short. A failure is left for the start to report.
function M.prepare(run, st)
  if not run.records:prepare_task_dir(st.task.id) then return end
  local driver = run.executor.refuses_links and M.driver_for(run, st.task)
  if driver and driver.name == "cmd" then
    local ctx = context(run, st, 1, driver)
    local spec = driver.prepare(st.task, ctx)
    if spec and not spec.builtin then
      local ok, env = pcall(task_env, run, st, 1)   -- its inputs.json written
      if ok then
        -- and its files opened (the executor's, when it can)
        local opened = run.executor.open_outputs and run.executor:open_outputs(ctx.stdout_path, ctx.stderr_path)
        st.armed = { driver = driver, ctx = ctx, spec = spec, env = env, opened = opened }
        return
      end
    end
  end
  local text = inputs_of(run, st)
  if text and fsutil.write_file(run.records:task_path(st.task.id, "inputs"), text, PRIVATE_FILE) then
    st.inputs_written = text
  end
end

--- Drops what M.prepare made ready for a task's start that will not use it (the task is
-- skipped, or the run ends first): the files it opened are closed (they stay, empty).
function M.disarm(run, st)
  local armed = st.armed
  st.armed = nil
  if armed and armed.opened then run.executor:close_outputs(armed.opened) end
end

-- The task's prompt, written to its prompt.md: its role, the project, the plan, and the output
-- of each dependency.
local function compose_prompt(run, st)
  local task = st.task
  local handoffs = {}
  for _, d in ipairs(task.depends_on) do
    local dst = run.state[d]
    if dst and dst.output_path then
      handoffs[#handoffs + 1] = { id = d, agent = dst.task.agent, output_path = dst.output_path,
                                  work = workspaces.handoff(st, d) }   -- its commit, in a worktree task
    end
  end
  local r = run.records
  local text = prompt.compose(task, {
    project = run.description, project_dir = run.project_dir, scratchpad = r.paths.scratchpad,
    activity = r.paths.activity, handoffs = handoffs, role = run.roles and run.roles(task),
    worktree = st.worktree and st.worktree.cwd,
    plan = run.plan,
  })
  text = (workspaces.prompt_preface(st) or "") .. text
  st.prompt_path = r:task_path(task.id, "prompt")
  assert(fsutil.write_atomic(st.prompt_path, text, PRIVATE_FILE))
  return text
end

local function max_attempts(run, task)
  if not run.runner.retry_failed then return 1 end
  return 1 + (task.retries or run.runner.retries)
end

--- The wait before the next attempt: exponential in `step` (the count of failures of the same
-- kind), capped, with jitter; at least what the API asked for (retry_after).
function M.backoff_delay(b, step, retry_after)
  local delay = math.min((b.base or 0.5) * (b.factor or 2) ^ (step - 1), b.max or 30)
  delay = delay * (1 + (b.jitter or 0) * math.random())
  if retry_after then delay = math.max(delay, retry_after) end
  return delay
end

-- Keeps at most `cap` bytes of each stream of the attempt, and says so at the end of the file.
-- The child writes its files itself (no pipe through coral: that costs a pipe and a read per
-- task), so a flood is cut when the attempt ends; coral's memory is not involved either way.
-- The sizes come with the exit (`info`, coral.proc's fstat of the files it opened) when the
-- executor has them: then no stat by path.
local function cap_output(ctx, cap, info)
  for _, stream in ipairs { "stdout", "stderr" } do
    local path = ctx[stream .. "_path"]
    local size = info and info[stream .. "_size"]
    if not size then
      local stat = path and uv.fs_stat(path)
      size = stat and stat.size
    end
    -- never through a link: one put in the file's place since it was opened is not followed
    local fd = size and size > cap and path and uv.fs_open(path, CAP_OPEN_FLAGS, 0)
    local stat = fd and uv.fs_fstat(fd)
    if stat and stat.type ~= "file" then
      uv.fs_close(fd)
      fd = nil
    end
    if fd then
      uv.fs_ftruncate(fd, cap)
      uv.fs_write(fd, string.format("\n[coral: %s cut at %d bytes; %d more bytes were dropped]\n",
        stream, cap, math.tointeger(size - cap)), cap)
      uv.fs_close(fd)
    end
  end
end

local function outcome_of(result, info, st, run)
  if result.ok then return "succeeded" end
  -- stopped by Ctrl-C, SIGTERM or SIGHUP: unfinished, not failed (resume runs it again)
  if st.cancelled and run.interrupted and not st.skip_reason then return "interrupted" end
  if info and info.timed_out == "idle" then return "idle-timeout" end
  if info and info.timed_out then return "timeout" end
  if result.rate_limited then return "rate-limited" end
  if st.budget_exceeded then return "budget_exceeded" end
  if st.cancelled then return "cancelled" end
  return "failed"
end

local function reason_of(result, info)
  if result.error then return result.error end
  if info and info.timed_out then return info.timed_out end
  return "failed"
end

-- The attempt ended (`info` from the executor, or a `result` decided without a process):
-- classify it, record it, and decide what follows.
local conclude

local function ended(run, st, a, info, result, driver, ctx)
  local task = st.task
  run.running = run.running - 1
  run.live_tasks[st] = nil
  a.duration = info and info.duration or (uv.hrtime() - a.mono_start) / 1e9
  a.finish = a.start + a.duration
  run.busy, run.ended_attempts = run.busy + a.duration, run.ended_attempts + 1
  if not result then
    if st.cancelled then
      result = { ok = false, error = st.cancelled, retryable = false }
    else
      result = (driver.finish or drivers.default_finish)(task, info, ctx)
    end
  end
  if result.ok and task.outputs then
    -- A task that says it writes files has not succeeded until they are there (in its
    -- worktree, for a task that has one).
    local dir = st.worktree and st.worktree.cwd or run.project_dir
    local missing = {}
    for _, o in ipairs(task.outputs) do
      if not uv.fs_stat(dir .. "/" .. o) then missing[#missing + 1] = o end
    end
    if #missing > 0 then
      result = { ok = false, error = "declared outputs missing: " .. table.concat(missing, ", "),
                 usage = result.usage, cost_usd = result.cost_usd }
    end
  end
  admission.ended(run, st, a, result)   -- its units and reservation go back before anything starts
  if result.ok and st.worktree then
    -- its work committed to its branch before it counts as done (git on the loop; `waiting`
    -- keeps the run going meanwhile)
    run.waiting = run.waiting + 1
    return workspaces.commit(run, st, a, function(err)
      run.waiting = run.waiting - 1
      if err then
        result = { ok = false, error = "commit of its worktree failed: " .. err, retryable = false,
                   usage = result.usage, cost_usd = result.cost_usd }
      end
      conclude(run, st, a, info, result, ctx)
    end)
  end
  return conclude(run, st, a, info, result, ctx)
end

-- The attempt's result is known: record it, and decide what follows. The views hear of the end
-- after the pump (Run:defer_views), so a successor the end frees starts first; the journal and
-- the joblog have it before that start.
function conclude(run, st, a, info, result, ctx)
  local task, runner = st.task, run.runner
  local outer = run:defer_views()
  local outcome = outcome_of(result, info, st, run)
  a.outcome, a.code, a.signal = outcome, info and info.code, info and info.signal
  a.error = not result.ok and reason_of(result, info) or nil
  local cap = runner.output_cap
  if cap and cap > 0 and ctx and info then
    -- a pipeline's consumers may still read the file: the mode then cuts it later
    local function cut() cap_output(ctx, cap, info) end
    if run.mode.cut_output then run.mode:cut_output(st, cut) else cut() end
  end
  run.records:joblog { task = task.id, attempt = a.n, start = a.start,
    duration = a.duration, exit = a.code, signal = a.signal, outcome = outcome }
  -- The output handed to dependents: the file the driver names (a command's stdout), else the
  -- driver's text written to output.md.
  local output_path
  if result.ok then
    output_path = result.output_path
    if not output_path then
      output_path = ctx and ctx.output_path or run.records:task_path(task.id, "output")
      assert(fsutil.write_file(output_path, result.text or "", PRIVATE_FILE))
    end
  end
  run:emit("end", { task = task.id, agent = task.agent, attempt = a.n, outcome = outcome,
    exit = a.code, signal = a.signal, duration = a.duration, error = a.error, output = output_path,
    cost_usd = result.cost_usd, usage = result.usage,
    branch = result.ok and st.branch or nil, commit = result.ok and st.commit or nil,
    changes = result.ok and st.changes and { files = st.changes.files, added = st.changes.added,
                                             removed = st.changes.removed } or nil })

  a.usage, a.cost_usd = result.usage, result.cost_usd
  local retryable = not result.ok and result.retryable ~= false and not st.cancelled
  -- Rate-limited attempts have their own budget (rate_limit_retries): waiting out a limit is
  -- not a failure of the task, and --no-retry does not turn it into one.
  if result.rate_limited and retryable then st.rate_limits = (st.rate_limits or 0) + 1 end
  local counted = a.n - (st.rate_limits or 0)
  local final = result.ok or not retryable or run.stopping or st.skip_reason
    or (result.rate_limited and st.rate_limits > runner.rate_limit_retries)
    or (not result.rate_limited and counted >= max_attempts(run, task))
  run.records:activity {
    when = a.finish, agent = task.agent, id = task.id, task = task.task, mode = run.mode.label,
    group = run:group_label(task), deps = task.depends_on, outcome = outcome,
    reason = not result.ok and (a.error .. (final and "" or " (will retry)")) or nil,
    duration = a.duration, attempt = a.n,
    attempts = math.max(a.n, max_attempts(run, task) + (st.rate_limits or 0)),
    retrying = not final,
  }
  local history   -- its entry in the project state's history
  if st.skip_reason then
    -- The graph skipped it while it ran (its upstream failed): it stays skipped, whatever its
    -- process did, and the graph is not told again.
    st.finish = a.finish
    run:skipped(st, st.skip_reason)
  elseif result.ok then
    st.output_path = output_path
    st.status, st.finish = "succeeded", a.finish
    history = true
    if task.outputs then run.project_state:record_built(task.id, uptodate.record(run, st, st.input_stamps)) end
    -- before the release: tasks it adds that depend on it are in the graph when it is done
    if task.on_success then run:on_success(st) end
    run:release(st, true)
  elseif not final then
    st.status = "retrying"
    local delay = M.backoff_delay(runner.backoff, result.rate_limited and st.rate_limits or counted,
                                  result.rate_limited and result.retry_after)
    run:emit("retry", { task = task.id, attempt = a.n + 1, delay = delay, reason = a.error })
    local timer = uv.new_timer()
    st.backoff_timer = timer
    run.waiting = run.waiting + 1
    timer:start(math.floor(delay * 1000), 0, function()
      timer:close()
      st.backoff_timer = nil
      run.waiting = run.waiting - 1
      run.retry_queue[#run.retry_queue + 1] = st
      run:pump()
    end)
  elseif outcome == "interrupted" then
    -- The run is stopping: the graph need not hear of it; its dependents are skipped as not
    -- reached, and resume decides them again.
    st.status, st.finish, st.error = "interrupted", a.finish, a.error
  else
    st.status, st.finish, st.error = "failed", a.finish, a.error
    history = true
    run:release(st, false)
  end
  if st.status ~= "retrying" then run.records:forget_task_dir(task.id) end
  resources.ended(run)   -- before the pump: tasks waiting for a resource start first
  run:pump()
  -- what no start waits for comes after the starts the end frees
  if history then run.project_state:record(st) end
  if outer then run:tell_views() end
end

--- Starts the next attempt of a task: composes its prompt (an agent's, once), asks its driver
-- for the process, starts it through the executor, and records the start.
-- A task's condition: `when(results)` with results = { [dependency id] = { status, output } }
-- decides whether it runs at all. Returns true (run it), or false and why not.
local function condition(run, st)
  local results = {}
  for _, d in ipairs(st.task.depends_on) do
    local dst = run.state[d]
    results[d] = { status = dst.status, output = output_of(run, dst), error = dst.error }
  end
  local ok, value = pcall(st.task.when, results)
  if not ok then return nil, "its condition raised an error: " .. tostring(value) end
  if not value then return false, "condition" end
  return true
end

local launch

function M.start(run, st)
  local task = st.task
  local go, why = true, nil
  if task.when and #st.attempts == 0 and not st.adopt then
    go, why = condition(run, st)
    if go == false then return run:skip_by_condition(st, why) end
  end
  -- a worktree task's outputs are on its branch, not in the project: it always runs
  if task.outputs and #st.attempts == 0 and not st.adopt and not run.mode.runs_every_task and not st.workspace
     and not uptodate.forced(task, run.runner.force) then
    local entry, stale = uptodate.check(run, st)
    if entry then return run:up_to_date(st, entry) end
    st.stale = stale
  end
  if go == nil then return M.begin(run, st, why) end   -- the condition raised: it ends at once
  -- the gates (limits, budget, approval, a pause): it may wait, and starts from the waiting list
  if not admission.admit(run, st, st.adopt ~= nil) then return end
  return M.begin(run, st)
end

--- Starts an attempt of a task that was admitted (run/admission.lua). `condition_error`: its
-- condition raised that error; the attempt ends at once. `fired`: coral.proc's standby started
-- its process already (run/standby.lua): { handle =, err =, code = }.
function M.begin(run, st, condition_error, fired)
  local task = st.task
  if run.standby == st and not fired then run:disarm_standby() end   -- it starts another way
  local n = #st.attempts + 1
  -- An attempt adopted on resume (a cluster job still known to the executor) keeps its start.
  local adopt = st.adopt
  st.adopt = nil
  local a = { n = n, start = adopt and adopt.start or fsutil.now(), mono_start = uv.hrtime() }
  st.attempts[n] = a
  st.status = "running"
  -- its inputs as this attempt found them: recorded with its success, for the next up-to-date check
  if task.outputs then st.input_stamps = uptodate.stamps(run.project_dir, task.inputs) end
  if not st.first_start then st.first_start = a.start end
  run.running = run.running + 1
  run.live_tasks[st] = true
  local max_before = run.max_parallel
  local busy = run.running - resources.waiting(run)   -- those waiting for a resource do not run
  -- (a standby starts at an exit whose end comes after: that end's slot is the one it took)
  if fired then busy = busy - 1 end
  if busy > run.max_parallel then run.max_parallel = busy end

  if condition_error then   -- a mistake in the recipe, not worth a retry
    return ended(run, st, a, nil, { ok = false, error = condition_error, retryable = false })
  end
  if st.workspace and not adopt then
    -- its worktree first (git on the loop: other tasks go on meanwhile)
    return workspaces.prepare(run, st, a, function(err)
      if err then return ended(run, st, a, nil, { ok = false, error = err, retryable = false }) end
      if run.stopping then
        st.cancelled = "cancelled: " .. run.stopping
        return ended(run, st, a, nil, { ok = false, error = st.cancelled, retryable = false })
      end
      if task.resolves and #st.worktree.conflicts == 0 then
        -- a resolver with nothing to resolve: done, without an agent
        return ended(run, st, a, { code = 0, duration = 0 }, { ok = true,
          text = "The dependencies' work merged without a conflict: nothing to resolve.\n" })
      end
      launch(run, st, a, adopt, max_before)
    end)
  end
  return launch(run, st, a, adopt, max_before, fired)
end

-- What the executor starts for attempt `n` of `st`'s task (its process's spec, without the
-- process's end), from its driver's spec and environment.
local function spawn_spec(run, st, n, ctx, spec, env, stdin, on_stdout)
  local task, runner = st.task, run.runner
  return {
    argv = spec.argv or { "/bin/sh", "-c", spec.cmd }, env = env,
    cwd = st.worktree and st.worktree.cwd or task.cwd or run.project_dir, stdin = stdin,
    stdout_path = ctx.stdout_path, stderr_path = ctx.stderr_path,
    timeout = task.timeout or runner.timeout,
    idle_timeout = task.idle_timeout or runner.idle_timeout,
    kill_grace = runner.kill_grace, on_stdout = on_stdout,
    slurm = task.slurm, resources = task.resources,
    -- a command's clean exit is its success: the standby may start at it (run/standby.lua)
    standby = ctx.standby_ok,
    on_submit = function(job_id) run:emit("submit", { task = task.id, attempt = n, job_id = job_id }) end,
  }
end

-- Whether attempt `n`'s clean exit (status 0, ended by itself) is its success, with nothing
-- of the run's to do before it counts: a command's, without declared outputs, a worktree or a
-- hook.
local function clean_exit_succeeds(st, driver)
  local task = st.task
  return driver.name == "cmd" and not task.outputs and not st.worktree and not task.on_success
end

--- The spec of the first attempt of `st`, armed (M.prepare), for coral.proc's standby
-- (run/standby.lua): the spec, and the end of its process, which goes to the attempt that
-- the start makes (launch). Made once a task.
function M.standby_spec(run, st)
  local armed = st.armed
  if not armed.xspec then
    local env, spec = armed.env, armed.spec
    for k, v in pairs(spec.env or {}) do env[k] = v end
    local stdin, on_stdout = run.mode:stdio(st, spec.stdin)
    armed.ctx.standby_ok = clean_exit_succeeds(st, armed.driver)
    armed.xspec = spawn_spec(run, st, 1, armed.ctx, spec, env, stdin, on_stdout)
    armed.xspec.opened = armed.opened
    armed.on_exit = function(info) return st.on_exit(info) end
  end
  return armed.xspec, armed.on_exit
end

-- Starts attempt `a` of `st`'s task: its driver, prompt and process. `max_before`: the run's
-- max_parallel before this task counted (it is put back while the task waits for a resource).
function launch(run, st, a, adopt, max_before, fired)
  local task, n = st.task, a.n
  local armed = n == 1 and not adopt and st.armed   -- made while it waited (M.prepare)
  if armed then st.armed = nil else M.disarm(run, st) end
  local driver, derr, ctx, spec, perr
  if armed then
    driver, ctx, spec = armed.driver, armed.ctx, armed.spec
  else
    driver, derr = M.driver_for(run, task)
    -- An agent gets a prompt (composed once, read back for a retry); a command does not.
    local prompt_text
    if driver and driver.name ~= "cmd" then
      prompt_text = n == 1 and compose_prompt(run, st) or fsutil.read(st.prompt_path)
    end
    ctx = context(run, st, n, driver)
    ctx.prompt = prompt_text
    if driver then spec, perr = driver.prepare(task, ctx) end
    if not spec then
      return ended(run, st, a, nil, { ok = false, error = derr or perr, retryable = false })
    end
  end
  if n == 1 and not adopt then run.records:scratchpad_start(task, a.start, driver.name == "cmd") end

  if spec.builtin then
    local result = spec.builtin()
    return ended(run, st, a, { code = result.ok and 0 or 1, duration = 0 }, result, driver, ctx)
  end

  local xspec = armed and armed.xspec   -- made for the standby (M.standby_spec)
  local env = armed and armed.env or task_env(run, st, n)
  local stdin, on_stdout
  if not xspec then
    for k, v in pairs(spec.env or {}) do env[k] = v end
    stdin, on_stdout = run.mode:stdio(st, spec.stdin)
  end
  if driver.watch and run.executor.streams then
    -- Live usage: the driver reads the agent's stdout as it comes (through a pipe to coral,
    -- worth it for a few long agents; a command has no watch). The run's usage and
    -- rate_limit_seen act on it when it has them; coral.run.usage journals it otherwise.
    ctx.on_usage = function(usage, cost_usd)
      if run.usage then return run:usage(st, a, usage, cost_usd) end
      live_usage.report(run, st, a, usage, cost_usd)
    end
    ctx.on_rate_limit = function(retry_after)
      if run.rate_limit_seen then run:rate_limit_seen(st, a, retry_after) end
    end
    local watch, mode_out = driver.watch(ctx), on_stdout
    on_stdout = mode_out and function(chunk) mode_out(chunk); watch(chunk) end or watch
  end
  -- In the journal before the process exists (the start, with its pid, comes after): a coral
  -- killed in between leaves an attempt that may have run, which resume counts as in flight.
  -- (A standby's record was written by coral.proc, before it started the process.)
  if not adopt and not fired then run.records:event("spawn", { task = task.id, agent = task.agent, attempt = n }) end
  if not xspec then
    ctx.standby_ok = clean_exit_succeeds(st, driver)
    xspec = spawn_spec(run, st, n, ctx, spec, env, stdin, on_stdout)
    xspec.opened = armed and armed.opened or nil
  end
  xspec.adopt = adopt
  local function on_exit(info)
    st.handle, st.on_exit = nil, nil
    if run.aborted then return end   -- killed by abort(): its records are closed
    live_usage.flush(run, st, a)     -- its last live usage, before its end
    ended(run, st, a, info, nil, driver, ctx)
  end
  if fired then st.on_exit = on_exit end   -- (the standby's process ends here: M.standby_spec)
  -- again: after waiting for a resource (run/resources.lua); the attempt starts now
  local function spawn(again)
    local handle, err, code
    if fired and not again then
      handle, err, code = fired.handle, fired.err, fired.code
    else
      handle, err, code = run.executor:start(xspec, on_exit)
    end
    if not handle then
      -- a later try (run/resources.lua) opens the attempt's files itself
      if xspec.opened then run.executor:close_outputs(xspec.opened); xspec.opened = nil end
      return nil, err, code
    end
    if again then
      if st.first_start == a.start then st.first_start = fsutil.now() end
      a.start, a.mono_start = fsutil.now(), uv.hrtime()
      local now_busy = run.running - resources.waiting(run) + 1   -- it still counts as waiting
      if now_busy > run.max_parallel then run.max_parallel = now_busy end
    end
    st.handle = handle
    a.pid = handle.pid
    if adopt then
      run:emit("adopt", { task = task.id, agent = task.agent, attempt = n, job_id = handle.job_id })
    else
      -- stale: why a task that declares outputs is not up to date (its first attempt only)
      local fields = { task = task.id, agent = task.agent, attempt = n, pid = handle.pid, pgid = handle.pid,
                       stale = n == 1 and st.stale or nil }
      if fired and not again then run:hold_start(fields) else run:emit("start", fields) end
    end
    run.mode:started(st)
    return true
  end
  local ok, err, code = spawn(false)
  if ok then return end
  -- A link (or a FIFO, a dir, a second name) where the attempt's files go, refused by the open
  -- itself: the run stops, as for any of coral's own files (docs/runner.md).
  if REFUSED_OPEN[code] then
    for _, path in ipairs { ctx.stdout_path, ctx.stderr_path } do
      if err:find(path, 1, true) then
        local why = code == "EMLINK" and (path .. " has another name (a hard link: coral does not write through it)")
          or fsutil.refusal(path, uv.fs_lstat(path), "file")
        error(why or err, 0)
      end
    end
  end
  local function give_up(e, e_code)
    ended(run, st, a, nil, { ok = false, error = e, retryable = false, code = e_code }, driver, ctx)
  end
  if not resources.short(code) then return give_up(err, code) end
  -- Short of descriptors, processes or memory: it waits, and its attempt starts with its process.
  run.max_parallel = max_before
  resources.wait(run, st, err, code, spawn, give_up, function() ended(run, st, a, nil, nil, driver, ctx) end)
end

return M
