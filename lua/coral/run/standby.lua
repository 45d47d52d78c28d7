--- The standby: while every worker is busy, the task next in line is handed to coral.proc
-- (proc.standby), which starts it itself at the next clean exit of a task's process (status 0,
-- ended by itself: a command's success), with no Lua run before it: its `spawn` record is
-- appended to the journal, then its process starts, then the runner hears of the start
-- (started below) and only then of the exit that freed the worker. The Lua of an end (its
-- records, the release, the gates, the next task's launch: a few hundred microseconds, more
-- when the loop was idle and its caches cold) no longer stands between one task's exit and the
-- next task's start (docs/PERFORMANCE.md).
--
-- Only what the pump would have started at that exit is handed over, and only while nothing
-- could change that: the dependency mode; no retry due, no task waiting for a gate or a
-- resource; the task armed (a command of the local executor, run/attempt.lua's prepare) and
-- first in the graph's order; no gate holding it; no pending dependent of a running task that
-- would come before it in that order (the end of its dependency would release it). The runner
-- arms it at the end of each pump (the graph and the gates change only in Lua, and every change
-- is followed by a pump before the loop runs again) and takes it down when a stop or a
-- live-control action comes, or when the task starts another way. Until the standby starts or is taken down, the journal's lines
-- are written at once (records' at_once): its record must follow every line before it.
local admission = require "coral.run.admission"
local attempt = require "coral.run.attempt"
local records = require "coral.records"
local resources = require "coral.run.resources"

local M = {}

-- The mean duration of the run's ended attempts (s) from which the standby is worth its cost:
-- its arming is tens of microseconds of coral's CPU a task, which a run of tasks this short on a
-- busy machine pays in throughput (noop-layered at W=4: +8.5 % instructions, +5 % wall), while
-- the start it makes early gains ~0.4 ms a task only where coral's CPU is not what the run waits
-- for (sleep-random: -1.5 %). Measured in docs/PERFORMANCE.md.
M.TASK_SECONDS = 0.005

--- Whether the run's tasks are long enough for the standby (and coral.proc's host_batch):
-- a worker's worth of attempts ended, and their mean duration at least TASK_SECONDS.
function M.worth(run)
  local n = run.ended_attempts
  return n >= run.max_workers and run.busy >= n * M.TASK_SECONDS
end

--- Takes the standby down, if there is one.
function M.disarm(run)
  if not run.standby then return end
  run.standby = nil
  run.records.at_once = nil
  run.executor:standby_off()
end

-- The standby of `run` started (or failed to): the task is taken from the graph and begins as
-- the pump would have begun it, with its process.
local function started(run, st, handle, err, code)
  run.standby = nil
  run.records.at_once = nil
  -- a journal that cannot be written stops the run, as any record would (records/init.lua)
  local unwritten = not handle and err and err:match("^standby: write its record: (.*)$")
  if unwritten then error("append " .. run.records.journal_path .. ": " .. unwritten, 0) end
  local id = run.g:ready(1)[1]
  if id ~= st.task.id then
    error(string.format("coral: internal error: the standby '%s' started, and the graph's next task is '%s'",
                        st.task.id, tostring(id)), 0)
  end
  admission.admit(run, st, true)
  attempt.begin(run, st, nil, { handle = handle, err = err, code = code })
end

-- A running task with more dependents than this makes the standby wait (their order is not
-- looked through).
local MAX_DEPENDENTS = 64

-- Would a task that the end of a running task can make ready start before `st` (the graph's
-- order: priority, then rank, then declaration order)? Then the standby, which starts `st` at
-- the next exit whatever it releases, would put a longer chain behind it: sleep-seed at W=2,
-- where the order alone reaches the lower bound, took 2.245 s instead of 2.013 with it.
local function outranked(run, st)
  local g, id = run.g, st.task.id
  local priority, rank, index = st.task.priority or 0, g:rank(id), g:index(id)
  for live in pairs(run.live_tasks) do
    local dependents = g:dependents(live.task.id)
    if #dependents > MAX_DEPENDENTS then return true end
    for _, d in ipairs(dependents) do
      if g:state(d) == "pending" then
        local p, r = run.state[d].task.priority or 0, g:rank(d)
        if p > priority or (p == priority and (r > rank or (r == rank and g:index(d) < index))) then
          return true
        end
      end
    end
  end
  return false
end

--- Sets (or keeps, or takes down) the standby after a pump; `worth`: M.worth(run).
function M.arm(run, worth)
  local executor = run.executor
  local st
  -- (all workers busy, and no more: after a live `workers` lowered it, an exit frees none)
  if worth and executor.standby and not run.stopping and run.running == run.max_workers and #run.retry_queue == 0
     and #run.held == 0 and run.mode.name == "dependency" and resources.waiting(run) == 0 then
    local id = run.mode:upcoming(1)[1]
    st = id and run.state[id]
    if not (st and st.armed and st.status == "pending" and #st.attempts == 0 and admission.open_for(run, st))
       or outranked(run, st) then
      st = nil
    end
  end
  if st == run.standby then return end
  M.disarm(run)
  if not st then return end
  local xspec, on_exit = attempt.standby_spec(run, st)
  local task = st.task
  xspec.record = xspec.record or records.record_head("spawn", { task = task.id, agent = task.agent, attempt = 1 })
  local fd = run.records:journal_for_c()
  if fd and executor:standby(xspec, on_exit, fd, xspec.record, function(handle, err, code)
    started(run, st, handle, err, code)
  end) then
    run.standby = st
  else
    run.records.at_once = nil
  end
end

return M
