--- What a task leaves running is killed: the policy over coral.proc's adopted processes.
--
-- coral is a child subreaper (src/spawn.c): a process that leaves its task's process group
-- (setsid, setpgid) and whose parent then exits (a double-forked daemon, `setsid cmd &`) is
-- handed to coral instead of init. coral.proc kills what is left in a task's group when the
-- task's process exits; this module kills the rest:
--   * when a task's process has exited (the local executor's on_reaped), every adopted
--     process whose environment carries that task's CORAL_RUN_ID and CORAL_TASK_ID, with all
--     its descendants;
--   * when the run ends, every process adopted since it began, marked or not (a process that
--     emptied its environment cannot say whose it is, but it came from the run's tasks).
-- Processes are stopped (SIGSTOP: a stopped process cannot fork) before they are killed, so a
-- tree that forks while it is being killed is caught whole. KILL, not TERM: the task has
-- ended, and what it left has no say in that, as in its own group.
local fsutil = require "coral.fsutil"
local proc = require "coral.proc"
local uv = require "luv"

local M = {}

-- Appends the children of `pid` (every thread's) to `into`.
local function children(pid, into)
  local dir = uv.fs_scandir("/proc/" .. pid .. "/task")
  while dir do
    local tid = uv.fs_scandir_next(dir)
    if not tid then break end
    for child in (fsutil.read("/proc/" .. pid .. "/task/" .. tid .. "/children") or ""):gmatch("%d+") do
      into[#into + 1] = tonumber(child)
    end
  end
  return into
end

-- Has `pid` exited (gone, or a zombie nobody reaped yet)?
local function dead(pid)
  local stat = fsutil.read("/proc/" .. pid .. "/stat")
  return not stat or stat:match("^%d+ %(.*%) ([ZX])") ~= nil
end

-- Waits (at most 5 s) until every pid has exited, then reaps what came to coral; returns the
-- adopted processes still running.
local function settle(pids)
  local deadline = uv.hrtime() + 5e9
  for _, pid in ipairs(pids) do
    while not dead(pid) and uv.hrtime() < deadline do uv.sleep(5) end
  end
  return proc.adopted() or {}
end

--- Stops then kills `roots` and every descendant of theirs. Returns the list of pids killed
-- and their command names (pid -> name).
function M.kill_trees(roots)
  local seen, order, names, queue = {}, {}, {}, {}
  for _, pid in ipairs(roots) do queue[#queue + 1] = pid end
  -- Each is stopped before its children are listed: what it forked before is listed, and it
  -- forks nothing after.
  while #queue > 0 do
    local pid = table.remove(queue)
    if not seen[pid] and pid ~= uv.os_getpid() then
      seen[pid] = true
      order[#order + 1] = pid
      uv.kill(pid, "sigstop")
      local stat = fsutil.read("/proc/" .. pid .. "/stat")
      names[pid] = stat and stat:match("^%d+ %((.*)%) ") or "?"
      children(pid, queue)
    end
  end
  for _, pid in ipairs(order) do uv.kill(pid, "sigkill") end
  return order, names
end

--- The adopted processes that carry both `run_id` and `task_id` in their environment.
function M.of_task(run_id, task_id)
  local marks = { "\0CORAL_RUN_ID=" .. run_id .. "\0", "\0CORAL_TASK_ID=" .. task_id .. "\0" }
  local found = {}
  for _, pid in ipairs(proc.adopted() or {}) do
    local env = "\0" .. (fsutil.read("/proc/" .. pid .. "/environ") or "")
    if env:find(marks[1], 1, true) and env:find(marks[2], 1, true) then found[#found + 1] = pid end
  end
  return found
end

--- Kills what task `task_id` of run `run_id` left running outside its process group. Returns
-- the list of pids killed (empty, nearly always) and their names.
function M.kill_task(run_id, task_id)
  local roots = M.of_task(run_id, task_id)
  if #roots == 0 then return roots, {} end
  return M.kill_trees(roots)
end

--- The processes adopted now, as a set of pids: what a run must not kill at its end (they
-- were there before it began).
function M.snapshot()
  local set = {}
  for _, pid in ipairs(proc.adopted() or {}) do set[pid] = true end
  return set
end

--- Kills every adopted process but those in `spared` (a set from snapshot()), with their
-- descendants, until none is left (a killed process's orphans come to coral in turn), and
-- reaps them all. Returns the count killed.
function M.kill_all(spared)
  spared = spared or {}
  local killed = 0
  local adopted = proc.adopted() or {}
  for _ = 1, 32 do   -- bounded: a process that forks faster than it is killed is not chased for ever
    local roots = {}
    for _, pid in ipairs(adopted) do
      if not spared[pid] then roots[#roots + 1] = pid end
    end
    if #roots == 0 then break end
    local pids = M.kill_trees(roots)
    killed = killed + #pids
    adopted = settle(pids)
  end
  return killed
end

--- "1234 (sleep), 1240 (sh)": the pids and names kill_trees returned, for a message.
function M.describe(pids, names)
  local parts = {}
  for _, pid in ipairs(pids) do parts[#parts + 1] = string.format("%d (%s)", pid, names[pid] or "?") end
  return table.concat(parts, ", ")
end

return M
