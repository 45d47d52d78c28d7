--- Drivers: how a task becomes a process and how its end becomes a result.
-- A driver is a table { name, prepare(task, ctx) -> spec, finish(task, info, ctx) -> result }.
--   spec:   { argv = {...} } or { cmd = "shell text" }, plus optional stdin (string), env
--           (table of additions); or { builtin = function() return result end } for a driver
--           that runs no process.
--   result: { ok = bool, text = final output, error = why it failed,
--             rate_limited = bool (back off and retry; retry_after = seconds, if known),
--             retryable = bool (default: not ok), usage = {input_tokens=, output_tokens=, ...},
--             cost_usd = number }
--   ctx:    what the runner knows of the attempt: prompt, prompt_path, project_dir, run_dir,
--           stdout_path, stderr_path, output_path, scratchpad, activity, attempt, model,
--           permission_mode, role (the agent role table, if any), timeout, estimate, sim_scale.
--   watch:  optional watch(ctx) -> function(chunk), for a CLI that streams its usage: fed the
--           process's stdout as it comes (cut anywhere), it calls ctx.on_usage(usage, cost_usd)
--           with the attempt's totals so far (cost_usd nil when not known yet) and
--           ctx.on_rate_limit(retry_after or nil) for a rate limit the CLI waits out itself.
--           Local executor only; finish still reads the whole stdout file.
-- A driver that runs an installed program names it as `program`: a run checks it is on PATH
-- before it starts, so a missing CLI is one clear error, not a failed task and its skipped plan.
-- Built in: claude, codex, gemini, aider (agent CLIs), cmd, sim, prompt, and auto (the first
-- agent CLI on PATH, else prompt). A recipe registers its own with M.register, or passes a
-- driver table as a task's `driver`; a project's .coral/drivers/*.lua files each return a
-- driver (or a list of them) and are loaded when a run in that project asks for a driver.
-- M.claude{...}, M.codex{...}, M.gemini{...}, M.aider{...} (coral.drivers.cli) make variants
-- (another binary, extra arguments, another name).
local check = require "coral.check"
local fsutil = require "coral.fsutil"
local path_name = require("coral.records.names").path_name

local M = {}
local registry = {}
local loaded_projects = {}

-- What is wrong with `driver` as a driver, or nil.
local function driver_error(driver)
  if type(driver) ~= "table" or type(driver.name) ~= "string" then
    return "coral.drivers.register: a driver is a table with a name"
  end
  if type(driver.prepare) ~= "function" then
    return string.format("coral.drivers.register: driver '%s' has no prepare function", driver.name)
  end
  if driver.finish ~= nil and type(driver.finish) ~= "function" then
    return string.format("coral.drivers.register: driver '%s': finish must be a function", driver.name)
  end
  if driver.watch ~= nil and type(driver.watch) ~= "function" then
    return string.format("coral.drivers.register: driver '%s': watch must be a function", driver.name)
  end
end

--- Registers a driver under its name (replacing one of the same name); returns it.
function M.register(driver)
  local err = driver_error(driver)
  if err then check.fail(err, 2) end
  registry[driver.name] = driver
  return driver
end

local tail = fsutil.tail

--- The usual reading of a process's end: success is exit 0.
function M.default_finish(_, info, ctx)
  if info.code == 0 and not info.signal and not info.timed_out then
    -- The command's stdout is its output: handed to dependents as it is, not copied.
    return { ok = true, output_path = ctx.stdout_path }
  end
  local text = ctx.stdout_path and tail(ctx.stdout_path, 64 * 1024) or ""
  local why
  if info.timed_out == "idle" then why = string.format("no output for %gs (idle timeout)", info.idle_timeout or 0)
  elseif info.timed_out then why = string.format("timed out after %gs", info.timeout or 0)
  elseif info.signal then why = "killed by signal " .. tostring(info.signal)
  else why = "exit code " .. tostring(info.code) end
  local err_tail = ctx.stderr_path and tail(ctx.stderr_path, 400):gsub("%s+$", "") or ""
  if err_tail ~= "" then why = why .. ": " .. err_tail:match("([^\n]*)$") end
  return { ok = false, text = text, error = why, retryable = true }
end

M.register {
  name = "cmd",
  summary = "the task's own command (cmd = argv list, or a string run by /bin/sh -c)",
  prepare = function(task)
    if task.cmd == nil then return nil, "task '" .. task.id .. "' has no cmd for the cmd driver" end
    if type(task.cmd) == "string" then return { cmd = task.cmd } end
    return { argv = task.cmd }
  end,
  finish = M.default_finish,
}

-- The simulated agent: a real process (coral itself) that sleeps the task's estimate times a
-- scale factor, writes a small deliverable and a note, and says it is simulated. The
-- deliverable is deliverables/<the task id as a file name>.md: the name its task dir has.
local SIM_SCRIPT = [[
local seconds, deliverable, scratchpad, agent, task, fail = ...
local uv = require "luv"
io.stdout:write("[simulated agent] ", agent, " working on: ", task, "\n")
io.stdout:flush()
uv.sleep(math.floor(tonumber(seconds) * 1000))
if fail == "1" then
  io.stderr:write("[simulated agent] ", agent, ": simulated failure\n")
  os.exit(1)
end
local f = assert(io.open(deliverable, "w"))
f:write("# ", agent, " (simulated)\n\nTask: ", task, "\n\nThis file was written by coral's sim driver; no real agent ran.\n")
f:close()
assert(require("coral.records").note(scratchpad, "finished (simulated): " .. task, agent))
io.stdout:write("[simulated agent] ", agent, " finished: wrote ", deliverable, "\n")
]]

M.register {
  name = "sim",
  simulated = true,
  summary = "a simulated agent for demos and tests (sleeps estimate x scale, writes a deliverable)",
  prepare = function(task, ctx)
    local seconds = (task.estimate or ctx.estimate or 60) * (ctx.sim_scale or 0.02)
    local fail_attempts = task.context and task.context.sim_fail or 0
    local dir = ctx.project_dir .. "/deliverables"
    fsutil.mkdirs(dir)
    return {
      -- `coral - ARGS` runs the script read from stdin with ARGS as `...`.
      stdin = SIM_SCRIPT,
      argv = { ctx.coral_exe, "-", string.format("%.3f", seconds),
               dir .. "/" .. path_name(task.id) .. ".md", ctx.scratchpad, task.agent, task.task,
               ctx.attempt <= fail_attempts and "1" or "0" },
    }
  end,
  finish = M.default_finish,
}

M.register {
  name = "prompt",
  summary = "writes the composed prompt into the run dir and succeeds (paste it into any agent)",
  prepare = function(_, ctx)
    return {
      builtin = function()
        return { ok = true, text = "Prompt written to " .. ctx.prompt_path .. "\n" }
      end,
    }
  end,
}

-- The agent CLIs, each a driver made by a function of coral.drivers.cli (variants: another
-- binary, extra arguments, another name).
local cli = require "coral.drivers.cli"
M.claude, M.codex, M.gemini, M.aider, M.rate_limit_of = cli.claude, cli.codex, cli.gemini, cli.aider, cli.rate_limit_of
-- a watch's line reader: fn(chunk) handing on_line each whole line of a stream cut anywhere
M.lines = cli.lines

M.register(M.claude())
M.register(M.codex())
M.register(M.gemini())
M.register(M.aider())

-- }}}

--- The agent CLIs `auto` looks for, in order.
M.AUTO_ORDER = { "claude", "codex", "gemini" }

--- Loads the project's .coral/drivers/*.lua (once per project dir). A file returns a driver,
-- a list of drivers, or nothing (having called register itself). A broken file raises with
-- its file:line, like a broken recipe.
function M.load_project(project_dir)
  local dir = fsutil.absolute((project_dir or ".") .. "/.coral/drivers")
  if loaded_projects[dir] then return end
  loaded_projects[dir] = true
  local uv = require "luv"
  local names = {}
  local handle = uv.fs_scandir(dir)
  while handle do
    local name, kind = uv.fs_scandir_next(handle)
    if not name then break end
    if name:match("%.lua$") and kind ~= "directory" then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local path = dir .. "/" .. name
    local chunk, err = loadfile(path)
    if not chunk then check.user_error(err) end
    local value = chunk()
    if type(value) == "table" and value.name then value = { value } end
    for _, d in ipairs(type(value) == "table" and value or {}) do
      local derr = driver_error(d)
      if derr then check.user_error(derr, path) end
      registry[d.name] = d
    end
  end
end

--- The driver called `name` ("auto" resolved against PATH), or nil and an error. With
-- `project_dir`, the project's own drivers are loaded first.
function M.get(name, project_dir)
  if project_dir then M.load_project(project_dir) end
  if name == "auto" then
    for _, name_ in ipairs(M.AUTO_ORDER) do
      if registry[name_] and fsutil.which(name_) then return registry[name_] end
    end
    return registry.prompt
  end
  local d = registry[name]
  if not d then
    local known = {}
    for n in pairs(registry) do known[#known + 1] = n end
    table.sort(known)
    return nil, string.format("unknown driver '%s' (known: auto, %s)", tostring(name), table.concat(known, ", "))
  end
  return d
end

function M.list()
  local out = {}
  for _, d in pairs(registry) do out[#out + 1] = d end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

return M
