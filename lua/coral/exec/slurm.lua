--- The Slurm executor: each task attempt becomes one Slurm batch job. coral keeps the
-- scheduling, policies, coordination and records; only "start a task", "cancel a task" and
-- "learn that it ended" go through Slurm (the executor interface of coral.exec).
--
-- Why batch jobs and not job steps in an allocation: a step is an `srun` child of coral, so
-- it dies with coral and cannot be adopted on resume, and it needs an allocation sized up
-- front; a batch job outlives coral and is found again by its comment. Steps start faster
-- (docs/slurm.md has the numbers).
--
-- Why poll squeue rather than a completion record written by the job: Slurm knows the end of
-- every job, even one it cancelled or killed at its time limit before the job could write
-- anything, and one `squeue --jobs=...` call per tick covers all of the run's jobs.
-- `-O exit_code` is the raw wait status, so both the exit code and the signal come through.
--
-- What must stay true: a job is ours only if its comment is `coral:<run id>:<attempt>:<task>`;
-- coral never cancels a job by name or user, only by an id it submitted or found by comment.
-- <task> in the comment and the job name is the task id as a file name (names.path_name):
-- bounded in length, without ":", "|" or spaces, whatever the id.
local check = require "coral.check"
local fsutil = require "coral.fsutil"
local names = require "coral.records.names"
local proc = require "coral.proc"
local uv = require "luv"

local M = {}

-- Options of the executor (defaults for every task) and of a task's `slurm` table.
local TASK_OPTIONS = {
  partition = "string", cpus = "integer", mem = "string|integer", time = "string|integer",
  account = "string", qos = "string", args = "list|string",
}
local EXECUTOR_OPTIONS = {
  kill_grace = "number", poll = "number", coral_bin = "string",
  sbatch = "string", squeue = "string", scancel = "string",
}
for k, v in pairs(TASK_OPTIONS) do EXECUTOR_OPTIONS[k] = v end

-- Slurm states after which a job never runs again.
local FINISHED = {
  COMPLETED = true, FAILED = true, CANCELLED = true, TIMEOUT = true, NODE_FAIL = true,
  PREEMPTED = true, BOOT_FAIL = true, DEADLINE = true, OUT_OF_MEMORY = true, REVOKED = true,
  SPECIAL_EXIT = true,
}

local SQUEUE_FORMAT = "JobID:|,State:|,exit_code:|,Comment:|"

-- For the batch script only, which Slurm runs with /bin/sh: coral itself runs sbatch, squeue and
-- scancel with an argv, through coral.proc, never through a shell.
local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Slurm expands %j, %x, ... in --output/--error/--input paths; %% is a literal %.
local function slurm_path(path)
  return (path:gsub("%%", "%%%%"))
end

local function words(s)
  local out = {}
  for w in s:gmatch("%S+") do out[#out + 1] = w end
  return out
end

local function comment_of(run_id, attempt, task_id)
  return string.format("coral:%s:%s:%s", run_id, attempt, task_id)
end

-- "coral:<run>:<attempt>:<task>" -> run, attempt, task
local function parse_comment(c)
  local run, attempt, task = (c or ""):match("^coral:([^:]+):(%d+):(.*)$")
  return run, tonumber(attempt), task
end

-- Lines of `squeue -O JobID:|,State:|,exit_code:|,Comment:|` -> { [id] = { state, status, comment } }
local function parse_squeue(text)
  local jobs = {}
  for line in text:gmatch("[^\n]+") do
    local id, state, status, comment = line:match("^(%d+)|([^|]*)|([^|]*)|(.-)|?$")
    if id then
      jobs[id] = { state = state:match("^%S+"), status = tonumber(status), comment = comment }
    end
  end
  return jobs
end

-- A raw wait status -> code (128 + signal when killed, as a shell reports it), signal.
local function decode_status(w)
  if not w then return nil, nil end
  local sig = w & 0x7f
  if sig ~= 0 then return 128 + sig, sig end
  return (w >> 8) & 0xff, nil
end

-- The message for a Slurm command that failed: what it said on stderr (else stdout), or how it
-- ended. Slurm's commands already begin their errors with their name ("sbatch: error: ..."):
-- the name is added only when missing, so a message reads "sbatch: ..." either way.
local function failure(argv, info, out, err)
  local name = tostring(argv[1]):match("[^/]*$")
  local text = (err:match("%S") and err or out):gsub("^%s+", ""):gsub("%s+$", "")
  if text == "" then
    text = info.signame and ("killed by " .. info.signame) or ("exit code " .. tostring(info.code))
  end
  if text:sub(1, #name + 1) == name .. ":" then return text end
  return name .. ": " .. text
end

-- proc.spawn options that run argv (no shell) and collect its stdout and stderr into `out`.
local function spawn_opts(argv, env, out)
  out.stdout, out.stderr = {}, {}
  return {
    argv = argv, env = env,
    stdout = function(d) out.stdout[#out.stdout + 1] = d end,
    stderr = function(d) out.stderr[#out.stderr + 1] = d end,
  }
end

-- Runs argv to the end on the loop; calls done(stdout, nil, info) when it exits 0, else
-- done(nil, err, info) (info: coral.proc's exit information).
-- Returns the proc, or nil, err, code when it cannot start (the program is missing).
local function run_async(argv, env, done)
  local out = {}
  local opts = spawn_opts(argv, env, out)
  opts.on_exit = function(info)
    local stdout, stderr = table.concat(out.stdout), table.concat(out.stderr)
    if info.code == 0 then return done(stdout, nil, info) end
    done(nil, failure(argv, info, stdout, stderr), info)
  end
  return proc.spawn(opts)
end

-- Runs argv to the end, blocking: p:wait() runs the loop until the command is reaped, so it
-- must not be called from a loop callback (only before the run's loop starts: resume).
-- Returns its stdout when it exits 0, else nil, err (and the error code when it cannot start).
local function run_sync(argv)
  local out = {}
  local p <close>, err, code = proc.spawn(spawn_opts(argv, nil, out))
  if not p then return nil, err, code end
  local info = p:wait()
  local stdout, stderr = table.concat(out.stdout), table.concat(out.stderr)
  if info.code == 0 then return stdout end
  return nil, failure(argv, info, stdout, stderr)
end

-- Tasks run on the cluster's nodes (their CLIs are not looked up here), and nothing streams
-- between them (pipeline mode refuses this executor).
local Slurm = { name = "slurm", on_this_machine = false, streams = false }
Slurm.__index = Slurm
M.Slurm = Slurm

--- A Slurm executor. opts: partition, cpus, mem, time, account, qos, args (defaults for every
-- task; a task's `slurm` table overrides them, and its `args` come after these), kill_grace (5),
-- poll (seconds between squeue calls, 0.5), coral_bin (the coral binary's path on the nodes,
-- if it is not the same as here), sbatch/squeue/scancel (the commands).
function M.new(opts)
  check.options("coral.exec.slurm", opts, EXECUTOR_OPTIONS, 2)
  opts = opts or {}
  local self = setmetatable({
    defaults = {}, kill_grace = opts.kill_grace or 5, poll_interval = opts.poll or 0.5,
    coral_bin = opts.coral_bin, sbatch = opts.sbatch or "sbatch", squeue = opts.squeue or "squeue",
    scancel = opts.scancel or "scancel", jobs = {}, count = 0,
  }, Slurm)
  for k in pairs(TASK_OPTIONS) do self.defaults[k] = opts[k] end
  return self
end

-- Maps `coral run` options (--slurm-partition ... -> slurm_partition ...) to an executor.
function M.from_cli(opts)
  local o = {}
  for _, k in ipairs { "partition", "cpus", "mem", "time", "account", "qos", "args", "coral_bin" } do
    o[k] = opts["slurm_" .. k]
  end
  if o.mem and tonumber(o.mem) then o.mem = math.tointeger(tonumber(o.mem)) or o.mem end
  return M.new(o)
end

-- The sbatch arguments for one attempt.
function Slurm:sbatch_args(job, ids, script)
  local o = {}
  for k, v in pairs(self.defaults) do o[k] = v end
  local extra = {}
  local function add_args(a)
    for _, w in ipairs(type(a) == "string" and words(a) or a or {}) do extra[#extra + 1] = tostring(w) end
  end
  add_args(self.defaults.args)
  -- the task's resources (what coral's limits count) are what the job asks the cluster for;
  -- its own slurm table says more exactly, and wins
  local res = job.resources or {}
  if res.cpus then o.cpus = math.ceil(res.cpus) end
  if res.mem_gb then o.mem = math.ceil(res.mem_gb * 1024) end   -- sbatch --mem is in MB
  if res.gpu and res.gpu > 0 then extra[#extra + 1] = "--gres=gpu:" .. math.ceil(res.gpu) end
  for k, v in pairs(job.slurm or {}) do o[k] = v end
  add_args(job.slurm and job.slurm.args)
  local grace = job.kill_grace or self.kill_grace
  local argv = {
    self.sbatch, "--parsable", "--export=ALL",
    "--job-name=coral." .. names.path_name(ids.task),
    "--comment=" .. comment_of(ids.run, ids.attempt, names.path_name(ids.task)),
    "--chdir=" .. fsutil.absolute(job.cwd or "."),
    "--output=" .. slurm_path(job.stdout_path), "--error=" .. slurm_path(job.stderr_path),
  }
  if job.stdin_path then argv[#argv + 1] = "--input=" .. slurm_path(job.stdin_path) end
  if o.partition then argv[#argv + 1] = "--partition=" .. o.partition end
  if o.cpus then argv[#argv + 1] = "--cpus-per-task=" .. o.cpus end
  if o.mem then argv[#argv + 1] = "--mem=" .. o.mem end
  if o.account then argv[#argv + 1] = "--account=" .. o.account end
  if o.qos then argv[#argv + 1] = "--qos=" .. o.qos end
  -- coral enforces the task's timeout itself (to the second); Slurm's limit, in minutes, is a
  -- backstop that also frees the node if coral is gone.
  if o.time then
    argv[#argv + 1] = "--time=" .. o.time
  elseif job.timeout and job.timeout > 0 then
    argv[#argv + 1] = "--time=" .. math.ceil((job.timeout + grace) / 60) + 1
  end
  for _, a in ipairs(extra) do argv[#argv + 1] = a end
  argv[#argv + 1] = script
  return argv
end

-- The batch script: exec the task's command, so Slurm's exit code and signal are the task's.
local function script_text(argv, ids)
  local q = {}
  for i, a in ipairs(argv) do q[i] = shell_quote(a) end
  -- printable: the id stays on its comment line (a newline would start a command)
  return string.format("#!/bin/sh\n# coral: run %s, task %s, attempt %s\nexec %s\n",
    ids.run, names.printable(ids.task), ids.attempt, table.concat(q, " "))
end

--- Submits the job (asynchronously: the handle's job_id is set once sbatch answers, and
-- job.on_submit(job_id) is called then). job.adopt = { job_id, start } takes over a job
-- submitted by an earlier coral instead (resume). Returns the handle, or nil, err.
function Slurm:start(job, on_exit)
  if job.stdin == "pipe" or job.on_stdout then
    return nil, "the slurm executor cannot stream between tasks (pipeline mode): use another mode"
  end
  local env = job.env or {}
  local ids = { run = env.CORAL_RUN_ID or "norun", task = env.CORAL_TASK_ID or "task",
                attempt = env.CORAL_ATTEMPT or "1" }
  local oerr = check.option_error("task '" .. ids.task .. "': slurm", job.slurm, TASK_OPTIONS)
  if oerr then return nil, oerr end

  local rec = { job = job, on_exit = on_exit, ids = ids, mono_start = uv.hrtime() }
  local handle = { pid = nil, job_id = nil }
  rec.handle = handle
  handle.cancel = function(_, hard) self:cancel(rec, hard) end
  handle.write = function() return nil, "the slurm executor has no stdin pipe" end
  handle.close_stdin = function() end

  if job.adopt then
    rec.wall_start = job.adopt.start
    self:track(rec, tostring(job.adopt.job_id))
    return handle
  end

  if self.coral_bin then
    local old_dir = env.CORAL_BIN and env.CORAL_BIN:match("^(.*)/[^/]*$")
    local new_dir = self.coral_bin:match("^(.*)/[^/]*$")
    env.CORAL_BIN = self.coral_bin
    if env.PATH and old_dir and new_dir and env.PATH:sub(1, #old_dir + 1) == old_dir .. ":" then
      env.PATH = new_dir .. env.PATH:sub(#old_dir + 1)
    end
  end
  local base = job.stdout_path:gsub("%.out$", "")
  local script = base .. ".sbatch"
  local wok, werr = fsutil.write_atomic(script, script_text(job.argv, ids), tonumber("700", 8))
  if not wok then return nil, werr end
  if type(job.stdin) == "string" then
    job.stdin_path = base .. ".in"
    wok, werr = fsutil.write_atomic(job.stdin_path, job.stdin, tonumber("600", 8))
    if not wok then return nil, werr end
  end
  -- The job's environment goes through sbatch's own (--export=ALL), never into a file.
  local argv = self:sbatch_args(job, ids, script)
  local p, perr, pcode = run_async(argv, env, function(out, serr, info)
    -- --parsable answers "<id>" or "<id>;<cluster>"
    local id = out and out:match("^%s*(%d+)")
    if not id then
      serr = serr or ("sbatch: no job id in its answer '" .. out:gsub("%s+$", "") .. "'")
      local f = io.open(job.stderr_path, "ab")
      if f then f:write(serr, "\n"); f:close() end
      return self:finish(rec, { code = info.code ~= 0 and info.code or 1 })
    end
    if job.on_submit then job.on_submit(math.tointeger(tonumber(id))) end
    self:track(rec, id)
  end)
  if not p then return nil, perr, pcode end
  return handle
end

-- Starts watching a job id.
function Slurm:track(rec, id)
  rec.id = id
  rec.handle.job_id = math.tointeger(tonumber(id))
  self.jobs[id] = rec
  self.count = self.count + 1
  if rec.cancel_wanted then self:cancel(rec, rec.cancel_wanted == "hard") end
  self:ensure_timer()
end

function Slurm:ensure_timer()
  if self.timer or self.count == 0 then return end
  self.timer = uv.new_timer()
  local ms = math.max(50, math.floor(self.poll_interval * 1000))
  self.timer:start(0, ms, function() self:poll() end)
end

-- Cancels a job with scancel: TERM (Slurm sends KILL after its KillWait), and KILL from coral
-- after kill_grace if it is still there; hard = KILL at once.
function Slurm:cancel(rec, hard)
  if rec.done then return end
  if not rec.id then           -- sbatch has not answered yet: cancel as soon as it does
    rec.cancel_wanted = hard and "hard" or "soft"
    return
  end
  if rec.cancel_sent == "hard" or (rec.cancel_sent and not hard) then return end
  rec.cancel_sent = hard and "hard" or "soft"
  local argv = hard and { self.scancel, "--signal=KILL", rec.id } or { self.scancel, rec.id }
  -- A failed scancel is not an error of the task: the job may have just ended (squeue will
  -- say), and a soft cancel is followed by a hard one after the grace.
  run_async(argv, nil, function() end)
  if not hard then
    local grace = rec.job.kill_grace or self.kill_grace
    rec.kill_timer = uv.new_timer()
    rec.kill_timer:start(math.floor(grace * 1000), 0, function()
      rec.kill_timer:close()
      rec.kill_timer = nil
      self:cancel(rec, true)
    end)
  end
end

-- Reads the file sizes for the idle timeout.
local function output_size(job)
  local n = 0
  for _, p in ipairs { job.stdout_path, job.stderr_path } do
    local st = uv.fs_stat(p)
    if st then n = n + st.size end
  end
  return n
end

-- One squeue call for every job being watched; applies timeouts and delivers ends.
function Slurm:poll()
  if self.polling then return end
  local ids = {}
  for id in pairs(self.jobs) do ids[#ids + 1] = id end
  if #ids == 0 then return end
  self.polling = true
  local argv = { self.squeue, "-h", "--states=all", "--jobs=" .. table.concat(ids, ","), "-O", SQUEUE_FORMAT }
  local p = run_async(argv, nil, function(out, err)
    self.polling = false
    local seen = parse_squeue(out or "")
    local now = uv.hrtime()
    for _, id in ipairs(ids) do
      local rec = self.jobs[id]
      local s = seen[id]
      if rec and s then
        rec.misses = 0
        self:observe(rec, s, now)
      elseif rec and (out or err:find("Invalid job id", 1, true)) then
        -- Slurm forgot the job (MinJobAge passed, or a restarted controller): its end is unknown.
        rec.misses = (rec.misses or 0) + 1
        if rec.misses >= 3 then
          self:note(rec, "slurm no longer knows job " .. id .. "; its result is unknown")
          self:finish(rec, { code = 1 })
        end
      end
    end
  end)
  if not p then self.polling = false end
end

function Slurm:note(rec, text)
  local f = io.open(rec.job.stderr_path, "ab")
  if f then f:write("coral: ", text, "\n"); f:close() end
end

function Slurm:observe(rec, s, now)
  local job = rec.job
  if FINISHED[s.state] then
    local code, sig = decode_status(s.status)
    local info = { code = code, signal = sig, slurm_state = s.state }
    if s.state == "TIMEOUT" then info.timed_out = "timeout" end
    if rec.timed_out then info.timed_out = rec.timed_out end
    if s.state == "CANCELLED" and not sig and code == 0 then info.code, info.signal = 143, 15 end
    if s.state ~= "COMPLETED" and s.state ~= "CANCELLED" and s.state ~= "FAILED" and info.code == 0 and not sig then
      info.code = 1
      self:note(rec, string.format("slurm job %s ended in state %s", rec.id, s.state))
    end
    return self:finish(rec, info)
  end
  if s.state ~= "RUNNING" then return end
  -- The task's clock starts when it runs, not while it waits in the queue.
  if not rec.run_start then
    rec.run_start = now
    rec.last_size, rec.last_change = output_size(job), now
  end
  if rec.timed_out then return end
  if job.timeout and job.timeout > 0 and now - rec.run_start >= job.timeout * 1e9 then
    rec.timed_out = "timeout"
    return self:cancel(rec)
  end
  if job.idle_timeout and job.idle_timeout > 0 then
    local size = output_size(job)
    if size ~= rec.last_size then
      rec.last_size, rec.last_change = size, now
    elseif now - rec.last_change >= job.idle_timeout * 1e9 then
      rec.timed_out = "idle"
      return self:cancel(rec)
    end
  end
end

function Slurm:finish(rec, info)
  if rec.done then return end
  rec.done = true
  if rec.kill_timer then rec.kill_timer:close(); rec.kill_timer = nil end
  if rec.id and self.jobs[rec.id] then
    self.jobs[rec.id] = nil
    self.count = self.count - 1
  end
  if self.count == 0 and self.timer then
    self.timer:close()
    self.timer = nil
  end
  if rec.wall_start then
    info.duration = fsutil.now() - rec.wall_start
  else
    info.duration = (uv.hrtime() - rec.mono_start) / 1e9
  end
  info.timeout, info.idle_timeout = rec.job.timeout, rec.job.idle_timeout
  info.job_id = rec.handle.job_id
  rec.on_exit(info)
end

--- Resume: finds the run's jobs that Slurm still knows (by their comment). `running` maps
-- task id -> { attempt = n } for the attempts the journal shows as started and not ended.
-- Returns task id -> { job_id, state } for the jobs to adopt (that exact task and attempt);
-- cancels every other unfinished job of the run (one submitted just before coral died, or of
-- an attempt the journal does not expect). Blocking: called before the run's loop starts.
function Slurm:recover(run_id, running)
  local user = os.getenv("USER") or os.getenv("LOGNAME")
  local argv = { self.squeue, "-h", "--states=all", "-O", SQUEUE_FORMAT }
  if user then table.insert(argv, 3, "--user=" .. user) end
  local text, err = run_sync(argv)
  local adopt = {}
  if not text then
    io.stderr:write("coral: warning: cannot list the run's slurm jobs: ", err, "\n")
    return adopt
  end
  -- comments name tasks by names.path_name; a job of an earlier coral by the id itself
  local by_name = {}
  for task in pairs(running) do by_name[names.path_name(task)] = task end
  local stray = {}
  for id, s in pairs(parse_squeue(text)) do
    local run, attempt, task = parse_comment(s.comment)
    if run == run_id then
      task = by_name[task] or task
      local want = running[task]
      if want and want.attempt == attempt and not adopt[task] then
        adopt[task] = { job_id = math.tointeger(tonumber(id)), state = s.state }
      elseif not FINISHED[s.state] then
        stray[#stray + 1] = id
      end
    end
  end
  if #stray > 0 then
    table.sort(stray, function(x, y) return tonumber(x) < tonumber(y) end)
    local ok, cerr = run_sync({ self.scancel, table.unpack(stray) })
    if not ok then
      io.stderr:write("coral: warning: cannot cancel the run's unexpected slurm jobs ",
                      table.concat(stray, ","), ": ", cerr, "\n")
    end
  end
  return adopt
end

M.parse_squeue, M.decode_status, M.parse_comment = parse_squeue, decode_status, parse_comment
return M
