--- The local executor: each task a child process of coral on this machine, through coral.proc
-- (its own process group, a timeout that kills the group, output straight to its files).
-- Nothing a task starts outlives it: what leaves its group is killed when its process exits,
-- and whatever is still left when the run ends (coral.exec.reaper).
local fsutil = require "coral.fsutil"
local proc = require "coral.proc"
local reaper = require "coral.exec.reaper"
local uv = require "luv"

local Local = {
  name = "local",
  on_this_machine = true,   -- a task's CLI must be on this machine's PATH
  streams = true,           -- stdin pipes and on_stdout work (pipeline mode)
  refuses_links = true,     -- an attempt's files are refused in their open (coral.proc's nofollow)
}
Local.__index = Local

local M = {}

-- Descriptors. A task takes up to 8 while its process starts (a pipe and a file for stdout and
-- for stderr, both ends of each pipe, and a pipe for stdin) and 4 or 5 while it runs. coral
-- keeps RESERVE for its own records (journal, locks, atomic writes, a pipeline's reads): a task
-- that would take them does not start, and its start fails with EMFILE, which the run takes as
-- a reason to wait (run/resources.lua), not as a failure of the task.
M.FDS_PER_TASK = 8
M.FDS_RESERVE = 16

-- Counting them (proc.fds: a scan of /proc/self/fd) costs two directory reads a task; an
-- estimate does as well while it is far from the limit: what was open without the tasks at the
-- last count, plus FDS_PER_TASK for each task running now (more than a running task holds).
-- The executor counts again when the estimate comes within twice a task's need of the limit,
-- and every RECOUNT starts (coral's own records may take more as the run goes on).
M.RECOUNT = 64

function Local:fd_room()
  self.starts = self.starts + 1
  local need = M.FDS_PER_TASK + M.FDS_RESERVE
  if self.fds_base and self.starts % M.RECOUNT ~= 0
     and self.fds_base + self.live * M.FDS_PER_TASK + 2 * need <= self.fds_soft then
    return true
  end
  local open, soft = proc.fds()
  -- a running task holds at least 4: the rest is coral's (counted high, so the estimate errs safe)
  self.fds_base, self.fds_soft = math.max(0, open - 4 * self.live), soft
  if open + need <= soft then return true end
  return nil, string.format("not enough file descriptors: %d of %d in use (ulimit -n), a task needs up to %d " ..
    "and coral keeps %d for its records", open, soft, M.FDS_PER_TASK, M.FDS_RESERVE)
end

function M.new(opts)
  -- what was adopted before the run began is not the run's to kill
  return setmetatable({ kill_grace = opts and opts.kill_grace or 5, spared = reaper.snapshot(),
                        starts = 0, live = 0 }, Local)
end

-- What the runner holds of a task's process (one method table, no closures a task):
--   cancel(): TERM to the process group, KILL after the grace period; cancel(true): KILL now.
--   write(data, on_written): on_written(err) once the data has left coral's memory (pipeline
--   back-pressure); close_stdin(); write_queue_size(); pause_stdout() stops reading its stdout
--   (it blocks once the pipe is full), resume_stdout() reads it again.
local Handle = {}
Handle.__index = Handle
function Handle:cancel(hard) self.proc:terminate(hard and 0 or nil) end
function Handle:write(data, on_written) return self.proc:write(data, on_written) end
function Handle:close_stdin() return self.proc:close_stdin() end
function Handle:write_queue_size() return self.proc:write_queue_size() end
function Handle:pause_stdout() self.proc:pause_stdout() end
function Handle:resume_stdout() self.proc:resume_stdout() end

-- When the task's process itself has exited (on_reaped), what the task left running outside
-- its group is killed (it may hold the task's pipes, and on_exit waits for them), and the
-- attempt's stderr file says so (before on_exit).
local function kill_left(run_id, task_id)
  local pids, names = reaper.kill_task(run_id, task_id)
  if #pids == 0 then return nil end
  return string.format("\n[coral: killed %d process%s the task left running: %s]\n", #pids,
    #pids == 1 and "" or "es", reaper.describe(pids, names))
end

--- Opens an attempt's stdout and stderr files ahead of its start (the runner does so for the
-- task next in line while its workers are busy), as start would open them; start takes them
-- as spec.opened. Returns { out =, err = } (close with close_outputs), or nil when either
-- cannot be opened now: start then opens them itself, and reports what is wrong.
function Local.open_outputs(_, stdout_path, stderr_path)
  local out = proc.open_output(stdout_path)
  local err = out and proc.open_output(stderr_path)
  if not err then
    if out then out:close() end
    return nil
  end
  return { out = out, err = err }
end

function Local.close_outputs(_, opened)
  opened.out:close()
  opened.err:close()
end

-- The options of proc.spawn for `spec`; `on_exit(info)` is called after the executor's own.
function Local:spawn_options(spec, on_exit)
  -- the attempt's own files: a link, a FIFO or a hard link put where they go is refused in the
  -- open itself, which no check by path before it can race (or opened so ahead: spec.opened)
  local opened = spec.opened
  local stdout = { file = spec.stdout_path, nofollow = true, opened = opened and opened.out or nil }
  local stderr = { file = spec.stderr_path, nofollow = true, opened = opened and opened.err or nil }
  if spec.on_stdout then stdout.on_data = spec.on_stdout end
  local env = spec.env or {}
  local run_id, task_id = env.CORAL_RUN_ID, env.CORAL_TASK_ID
  local left
  return {
    argv = spec.argv,
    env = spec.env,
    cwd = spec.cwd,
    stdin = spec.stdin,
    stdout = stdout,
    stderr = stderr,
    timeout = spec.timeout and spec.timeout > 0 and spec.timeout or nil,
    idle_timeout = spec.idle_timeout and spec.idle_timeout > 0 and spec.idle_timeout or nil,
    kill_grace = spec.kill_grace or self.kill_grace,
    standby = spec.standby,
    on_reaped = run_id and task_id and function() left = kill_left(run_id, task_id) end or nil,
    on_exit = function(info)
      self.live = self.live - 1
      -- (not through a link the task may have put in its stderr file's place)
      local fd = left and spec.stderr_path and fsutil.open(spec.stderr_path, "a", tonumber("600", 8))
      if fd then
        fsutil.write_all(fd, left, -1)
        uv.fs_close(fd)
      end
      return on_exit(info)
    end,
  }
end

-- The handle of a process started from spawn_options.
function Local:started(p)
  self.live = self.live + 1
  return setmetatable({ pid = p.pid, proc = p }, Handle)
end

function Local:start(spec, on_exit)
  local room, why = self:fd_room()
  if not room then return nil, why, "EMFILE" end
  local p, err, code = proc.spawn(self:spawn_options(spec, on_exit))
  if not p then return nil, err, code end
  return self:started(p)
end

--- Makes `spec` the standby (coral.proc's): started by C at the next clean exit of a process
-- whose spec says `standby`, after `record` (a journal line up to its time, run/standby.lua)
-- is appended to `fd`; then `on_start(handle)` or `on_start(nil, err, code)`. Returns false when
-- the descriptors are short (the start would wait for them: it is left to the runner).
function Local:standby(spec, on_exit, fd, record, on_start)
  if not self:fd_room() then return false end
  -- (made once a spec: the same task may be set again after a pump that took it down)
  spec.standby_options = spec.standby_options or self:spawn_options(spec, on_exit)
  proc.standby { spawn = spec.standby_options, fd = fd, record = record,
                 on_start = function(p, err, code)
                   if p then return on_start(self:started(p)) end
                   return on_start(nil, err, code)
                 end }
  return true
end

--- Takes the standby down (it will not start).
function Local.standby_off()
  proc.standby(nil)
end

--- At the run's end: every process the run's tasks left, wherever it went, is killed and
-- reaped.
function Local:close()
  reaper.kill_all(self.spared)
end

M.Local = Local
return M
