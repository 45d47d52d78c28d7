--- A run continued from its journal (`coral resume`, execute_plan{resume = id}), and the
-- project's run lock that keeps one run per project at a time.
local coord = require "coral.coord"
local fsutil = require "coral.fsutil"
local journal = require "coral.records.journal"
local records = require "coral.records"
local states = require "coral.records.states"
local uptodate = require "coral.run.uptodate"
local uv = require "luv"

local M = {}

--- Takes the project's run lock without waiting. The refusal names the run that holds it.
function M.lock(paths)
  local lock, err = coord.lock(paths.coral .. "/run", { timeout = 0, mkdir = true, root = paths.project,
    mode = tonumber("600", 8), dir_mode = tonumber("700", 8) })
  if lock then return lock end
  local owner = records.read_owner(paths)
  if owner then
    return nil, string.format("another coral run is in progress in %s: run %s (pid %s); wait for it or stop it",
      paths.project, owner.run_id or "?", tostring(math.tointeger(owner.pid) or owner.pid or "?"))
  end
  return nil, err
end

--- Kills what is left of a run's processes: every process whose environment carries the run's
-- id (a task's group leader, its children, even orphaned grandchildren). Returns the set of
-- task ids that still had processes.
function M.kill_leftovers(run_id)
  local mark = "CORAL_RUN_ID=" .. run_id .. "\0"
  local victims, tasks = {}, {}
  local dir = uv.fs_scandir("/proc")
  while dir do
    local name = uv.fs_scandir_next(dir)
    if not name then break end
    local pid = tonumber(name)
    if pid and pid ~= uv.os_getpid() then
      local env = fsutil.read("/proc/" .. name .. "/environ")
      if env and env:find(mark, 1, true) then
        victims[#victims + 1] = pid
        local task = env:match("%zCORAL_TASK_ID=([^%z]*)") or env:match("^CORAL_TASK_ID=([^%z]*)")
        if task then tasks[task] = true end
      end
    end
  end
  for _, pid in ipairs(victims) do uv.kill(pid, "sigkill") end
  -- Wait (briefly) until they are gone, so a restarted task never meets its old self.
  local deadline = uv.hrtime() + 5e9
  for _, pid in ipairs(victims) do
    while uv.kill(pid, 0) == 0 and uv.hrtime() < deadline do
      local stat = fsutil.read("/proc/" .. pid .. "/stat")
      if not stat or stat:match("^%d+ %(.*%) ([ZX])") then break end
      uv.sleep(10)
    end
  end
  return tasks
end

-- When did an attempt that coral lost stop? Now, if its processes lived until this resume
-- killed them; else at its last sign of life: the last write to its output files, or the last
-- event of its session.
local function lost_attempt_end(run, a, still_running, session_end)
  if still_running then return fsutil.now() end
  return records.last_write(run.records.dir, a.task, a.n, math.max(a.start, session_end or a.start))
end

--- The attempts the joblog of `run_dir` has a row for: "task\tattempt" -> true.
function M.joblog_rows(run_dir)
  local rows = {}
  local f = io.open(run_dir .. "/joblog.tsv", "rb")
  if not f then return rows end
  for line in f:lines() do
    local task, n = line:match("^(.-)\t(%d+)\t[%d.]+\t[%d.]+\t")
    if task then rows[task .. "\t" .. n] = true end
  end
  f:close()
  return rows
end

--- One joblog row for every attempt the journal has an end for: the joblog and the journal
-- are two files, and a coral killed between the two writes leaves an attempt without its
-- row (or, the other way round, with a row but no end: it is interrupted, and has its row).
function M.complete_joblog(run, past, rows)
  for _, a in ipairs(past.attempts) do
    local key = a.task .. "\t" .. a.n
    if not a.open and a.outcome and a.finish and not rows[key] then
      rows[key] = true
      run.records:joblog { task = a.task, attempt = a.n, start = a.start, duration = a.duration or (a.finish - a.start),
        exit = a.exit, signal = a.signal, outcome = a.outcome }
    end
  end
end

--- The finished tasks of a resumed run whose definition differs from the one its plan.json
-- recorded: id -> "its cmd changed since it ran".
function M.changed_definitions(run)
  local out = {}
  local previous = run.previous_plan
  if not previous then return out end
  for _, old in ipairs(previous.tasks) do
    local st = type(old) == "table" and run.state[old.id]
    -- plan.json of a coral before definitions were recorded has no driver: nothing to compare
    if st and old.driver then
      local fields = uptodate.changed(uptodate.digests(old), uptodate.digests(uptodate.definition(st.task, run.runner)))
      if #fields > 0 then out[old.id] = "its " .. uptodate.join(fields) .. " changed since it ran" end
    end
  end
  return out
end

--- Rebuilds `run`'s state from its journal before it goes on: succeeded tasks are not run
-- again, tasks that were running or waiting to retry start again, failed tasks stay failed
-- unless `retry_failed`, skipped tasks are decided again.
function M.restore(run, retry_failed)
  local past = journal.load(run.records.dir)
  -- An executor that can adopt (a cluster engine) takes back the jobs it still knows.
  local adopted = {}
  if run.executor.recover then
    local open = {}
    for id, t in pairs(past.tasks) do
      local last = t.attempts[#t.attempts]
      if run.state[id] and last and last.open then open[id] = { attempt = last.n } end
    end
    adopted = run.executor:recover(run.records.id, open)
  end
  local survivors = run.executor.recover and {} or M.kill_leftovers(run.records.id)
  local rows = M.joblog_rows(run.records.dir)
  local session_end = past.sessions[#past.sessions] and past.sessions[#past.sessions].last
  local outcome = {}
  for id, t in pairs(past.tasks) do
    local st = run.state[id]
    if st then
      for _, a in ipairs(t.attempts) do
        local copy = { n = a.n, start = a.start, duration = a.duration, finish = a.finish, outcome = a.outcome,
                       code = a.exit, signal = a.signal, error = a.error, restored = true,
                       cost_usd = a.cost_usd, usage = a.usage }
        if a.open and adopted[id] and a == t.attempts[#t.attempts] then
          st.adopt = { job_id = adopted[id].job_id, start = a.start }
          copy = nil
        elseif a.open then
          -- It was running when coral stopped and ran for real: its end is recorded now, as
          -- interrupted, so that the journal has an end for every start.
          journal.interrupt(past, a, lost_attempt_end(run, a, survivors[id], session_end))
          local last_session = past.sessions[#past.sessions]
          if last_session then last_session.last = math.max(last_session.last, a.finish) end
          copy.outcome, copy.finish, copy.duration = a.outcome, a.finish, a.duration
          copy.error = "coral stopped while it ran"
          -- its row first: a coral killed between the two leaves the attempt open, and the
          -- next resume does not write its row again
          if not rows[id .. "\t" .. a.n] then
            rows[id .. "\t" .. a.n] = true
            run.records:joblog { task = id, attempt = a.n, start = a.start, duration = a.duration,
              outcome = "interrupted" }
          end
          run.records:event("end", { t = a.finish, task = id, agent = t.agent, attempt = a.n,
            outcome = "interrupted", duration = a.duration, error = copy.error })
        end
        st.attempts[#st.attempts + 1] = copy
      end
      st.first_start = t.first_start
      if t.status == "succeeded" or t.status == "up_to_date" then
        outcome[id] = t.status
        st.output_path = t.output or (t.status == "succeeded" and run.records:task_path(id, "output")) or nil
        st.finish, st.resumed = t.finish, true
        st.branch, st.commit = t.branch, t.commit   -- its worktree's result, merged into its dependents
      elseif t.status == "failed" and not retry_failed then
        outcome[id] = "failed"
        st.finish, st.error, st.resumed = t.finish, t.error, true
      end
    end
  end
  M.complete_joblog(run, past, rows)
  -- The earlier sessions' time, up to the end of the attempts they left running.
  run.prior_wall = journal.session_time(past)
  -- Walk the graph: hand finished tasks back to it, queue the rest for the first pump. A
  -- finished task whose definition changed since runs again; so does what depends on it, as
  -- the graph does not release it before its changed dependency has run.
  local changed = M.changed_definitions(run)
  run.reruns = {}
  local function again(st, why)
    st.finish, st.resumed, st.output_path = nil, nil, nil
    run.reruns[#run.reruns + 1] = { task = st.task.id, agent = st.task.agent, reason = why }
  end
  repeat
    local ids = run.g:ready()
    for _, id in ipairs(ids) do
      local st = run.state[id]
      local finished = outcome[id] == "succeeded" or outcome[id] == "up_to_date"
      if finished and changed[id] then
        again(st, changed[id])
        run.retry_queue[#run.retry_queue + 1] = st
      elseif finished then
        st.status = outcome[id]
        run.g:done(id, true)
      elseif outcome[id] == "failed" then
        st.status = "failed"
        run:release(st, false)
      else
        run.retry_queue[#run.retry_queue + 1] = st
      end
    end
  until #ids == 0
  for _, t in ipairs(run.plan.tasks) do
    local st = run.state[t.id]
    if (outcome[t.id] == "succeeded" or outcome[t.id] == "up_to_date") and st.status == "pending" and st.finish then
      for _, d in ipairs(t.depends_on) do
        if not states.ended(run.state[d].status) then
          again(st, string.format("its dependency '%s' runs again", d))
          break
        end
      end
    end
  end
end

return M
