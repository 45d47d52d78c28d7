--- A script run as `coral script.lua args` that calls runner:execute_plan itself, and how
-- `coral resume` runs it again.
--
-- src/main.c says when the script file starts (coral.cli.script_start; never for `coral -e`,
-- standard input or the REPL). From then on each execute_plan call of the process that brings
-- neither its own invocation nor a run to resume is numbered, 1, 2, ..., and its run records
-- (invocation.json, through coral.records) how to run the script again:
--   { script = absolute path, args = {...}, options = {...} (coral's own, before the script),
--     cwd = ..., execution = id of this execution of the script, call = k }
-- `coral resume` of such a run runs the script again in place of itself (host.exec), in the
-- recorded cwd, with CORAL_RESUME_EXECUTION naming the execution: call k then continues the
-- run that call k of that execution started in its own project dir, and a call that started
-- no run (the script stopped before it) starts one under the same execution and number.
-- A script that does other things between its calls does them again: only the runs resume.
local fsutil = require "coral.fsutil"
local host = require "coral.host"
local records = require "coral.records"
local uv = require "luv"

local M = {}

local ENV_EXECUTION, ENV_RETRY_FAILED = "CORAL_RESUME_EXECUTION", "CORAL_RESUME_RETRY_FAILED"

-- The script this process runs (nil: none, or it is over): script, args, options, cwd,
-- execution, resuming (the execution is an earlier one), retry_failed, calls (made so far).
local current

--- The script file starts: `options`, coral's options before it; `args`, its arguments.
function M.start(script, args, options)
  local execution = os.getenv(ENV_EXECUTION)
  local retry_failed = os.getenv(ENV_RETRY_FAILED) == "1"
  -- Read once: a task of the script, or a coral that one starts, is not this resume.
  uv.os_unsetenv(ENV_EXECUTION)
  uv.os_unsetenv(ENV_RETRY_FAILED)
  local resuming = execution ~= nil and execution ~= ""
  current = {
    script = fsutil.absolute(script), args = args, options = options, cwd = uv.cwd(),
    execution = resuming and execution or records.new_run_id(), resuming = resuming,
    retry_failed = resuming and retry_failed, calls = 0,
  }
end

--- The script is over (the REPL of `coral -i script.lua` starts): later calls are not its own.
function M.stop()
  current = nil
end

--- The options for an execute_plan call: `opts` as they are when no script runs or the call
-- brings its own invocation or resume; else a copy with `script_invocation` (what its run
-- records) and, when the script is being resumed, `resume` (the run this call started before,
-- in `project_dir`, if any) and `retry_failed`.
function M.call_options(opts, project_dir)
  if not current or opts.invocation or opts.resume then return opts end
  current.calls = current.calls + 1
  local copy = {}
  for k, v in pairs(opts) do copy[k] = v end
  copy.script_invocation = { script = current.script, args = current.args, options = current.options,
                             cwd = current.cwd, execution = current.execution, call = current.calls }
  if current.resuming then
    copy.resume = records.find_script_run(project_dir, current.execution, current.calls)
    if copy.resume and current.retry_failed then copy.retry_failed = true end
  end
  return copy
end

--- `coral resume` of a run a script started (its invocation has `script`): runs the script
-- again in place of this process, as described above. Returns only on failure: nil and a
-- message (the script or its directory is gone, or the exec failed).
function M.resume(run_id, invocation, retry_failed)
  local script, cwd = invocation.script, invocation.cwd
  if type(script) ~= "string" or type(cwd) ~= "string" or type(invocation.execution) ~= "string" then
    return nil, string.format("cannot resume run %s: its invocation.json is not one coral wrote", run_id)
  end
  if not uv.fs_access(script, "R") then
    return nil, string.format("cannot resume run %s: its script %s is gone (or not readable)", run_id, script)
  end
  local st = uv.fs_stat(cwd)
  if not st or st.type ~= "directory" or not uv.chdir(cwd) then
    return nil, string.format("cannot resume run %s: the directory its script ran in, %s, is gone", run_id, cwd)
  end
  uv.os_setenv(ENV_EXECUTION, invocation.execution)
  if retry_failed then uv.os_setenv(ENV_RETRY_FAILED, "1") else uv.os_unsetenv(ENV_RETRY_FAILED) end
  if not host.exe then return nil, "cannot resume run " .. run_id .. ": coral cannot find its own binary" end
  local argv = { host.exe }
  for _, o in ipairs(invocation.options or {}) do argv[#argv + 1] = o end
  argv[#argv + 1] = script
  for _, a in ipairs(invocation.args or {}) do argv[#argv + 1] = a end
  io.stdout:flush()
  local _, err = host.exec(host.exe, argv)
  return nil, err
end

return M
