--- Live control of a running run: the operations `coral ctl` and `coral attach` ask for over
-- the run's control socket (control/server.lua), and the two gates they work through
-- (run/admission.lua): a pause, and approval gates (a task with `approve`). Each operation
-- runs inside the running coral, between scheduling steps (a socket callback on the run's
-- loop), and is journaled (a `control` event: action, args, target, uid, pid) before it acts,
-- so that `coral resume` keeps what it did: approvals and the number of workers from the
-- control events, cancels, rejections and retries from the tasks' own events, added tasks
-- from their `add` events (run/dynamic.lua).
-- An operation returns its result, or nil and why it is refused (one line).
local admission = require "coral.run.admission"
local attempt = require "coral.run.attempt"
local dynamic = require "coral.run.dynamic"
local fsutil = require "coral.fsutil"
local journal = require "coral.records.journal"
local states = require "coral.records.states"
local uv = require "luv"

local M = {}

local Control = {}
Control.__index = Control
M.Control = Control

-- The approval a task asks for: { prompt =, timeout = }, or nil.
local function approval_of(task)
  local a = task.approve
  if not a then return nil end
  if a == true then return {} end
  return a
end
M.approval_of = approval_of

local function who_of(who)
  who = who or {}
  return math.tointeger(who.uid) or uv.getuid(), math.tointeger(who.pid) or uv.os_getpid()
end

-- Journals a control action before it acts (the journal is the truth a resume reads).
function Control:record(action, who, fields)
  fields = fields or {}
  fields.action = action
  fields.uid, fields.pid = who_of(who)
  self.run:emit("control", fields)
end

local function close_timer(st)
  local a = st.approval
  if a and a.timer then
    if not a.timer:is_closing() then a.timer:close() end
    a.timer = nil
  end
end

-- A task that waits at a gate (held) ends at once, failed (or cancelled), without a process:
-- one attempt that ends as it begins, so its end is journaled as any other, its dependents
-- are skipped per on_failure, and the pump goes on.
function Control:fail_held(st, why, cancelled)
  local run = self.run
  admission.unhold(run, st)
  close_timer(st)
  st.status = "pending"
  if cancelled then st.cancelled = why end
  attempt.begin(run, st, why)
end

-- {{{ the gates

function Control:await(st, spec)
  if st.status == "awaiting_approval" then return end
  st.status = "awaiting_approval"
  st.approval = { since = fsutil.now(), prompt = spec.prompt, timeout = spec.timeout }
  self.run:emit("awaiting_approval", { task = st.task.id, agent = st.task.agent, prompt = spec.prompt,
                                       timeout = spec.timeout })
  if spec.timeout then
    local timer = uv.new_timer()
    st.approval.timer = timer
    timer:start(math.floor(spec.timeout * 1000), 0, function()
      close_timer(st)
      if st.status ~= "awaiting_approval" or self.run.stopping then return end
      local why = string.format("rejected: no approval within %gs (its timeout)", spec.timeout)
      self:record("timeout", nil, { target = st.task.id, reason = why })
      self:fail_held(st, why)
    end)
  end
end

local function approval_gate(ctl)
  return {
    name = "approval",
    admit = function(_, st)
      local spec = approval_of(st.task)
      if not spec or ctl.approved[st.task.id] or ctl.run.runner.approve_all then return true end
      ctl:await(st, spec)
      return "wait", "awaiting approval (coral ctl approve " .. st.task.id .. ")"
    end,
  }
end

local function pause_gate(ctl)
  return {
    name = "pause",
    admit = function()
      if ctl.paused then return "wait", "paused (coral ctl resume)" end
      return true
    end,
  }
end

-- }}}

--- Sets up live control of `run` before its first event: its gates, and on a resume what the
-- journal's control events kept (approvals, the number of workers, limits).
function M.open(run, resume)
  local ctl = setmetatable({ run = run, approved = {}, paused = false }, Control)
  run.control = ctl
  if resume then
    for _, e in ipairs(journal.read(run.records.dir)) do
      if e.event == "control" then
        if e.action == "approve" and type(e.target) == "string" then ctl.approved[e.target] = true end
        if e.action == "workers" and math.tointeger(e.workers) then run.max_workers = math.tointeger(e.workers) end
        -- a limit set while it ran is later than the one the run was started with
        if e.action == "limit" and type(e.name) == "string" and math.tointeger(e.value) and run.limits then
          run.limits.configured[e.name] = math.tointeger(e.value)
        end
      end
    end
  end
  admission.add(run, approval_gate(ctl))
  admission.add(run, pause_gate(ctl))
  return ctl
end

--- Every event of the run (Run:emit): a stopping run drops what waits for an approval (it
-- is skipped as not reached; a resume asks again), and subscribers see it.
function Control:on_event(e)
  if e.event == "stopping" then
    for _, st in pairs(self.run.state) do
      if st.status == "awaiting_approval" then
        close_timer(st)
        st.status = "pending"
      end
    end
  end
  if self.server then self.server:broadcast(e) end
end

--- Serves the run's control socket. A socket that cannot be made is a warning: the run goes
-- on without live control.
function Control:listen()
  local server, err = require("coral.control.server").start(self)
  if not server then io.stderr:write("coral: warning: ", err, "\n") end
  self.server = server
end

--- The run ended (or was aborted): timers closed, the socket removed.
function Control:close()
  for _, st in pairs(self.run.state) do close_timer(st) end
  if self.server then self.server:close() end
  self.server = nil
end

--- One line for a live-control event in the progress view: a task awaiting approval says
-- how to approve it; a control action says what was done and by whom.
function M.event_text(e)
  if e.event == "awaiting_approval" then
    return string.format("awaiting approval: %s%s (coral ctl approve %s, or reject %s --reason TEXT)", e.task,
      e.prompt and (": " .. e.prompt) or "", e.task, e.task)
  end
  local args = {}
  for _, k in ipairs { "target", "workers", "name", "value", "reason", "note" } do
    if e[k] ~= nil then args[#args + 1] = tostring(e[k]) end
  end
  if type(e.tasks) == "table" then args[#args + 1] = table.concat(e.tasks, ", ") end
  return string.format("control   %s %s (uid %s, pid %s)", tostring(e.action), table.concat(args, " "),
    tostring(math.tointeger(e.uid) or e.uid), tostring(math.tointeger(e.pid) or e.pid))
end

-- {{{ the operations

local function task_state(ctl, id)
  if type(id) ~= "string" then return nil, "a task id is needed" end
  local st = ctl.run.state[id]
  if not st then
    local ids = {}
    for _, t in ipairs(ctl.run.plan.tasks) do ids[#ids + 1] = t.id end
    return nil, "no task '" .. id .. "' in the run" .. require("coral.check").did_you_mean(id, ids)
  end
  return st
end

-- The last line a task's current (or last) attempt printed.
local function last_line(run, st)
  local a = st.attempts[#st.attempts]
  if not a then return nil end
  local text = fsutil.tail(run.records:task_path(st.task.id, "out", a.n), 4096)
  local line
  for l in text:gmatch("[^\n]+") do if l:find("%S") then line = l end end
  return line
end

--- { run_id, paused, max_workers, counts = { state = n }, tasks = { {id, status, ...} } }:
-- every task in plan order; a running one with its pid, elapsed seconds and last output line;
-- one awaiting approval with its prompt and its dependencies' outputs.
function Control:status()
  local run, now = self.run, fsutil.now()
  local out = { run_id = run.records.id, paused = self.paused, max_workers = run.max_workers,
                running = run.running, stopping = run.stopping, counts = {}, tasks = {} }
  for _, t in ipairs(run.plan.tasks) do
    local st = run.state[t.id]
    out.counts[st.status] = (out.counts[st.status] or 0) + 1
    local a = st.attempts[#st.attempts]
    local row = { id = t.id, agent = t.agent, status = st.status, attempts = #st.attempts, error = st.error,
                  held = st.held and st.held.why or nil }
    if st.status == "running" and a then
      row.pid, row.elapsed = a.pid, now - a.start
      row.last_line = last_line(run, st)
    elseif st.status == "awaiting_approval" and st.approval then
      row.prompt, row.waiting, row.timeout = st.approval.prompt, now - st.approval.since, st.approval.timeout
      row.inputs = {}
      for _, d in ipairs(t.depends_on) do
        local dst = run.state[d]
        row.inputs[d] = { status = dst.status, output = dst.output_path }
      end
    end
    out.tasks[#out.tasks + 1] = row
  end
  return out
end

--- The last `n` lines (default 20) of what a task's current or last attempt printed.
function Control:tail(id, n)
  local st, err = task_state(self, id)
  if not st then return nil, err end
  n = math.tointeger(n) or 20
  if n < 1 then return nil, "tail needs a count of at least 1" end
  local a = st.attempts[#st.attempts]
  if not a then return nil, "task '" .. id .. "' has not started" end
  local text = fsutil.tail(self.run.records:task_path(id, "out", a.n), 64 * 1024)
  local lines = {}
  for l in text:gmatch("([^\n]*)\n?") do lines[#lines + 1] = l end
  if lines[#lines] == "" then lines[#lines] = nil end
  local from = math.max(1, #lines - n + 1)
  return { task = id, attempt = a.n, lines = { table.unpack(lines, from) } }
end

--- Stops a task: a running one's process tree is killed and it ends cancelled; one waiting
-- for a gate or a retry ends cancelled at once. Its dependents follow on_failure.
function Control:cancel(id, who)
  local st, err = task_state(self, id)
  if not st then return nil, err end
  local run = self.run
  if states.ended(st.status) then return nil, string.format("task '%s' already ended (%s)", id, st.status) end
  if st.status == "pending" and not st.held then
    return nil, string.format("task '%s' has not started (it waits for its dependencies): nothing to cancel", id)
  end
  local uid = who_of(who)
  local why = string.format("cancelled by coral ctl (uid %d)", uid)
  self:record("cancel", who, { target = id })
  if st.status == "running" then
    st.cancelled = why
    if st.handle then st.handle:cancel() end   -- the executor's cancel: TERM, grace, KILL; scancel on Slurm
  elseif st.status == "retrying" and st.backoff_timer then
    st.backoff_timer:close()
    st.backoff_timer = nil
    run.waiting = run.waiting - 1
    st.cancelled = why
    attempt.begin(run, st, why)
  elseif st.held then
    self:fail_held(st, why, true)
  else
    return nil, string.format("task '%s' is %s: it cannot be cancelled now", id, st.status)
  end
  return { task = id, status = st.status }
end

-- The failed tasks (in the graph) that keep skipped task `id` from running.
local function failed_roots(run, id, seen, out)
  seen[id] = true
  local gs = run.g:state(id)
  if gs == "failed" then out[#out + 1] = id; return out end
  for _, d in ipairs(run.state[id].task.depends_on) do
    if not seen[d] then
      local ds = run.g:state(d)
      if ds == "failed" or ds == "skipped" then failed_roots(run, d, seen, out) end
    end
  end
  return out
end

--- Runs a failed, cancelled or skipped task again, with the dependents it blocked (a skipped
-- task: the failures upstream that skipped it). Returns the ids that run again.
function Control:retry(id, who)
  local st, err = task_state(self, id)
  if not st then return nil, err end
  local run = self.run
  if st.status ~= "failed" and st.status ~= "skipped" then
    return nil, string.format("task '%s' is %s: only a failed, cancelled or skipped task can be retried", id, st.status)
  end
  if run.stopping then return nil, "the run is stopping: " .. run.stopping end
  if run.mode.name ~= "dependency" then
    return nil, string.format("retry works in the dependency mode only (this run's mode is %s)", run.mode.name)
  end
  local roots = failed_roots(run, id, {}, {})
  if #roots == 0 then return nil, string.format("task '%s': no failed task keeps it from running", id) end
  for _, r in ipairs(roots) do
    if run.runner.on_failure == "continue" then
      return nil, string.format("task '%s' failed under on_failure = continue: its dependents went on, so it " ..
        "cannot run again before them", r)
    end
  end
  self:record("retry", who, { target = id, roots = roots })
  local again = {}
  for _, r in ipairs(roots) do
    for _, rid in ipairs(run.g:reset(r)) do
      local rst = run.state[rid]
      rst.status, rst.error, rst.finish, rst.cancelled, rst.skip_reason = "pending", nil, nil, nil, nil
      rst.by_condition, rst.output_path = nil, nil
      again[#again + 1] = rid
    end
  end
  run.phase_at, run.phase_task_at = nil, nil   -- ended tasks run again (Run:current_phase)
  run:pump()
  return { tasks = again }
end

function Control:pause(who)
  if self.paused then return nil, "the run is already paused" end
  self:record("pause", who)
  self.paused = true
  return { paused = true }
end

function Control:resume(who)
  if not self.paused then return nil, "the run is not paused" end
  self:record("resume", who)
  self.paused = false
  self.run:pump()
  return { paused = false }
end

function Control:workers(n, who)
  n = math.tointeger(tonumber(n))
  if not n or n < 1 then return nil, "workers needs a whole number of at least 1" end
  self:record("workers", who, { workers = n })
  self.run.max_workers = n
  self.run:pump()
  return { max_workers = n }
end

function Control:limit(name, n, who)
  local run = self.run
  if not run.set_limit then return nil, "no limits in this run" end
  n = math.tointeger(tonumber(n))
  if type(name) ~= "string" or name == "" or not n or n < 0 then
    return nil, "limit needs NAME=N, N a whole number >= 0"
  end
  self:record("limit", who, { name = name, value = n })
  local ok, err = run:set_limit(name, n)
  if ok == nil and err then return nil, err end
  run:pump()
  return { limit = name, value = n }
end

--- Adds tasks: `tasks` a task or a list of tasks (coral.task objects or raw tables), checked
-- against the running plan all or nothing (an unknown dependency, a cycle: refused).
function Control:add(tasks, who, where)
  local run = self.run
  if run.stopping then return nil, "the run is stopping: " .. run.stopping end
  if type(tasks) ~= "table" then return nil, "add: expected a task or a list of tasks, got " .. type(tasks) end
  if getmetatable(tasks) == require("coral.plan").Task or tasks.agent or tasks.id then tasks = { tasks } end
  local ids, err = dynamic.add(run, tasks, { where = where })
  if not ids then return nil, err end
  self:record("add", who, { tasks = ids, where = where })
  run:pump()
  return { tasks = ids }
end

--- Adds the tasks a Lua file returns (a task or a list of them).
function Control:add_file(path, who)
  if type(path) ~= "string" then return nil, "add needs a Lua file" end
  local env = setmetatable({ coral = require "coral" }, { __index = _G })
  local fn, lerr = loadfile(path, "t", env)
  if not fn then return nil, lerr end
  local ok, tasks = pcall(fn)
  if not ok then return nil, tostring(tasks) end
  return self:add(tasks, who, path)
end

function Control:approve(id, note, who)
  local st, err = task_state(self, id)
  if not st then return nil, err end
  if not approval_of(st.task) then return nil, string.format("task '%s' has no approval gate", id) end
  if self.approved[id] then return nil, string.format("task '%s' is already approved", id) end
  if st.status ~= "awaiting_approval" and st.status ~= "pending" then
    return nil, string.format("task '%s' is %s: there is nothing to approve", id, st.status)
  end
  self:record("approve", who, { target = id, note = note })
  self.approved[id] = true
  close_timer(st)
  if st.status == "awaiting_approval" then st.status = "pending" end
  self.run:pump()
  return { task = id, approved = true }
end

function Control:reject(id, reason, who)
  local st, err = task_state(self, id)
  if not st then return nil, err end
  if type(reason) ~= "string" or reason == "" then return nil, "reject needs a reason" end
  if not approval_of(st.task) then return nil, string.format("task '%s' has no approval gate", id) end
  if st.status ~= "awaiting_approval" then
    return nil, string.format("task '%s' is %s, not awaiting approval", id, st.status)
  end
  self:record("reject", who, { target = id, reason = reason })
  self:fail_held(st, "rejected: " .. reason)
  return { task = id, status = st.status }
end

-- }}}

return M
