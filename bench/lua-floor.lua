--- The least a runner written in Lua on coral's own primitives does while keeping a task's
-- records as coral keeps them: the "lua-floor" row of `make bench`. It reads a workload's
-- tasks.json, runs it through coral.dag (ready, done) with up to W processes of coral.proc, and
-- writes per task a dir with the attempt's stdout and stderr files, three journal lines
-- (spawn, start, end: the spawn one in the file before the process exists) and a joblog row.
-- No policy at all: no retries, gates, hooks, activity tracker, scratchpad, project state,
-- event lines, summary or report. The gap between coral and this row is what coral's policy
-- layers cost; the gap between this row and the C tools is what Lua and the per-task files do.
-- With --no-files (the "lua-floor-nofiles" row) it makes no task dir and gives each process
-- /dev/null for stdout and stderr, its journal lines and joblog rows kept: the gap between the
-- two rows is what the per-task dir and files cost.
--
--   coral bench/lua-floor.lua TASKS.JSON W PROJECT_DIR [--no-files]
local cjson = require "cjson"
local dag = require "coral.dag"
local jsonw = require "coral.jsonw"
local proc = require "coral.proc"
local uv = require "luv"

local tasks_path, W, project, no_files = arg[1], tonumber(arg[2]), arg[3], arg[4] == "--no-files"
assert(tasks_path and W and project and (arg[4] == nil or no_files),
       "usage: coral bench/lua-floor.lua TASKS.JSON W PROJECT_DIR [--no-files]")
local f = assert(io.open(tasks_path))
local plan = cjson.decode(f:read("a"))
f:close()

local run_dir = project .. "/run"
assert(uv.fs_mkdir(run_dir, tonumber("700", 8)))
assert(uv.fs_mkdir(run_dir .. "/tasks", tonumber("700", 8)))
local journal = assert(uv.fs_open(run_dir .. "/journal.jsonl", "a", tonumber("600", 8)))
local joblog = assert(uv.fs_open(run_dir .. "/joblog.tsv", "a", tonumber("600", 8)))

local g = dag.new()
local argv_of = {}
for _, t in ipairs(plan.tasks) do
  assert(g:add(t.id, t.deps))
  argv_of[t.id] = t.argv
end
assert(g:validate())

-- journal lines and joblog rows wait here; written before each spawn and when the run ends
local lines, rows = {}, {}
local function flush()
  if #lines > 0 then
    assert(uv.fs_write(journal, table.concat(lines), -1))
    lines = {}
  end
  if #rows > 0 then
    assert(uv.fs_write(joblog, table.concat(rows), -1))
    rows = {}
  end
end

local function now()
  local sec, usec = uv.gettimeofday()
  return sec + usec / 1e6
end

local env = { PATH = os.getenv("PATH"), CORAL_RUN_DIR = run_dir }
local running, failed = 0, 0
local pump

local function start(id)
  local dir = run_dir .. "/tasks/" .. id
  if not no_files then assert(uv.fs_mkdir(dir, tonumber("700", 8))) end
  lines[#lines + 1] = jsonw.encode { event = "spawn", t = now(), task = id, attempt = 1 } .. "\n"
  flush()
  local task_env = { CORAL_TASK_ID = id }
  for k, v in pairs(env) do task_env[k] = v end
  local started = now()
  running = running + 1
  local p = assert(proc.spawn {
    argv = argv_of[id], env = task_env, cwd = project,
    stdout = not no_files and { file = dir .. "/attempt-1.out" } or false,
    stderr = not no_files and { file = dir .. "/attempt-1.err" } or false,
    on_exit = function(info)
      running = running - 1
      local ok = info.code == 0
      if not ok then failed = failed + 1 end
      lines[#lines + 1] = jsonw.encode { event = "end", t = now(), task = id, attempt = 1, exit = info.code,
                                         duration = info.duration, outcome = ok and "succeeded" or "failed" } .. "\n"
      rows[#rows + 1] = string.format("%s\t1\t%.3f\t%.3f\t%s\t\t%s\n", id, started, info.duration,
                                      tostring(info.code), ok and "succeeded" or "failed")
      g:done(id, ok)
      pump()
    end,
  })
  lines[#lines + 1] = jsonw.encode { event = "start", t = now(), task = id, attempt = 1, pid = p.pid } .. "\n"
end

function pump()
  if running >= W then return end
  for _, id in ipairs(g:ready(W - running)) do start(id) end
end

pump()
uv.run()
flush()
uv.fs_close(journal)
uv.fs_close(joblog)
os.exit(failed == 0 and 0 or 1)
