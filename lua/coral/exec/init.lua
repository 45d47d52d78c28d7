--- Executors: where a task's process runs, one file each in this directory, found by name
-- (local.lua, slurm.lua). The runner only calls start(spec, on_exit), the handle's cancel(),
-- recover() on resume and close() at the run's end when the executor has them; a cluster
-- engine plugs in behind them.
--   spec:    { argv = {...}, env = {K = v}, cwd, stdin = string|"pipe"|nil, stdout_path,
--              stderr_path, timeout, idle_timeout, kill_grace, on_stdout = fn(chunk),
--              slurm = {...}, adopt = {job_id, start}, on_submit = fn(job_id) }
--   on_exit: fn(info) with info = { code, signal, timed_out = nil|"timeout"|"idle", duration,
--              cpu_seconds, max_rss_kb, pid }
--   handle:  { pid, job_id, cancel(self, hard), write(self, data, on_written), close_stdin(self),
--              and for back-pressure in a pipeline: write_queue_size(self), pause_stdout(self),
--              resume_stdout(self) }
--   A start that fails for want of a resource returns nil, err and EMFILE, ENFILE, EAGAIN or
--   ENOMEM: the task waits and starts again later (run/resources.lua). A streaming executor
--   writes stdout_path in full before it hands a chunk to on_stdout: a pipeline consumer that
--   starts late reads what it missed from there (run/flow.lua).
--   fields:  name; on_this_machine (task CLIs are looked up on this PATH before a run);
--            streams (stdin pipes and on_stdout work: pipeline mode needs it)
local M = {}

--- The executor called `name` (default "local"), or a table that already is one; nil and an
-- error for an unknown name.
function M.get(name, opts)
  if type(name) == "table" then return name end
  name = name or "local"
  if type(name) ~= "string" or not name:match("^[%w_]+$") then
    return nil, "unknown executor '" .. tostring(name) .. "'"
  end
  local ok, mod = pcall(require, "coral.exec." .. name)
  if not ok or type(mod) ~= "table" or not mod.new then
    return nil, "unknown executor '" .. tostring(name) .. "' (executors: local, slurm)"
  end
  return mod.new(opts)
end

--- The local executor (coral.exec.local).
function M.local_executor(opts)
  return require("coral.exec.local").new(opts)
end

return M
