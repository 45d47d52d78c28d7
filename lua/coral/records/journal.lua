--- The journal of a run (<run dir>/journal.jsonl): one JSON object per line, appended by the
-- run before it acts on the event (coral.records writes it). This module is its one reader:
-- status, the timeline and report, history, why and resume all replay a run through replay().
local cjson = require "cjson.safe"
local point = require("coral.slice").point   -- a live report reads the journal in slices
local states = require "coral.records.states"

local M = {}

-- JSON numbers come back as floats (1.0): these fields are integers.
local INTEGER_FIELDS = { "attempt", "exit", "signal", "pid", "pgid", "max_workers", "tasks" }

-- Each unreadable line is reported once per command (a view that redraws reads the journal
-- again and again): path:line -> true.
local reported = {}

-- The warning for line `n` of `path` (`cut`: the file's last line, without its "\n").
local function report(path, n, cut)
  local key = path .. ":" .. n
  if reported[key] then return end
  reported[key] = true
  io.stderr:write(string.format("coral: warning: %s:%d: %s; skipped\n", path, n,
    cut and "the last record was cut short (coral stopped while writing it)" or "not a journal record"))
end

local function decode(line)
  local e = cjson.decode(line)
  if type(e) ~= "table" or type(e.event) ~= "string" or type(e.t) ~= "number" then return nil end
  -- a numeric for and a type check of the fields present only: a view decodes every line
  for i = 1, #INTEGER_FIELDS do
    local k = INTEGER_FIELDS[i]
    local v = e[k]
    if type(v) == "number" then e[k] = math.tointeger(v) or v end
  end
  if e.outcome then e.outcome = states.normalize(e.outcome) end
  if e.status then e.status = states.normalize(e.status) end
  return e
end

--- Reads the journal of `run_dir`: the list of events, oldest first. A line that is not a
-- record (cut short by a crash, or damaged) is skipped, with a warning on stderr that names
-- its line; the words of earlier coral versions are read as today's.
---@return table[] events
function M.read(run_dir)
  return M.read_new(run_dir, {})
end

--- Reads the journal of `run_dir` as read() does, decoding only the lines appended since the
-- last call with the same `state` (a table the caller keeps, {} at first): the live report
-- reads its run's journal every few seconds, and decoding all of it each time was most of the
-- cost. Returns the events: the state's list (not to be changed), or a copy with the last
-- line when that line is a record still without its "\n" (it is read again next time).
---@return table[] events
function M.read_new(run_dir, state)
  local path = run_dir .. "/journal.jsonl"
  local f = io.open(path, "rb")
  if not f then return {} end
  local size = f:seek("end")
  if not state.events or not size or size < state.offset then
    state.events, state.offset, state.lines = {}, 0, 0   -- the first read, or a new journal
  end
  f:seek("set", state.offset)
  local data = f:read("a") or ""
  f:close()
  local events, n, at, base = state.events, state.lines, 1, state.offset
  while at <= #data do
    point()
    local nl = data:find("\n", at, true)
    local line = data:sub(at, (nl or #data + 1) - 1)
    n, at = n + 1, (nl or #data) + 1
    local e = decode(line)
    if e then
      if not nl then events = table.move(events, 1, #events, 1, {}) end
      events[#events + 1] = e
    elseif line:find("%S") then   -- (a blank line does not decode either: it is skipped)
      report(path, n, not nl)
    end
    if nl then state.lines, state.offset = n, base + at - 1 end
  end
  return events
end

local function new_task(run, id, agent)
  local t = { id = id, agent = agent or id, status = "pending", attempts = {} }
  run.tasks[id] = t
  run.order[#run.order + 1] = id
  return t
end

-- An attempt still open when its session ended (coral was killed) was interrupted then.
local function interrupt(run, a, at)
  a.open, a.outcome = nil, "interrupted"
  a.finish = math.max(a.start, at)
  a.duration = a.finish - a.start
  -- The task is interrupted with it unless a later attempt of the task began since.
  local t = run.tasks[a.task]
  for _, b in ipairs(t.attempts) do
    if b.n > a.n then return end
  end
  if t.status == "running" then t.status, t.finish = "interrupted", a.finish end
end
M.interrupt = interrupt

local function by_number(a, b) return a.n < b.n end

--- Replays `events` (from read()) into the state of the run they describe (an attempt begins
-- with its `spawn` or, in journals of earlier versions and for adopted jobs, its `start`):
--   run:     { started, plan, project, mode, max_workers, total, sessions = {{start, last}},
--              ended, status (the done event's), stopping, last_event, tasks, order,
--              attempts (every attempt, in the order they began), retries }
--   task:    { id, agent, status (a task state), attempts, first_start, finish, error, output,
--              since (up_to_date: the run of the success it stands on), rerun (why a resume
--              runs it again), last (its last event but submit/adopt/add/hook_error), and for
--              a task added while the run went on (an `add` event): added_by (the task whose
--              on_success hook added it), spec (its definition), text, depends_on }
--   run.hook_errors: { task, error } of each on_success hook that failed
--   run.controls: the `control` events (live control's actions), in order
--   attempt: { task, agent, n, start, finish, duration, outcome, exit, signal, error, pid,
--              job_id, open (no end yet: running, or lost with a killed coral) }
-- Attempts left open by an earlier session that coral lost are closed as interrupted at that
-- session's last event, unless the next session adopted them (a cluster job lives on).
function M.replay(events)
  local run = { tasks = {}, order = {}, attempts = {}, retries = {}, sessions = {} }
  local open = {}        -- "task\0attempt" -> attempt without an end
  local lost = {}        -- attempts open when a session ended: closed unless adopted
  local session
  local function key(task, attempt) return task .. "\0" .. tostring(attempt) end
  local function close_lost()
    for k, a in pairs(lost) do interrupt(run, a, a.lost_at); open[k] = nil end
    lost = {}
  end
  -- (a numeric for and no math.max: the live report replays its run every few seconds)
  for i = 1, #events do
    point()
    local e = events[i]
    if run.last_event == nil or e.t > run.last_event then run.last_event = e.t end
    if e.event == "run" then
      close_lost()
      if session then
        for k, a in pairs(open) do a.lost_at = session.last; lost[k] = a end
      end
      session = { start = e.t, last = e.t, resumed = e.resumed }
      run.sessions[#run.sessions + 1] = session
      run.started = run.started or e.t
      run.plan = e.plan or run.plan
      run.project = e.project or run.project
      run.mode, run.max_workers, run.total = e.mode or run.mode, e.max_workers or run.max_workers, e.tasks or run.total
    else
      if session then session.last = e.t end
      if e.event == "done" then
        run.ended, run.status = e.t, e.status
      elseif e.event == "stopping" then
        run.stopping = e.reason
      elseif e.event == "limit" then
        -- a limit's value over time (run/limits.lua): the report draws it
        run.limits = run.limits or {}
        run.limits[#run.limits + 1] = { t = e.t, name = e.name, limit = e.limit, reason = e.reason }
      elseif e.event == "control" then
        -- live control (coral ctl, coral attach): what was done, by whom, when
        run.controls = run.controls or {}
        run.controls[#run.controls + 1] = e
      end
    end
    if e.task then
      local t = run.tasks[e.task] or new_task(run, e.task, e.agent)
      if e.agent and t.agent == t.id then t.agent = e.agent end
      local k = e.attempt and key(e.task, e.attempt)
      local spawned = e.event == "start" and k and open[k]
      if spawned then
        -- the start of the attempt whose spawn was recorded: now it runs, with its pid
        spawned.pid, spawned.start = e.pid, e.t
      elseif e.event == "start" or e.event == "spawn" then
        -- `spawn` is written just before the process is started, `start` just after: an
        -- attempt with only a spawn may have run when coral was killed, and is in flight
        local a = { task = e.task, agent = t.agent, n = e.attempt or (#t.attempts + 1), start = e.t, pid = e.pid,
                    open = true }
        open[key(e.task, a.n)] = a
        t.attempts[#t.attempts + 1] = a
        run.attempts[#run.attempts + 1] = a
        t.status, t.first_start = "running", t.first_start or e.t
      elseif e.event == "submit" or e.event == "adopt" then
        local a = k and (open[k] or lost[k])
        if a then
          a.job_id = e.job_id or a.job_id
          if e.event == "adopt" then lost[k], open[k], a.open, a.outcome = nil, a, true, nil end
        end
        t.job_id = e.job_id or t.job_id
      elseif e.event == "end" then
        local a = k and (open[k] or lost[k])
        if k then open[k], lost[k] = nil, nil end
        if not a then   -- no start event (a built-in driver): placed from its end and duration
          a = { task = e.task, agent = t.agent, n = e.attempt or (#t.attempts + 1), start = e.t - (e.duration or 0) }
          t.attempts[#t.attempts + 1] = a
          run.attempts[#run.attempts + 1] = a
          t.first_start = t.first_start or a.start
        end
        a.open = nil
        a.finish, a.outcome, a.exit, a.signal, a.error = e.t, e.outcome or "failed", e.exit, e.signal, e.error
        a.duration = e.duration or (a.finish - a.start)
        a.cost_usd, a.usage = e.cost_usd, e.usage
        t.finish = e.t
        if a.outcome == "succeeded" then
          t.status, t.error, t.output = "succeeded", nil, e.output
          t.branch, t.commit, t.changes = e.branch, e.commit, e.changes   -- a worktree task's result
        else
          -- an attempt coral lost (its end recorded by the resume that found it) leaves the
          -- task unfinished, not failed
          t.status = a.outcome == "interrupted" and "interrupted" or "failed"
          t.error = a.error or a.outcome
        end
      elseif e.event == "retry" then
        t.status = "retrying"
        run.retries[#run.retries + 1] = { task = e.task, attempt = e.attempt, delay = e.delay, reason = e.reason }
      elseif e.event == "skip" then
        t.status, t.error = "skipped", e.reason
      elseif e.event == "park" then
        -- not started in that session (its budget): the next one decides again
        t.status, t.error = e.state or "pending", e.reason
      elseif e.event == "up_to_date" then
        t.status, t.finish, t.output, t.error, t.since = "up_to_date", e.t, e.output, nil, e.since
      elseif e.event == "rerun" then
        -- a resume found its definition (or a dependency's) changed: it runs again
        t.status, t.finish, t.error, t.rerun = "pending", nil, nil, e.reason
      elseif e.event == "add" and type(e.spec) == "table" then
        t.added_by, t.spec = e.by, e.spec
        t.text = type(e.spec.task) == "string" and e.spec.task or ""
        t.depends_on = type(e.spec.depends_on) == "table" and e.spec.depends_on or {}
      elseif e.event == "hook_error" then
        run.hook_errors = run.hook_errors or {}
        run.hook_errors[#run.hook_errors + 1] = { task = e.task, error = e.error }
      end
      if e.event ~= "submit" and e.event ~= "adopt" and e.event ~= "add" and e.event ~= "hook_error"
         and e.event ~= "spawn" then t.last = e end
    end
  end
  close_lost()
  for _, id in ipairs(run.order) do
    local attempts = run.tasks[id].attempts
    if #attempts > 1 then table.sort(attempts, by_number) end
  end
  return run
end

--- The wall time of a run's sessions, from each run event to that session's last event.
function M.session_time(run)
  local total = 0
  for _, s in ipairs(run.sessions) do total = total + (s.last - s.start) end
  return total
end

--- The run state of `run_dir`: M.replay(M.read(run_dir)).
function M.load(run_dir)
  return M.replay(M.read(run_dir))
end

return M
