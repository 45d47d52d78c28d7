--- Executors: where a task's process runs. The runner only calls start(job, on_exit) and the
-- handle's cancel(); a cluster engine plugs in behind the same three calls.
--   job:     { argv = {...}, env = {K = v}, cwd, stdin = string|"pipe"|nil, stdout_path,
--              stderr_path, timeout, idle_timeout, kill_grace, on_stdout = fn(chunk) }
--   on_exit: fn(info) with info = { code, signal, timed_out = nil|"timeout"|"idle", duration,
--              cpu_seconds, max_rss_kb, pid }
--   handle:  { pid, cancel(self, hard), write(self, data), close_stdin(self) }
local M = {}

local Local = {}
Local.__index = Local

function M.local_executor(opts)
  return setmetatable({ kill_grace = opts and opts.kill_grace or 5 }, Local)
end

function Local:start(job, on_exit)
  local proc = require "coral.proc"
  local stdout = { file = job.stdout_path }
  local stderr = { file = job.stderr_path }
  if job.on_stdout then stdout.on_data = job.on_stdout end
  local p, err, code = proc.spawn {
    argv = job.argv,
    env = job.env,
    cwd = job.cwd,
    stdin = job.stdin,
    stdout = stdout,
    stderr = stderr,
    timeout = job.timeout and job.timeout > 0 and job.timeout or nil,
    idle_timeout = job.idle_timeout and job.idle_timeout > 0 and job.idle_timeout or nil,
    kill_grace = job.kill_grace or self.kill_grace,
    on_exit = on_exit,
  }
  if not p then return nil, err, code end
  return {
    pid = p.pid,
    proc = p,
    -- cancel(): TERM to the process group, KILL after the grace period; cancel(true): KILL now.
    cancel = function(_, hard) p:terminate(hard and 0 or nil) end,
    write = function(_, data) return p:write(data) end,
    close_stdin = function() return p:close_stdin() end,
  }
end

--- The executor called `name`, or a table that already is one.
function M.get(name, opts)
  if type(name) == "table" then return name end
  if name == nil or name == "local" then return M.local_executor(opts) end
  local ok, mod = pcall(require, "coral.exec." .. name)
  if not ok then return nil, "unknown executor '" .. tostring(name) .. "'" end
  return mod.new(opts)
end

return M
