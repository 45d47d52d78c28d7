--- Up-to-date checks. A task that declares outputs is not run again while nothing that made them
-- has changed: its outputs are where its last success in this project left them (same mtimes),
-- its inputs are as they were then and none is newer than an output (make's rule), its
-- definition (agent, task text, cmd, env, driver, model, inputs, outputs) is the same, and each
-- dependency is up to date too or hands it over only through declared files. The record of each
-- such success is in .coral/project_state.yaml (`built`), written with the project state.
-- A resumed run checks definitions against the plan its run recorded (plan.json).
local cjson = require "cjson"
local fsutil = require "coral.fsutil"
local uv = require "luv"

local M = {}

--- The fields of a task's definition, in the order `coral why` names them.
M.FIELDS = { "agent", "task", "cmd", "env", "driver", "model", "inputs", "outputs" }

--- The driver a task names: its own, `cmd` for a command, else the run's (as configured: "auto"
-- stays "auto", so the record does not depend on which CLIs this machine has).
function M.driver_name(task, run_driver)
  local d = task.driver
  if type(d) == "table" then return d.name or "custom" end
  return d or (task.cmd and "cmd") or run_driver
end

--- The definition of `task` when run with the runner options `runner` (driver, model): a table
-- of the fields above (absent ones nil), as plan.json records it.
function M.definition(task, runner)
  return {
    agent = task.agent, task = task.task, cmd = task.cmd, env = task.env,
    driver = M.driver_name(task, runner.driver), model = task.model or runner.model,
    inputs = task.inputs, outputs = task.outputs,
  }
end

-- One text for a field's value, the same for the task a recipe declares and the one plan.json
-- gives back (JSON numbers come back as floats; an empty list is as good as none).
local function canonical(key, v)
  if v == nil or v == "" or (type(v) == "table" and next(v) == nil) then return "" end
  if type(v) == "number" then return tostring(math.tointeger(v) or v) end
  if type(v) ~= "table" then return tostring(v) end
  if key == "env" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local lines = {}
    for i, k in ipairs(keys) do lines[i] = k .. "=" .. canonical(nil, v[k]) end
    return table.concat(lines, "\n")
  end
  local items = {}
  for i, item in ipairs(v) do items[i] = canonical(nil, item) end
  return cjson.encode(items)
end

-- FNV-1a, 64 bits: a digest that tells two definitions apart, not a cryptographic one (what a
-- recipe declares is not an adversary's input to this check).
local function digest(text)
  local h = 0xcbf29ce484222325
  for i = 1, #text do h = (h ~ text:byte(i)) * 0x100000001b3 end
  return string.format("%016x", h)
end

--- The digest of each field of a definition (`def` from M.definition, or a task of plan.json).
function M.digests(def)
  local out = {}
  for _, f in ipairs(M.FIELDS) do out[f] = digest(canonical(f, def[f])) end
  if def.env_digest then out.env = def.env_digest end
  return out
end

--- The definition as plan.json records it: the env only as its digest (it may hold secrets).
function M.recorded(task, runner)
  local def = M.definition(task, runner)
  if def.env then def.env, def.env_digest = nil, digest(canonical("env", def.env)) end
  return def
end

--- The fields whose digests differ between two M.digests() tables, in M.FIELDS order. A field
-- the old record lacks counts as changed.
function M.changed(old, new)
  local out = {}
  for _, f in ipairs(M.FIELDS) do
    if type(old) ~= "table" or old[f] ~= new[f] then out[#out + 1] = f end
  end
  return out
end

--- "cmd", "cmd and env", "task, cmd and env".
function M.join(fields)
  if #fields <= 1 then return fields[1] or "" end
  return table.concat(fields, ", ", 1, #fields - 1) .. " and " .. fields[#fields]
end

-- A file's modification time as text with its nanoseconds ("1764412345.123456789"): kept
-- exactly, as a float could not.
local function mtime_of(stat)
  return string.format("%d.%09d", stat.mtime.sec, stat.mtime.nsec)
end

local function newer(a, b)
  return a.sec > b.sec or (a.sec == b.sec and a.nsec > b.nsec)
end

--- The files of a task as they are now: { [path] = mtime text } of its declared inputs and
-- outputs that exist.
function M.stamps(project_dir, paths)
  local out = {}
  for _, p in ipairs(paths or {}) do
    local st = uv.fs_stat(project_dir .. "/" .. p)
    if st then out[p] = mtime_of(st) end
  end
  return out
end

-- Does dependency `dep` hand `task` something through a file `task` declares as an input?
local function hands_on_files(dep, task)
  if not (dep.outputs and task.inputs) then return false end
  local wanted = {}
  for _, i in ipairs(task.inputs) do wanted[i] = true end
  for _, o in ipairs(dep.outputs) do
    if wanted[o] then return true end
  end
  return false
end

--- Is `st`'s task up to date in `run`? Returns the record of its last success, or nil and why
-- it must run.
function M.check(run, st)
  local task = st.task
  local entry = run.built and run.built[task.id]
  if type(entry) ~= "table" then return nil, "no earlier success of it is recorded in this project" end
  local changed = M.changed(entry.definition, M.digests(M.definition(task, run.runner)))
  if #changed > 0 then
    return nil, string.format("its %s changed since its last success (run %s)", M.join(changed),
                              tostring(entry.run_id))
  end
  local recorded_outputs = type(entry.outputs) == "table" and entry.outputs or {}
  local oldest
  for _, o in ipairs(task.outputs) do
    local stat = uv.fs_stat(run.project_dir .. "/" .. o)
    if not stat then return nil, "its output " .. o .. " is missing" end
    if recorded_outputs[o] ~= mtime_of(stat) then
      return nil, "its output " .. o .. " was changed since its last success"
    end
    if not oldest or newer(oldest, stat.mtime) then oldest = stat.mtime end
  end
  local recorded_inputs = type(entry.inputs) == "table" and entry.inputs or {}
  for _, i in ipairs(task.inputs or {}) do
    local stat = uv.fs_stat(run.project_dir .. "/" .. i)
    if not stat then return nil, "its input " .. i .. " is missing" end
    if newer(stat.mtime, oldest) then return nil, "its input " .. i .. " is newer than its outputs" end
    if recorded_inputs[i] ~= mtime_of(stat) then
      return nil, "its input " .. i .. " was changed since its last success"
    end
  end
  for _, d in ipairs(task.depends_on) do
    local dst = run.state[d]
    if dst.status ~= "up_to_date" and not hands_on_files(dst.task, task) then
      -- it may read what the dependency printed (CORAL_INPUT_*): that is new
      return nil, string.format("its dependency '%s' ran in this run", d)
    end
  end
  return entry
end

--- Is `task` forced to run by the runner's `force` (true, or a list of task ids) or its own?
function M.forced(task, force)
  if task.force or force == true then return true end
  if type(force) == "table" then
    for _, id in ipairs(force) do
      if id == task.id then return true end
    end
  end
  return false
end

--- The record of a success of a task that declares outputs, for the project state.
function M.record(run, st, input_stamps)
  local task = st.task
  return {
    definition = M.digests(M.definition(task, run.runner)),
    run_id = run.records.id, finished = fsutil.timestamp(st.finish), output = st.output_path,
    inputs = input_stamps or {}, outputs = M.stamps(run.project_dir, task.outputs),
  }
end

return M
