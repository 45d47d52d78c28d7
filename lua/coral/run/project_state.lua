--- The run's share of .coral/project_state.yaml: the current run and phase, the handoffs, and
-- each agent's history (the durations the runner estimates from and `coral history` shows).
-- History entries are batched and written at most about once a second, under the file's lock.
local fsutil = require "coral.fsutil"
local states = require "coral.records.states"
local uv = require "luv"

local M = {}

--- Entries kept per agent: enough for medians, bounded in size.
M.HISTORY_MAX = 50

--- The median of a list of numbers (sorted in place), or nil for an empty list.
function M.median(list)
  if #list == 0 then return nil end
  table.sort(list)
  local mid = (#list + 1) // 2
  if #list % 2 == 1 then return list[mid] end
  return (list[mid] + list[mid + 1]) / 2
end

--- The durations (seconds) of an agent's succeeded tasks in `history`; `text`: only those of
-- that task text.
function M.durations(history, text)
  local out = {}
  for _, h in ipairs(type(history) == "table" and history or {}) do
    if states.normalize(h.status) == "succeeded" and type(h.duration) == "number"
       and (text == nil or h.task == text) then
      out[#out + 1] = h.duration
    end
  end
  return out
end

--- Estimates from the durations earlier runs recorded: per task id, the median of the same
-- agent and task text, else of the same agent.
function M.estimates(state, plan)
  local out = {}
  local agents = state and state.agents or {}
  for _, t in ipairs(plan.tasks) do
    local a = agents[t.agent]
    if type(a) == "table" then
      out[t.id] = M.median(M.durations(a.history, t.task)) or M.median(M.durations(a.history))
    end
  end
  return out
end

local ProjectState = {}
ProjectState.__index = ProjectState

function M.new(run)
  -- pending: agent -> the tasks it ended since the last flush, in order; agents: in first order
  return setmetatable({ run = run, pending = {}, agents = {}, built = {}, dirty = true }, ProjectState)
end

--- Records the success of a task that declares outputs (run/uptodate.lua's record), written
-- with the next flush to the state's `built` table.
function ProjectState:record_built(id, entry)
  self.built[id] = entry
  self.dirty = true
end

-- The history entry of a task that ended: made when the state is written, from its state (final
-- by then: a task is recorded once, when it has succeeded or failed for good).
local function entry_of(st, run_id)
  local a = st.attempts[#st.attempts]
  -- its spend, over its attempts: the budget's estimates of the agent's next tasks (run/budget.lua)
  local cost, tokens
  local tokens_of = require("coral.run.budget").tokens   -- not at the top: budget requires this module
  for _, x in ipairs(st.attempts) do
    if x.cost_usd then cost = (cost or 0) + x.cost_usd end
    if type(x.usage) == "table" then tokens = (tokens or 0) + tokens_of(x.usage) end
  end
  return {
    task = st.task.task, task_id = st.task.id, run_id = run_id, status = st.status,
    started = fsutil.timestamp(st.first_start), finished = fsutil.timestamp(a.finish),
    duration = math.floor((a.finish - st.first_start) * 1000 + 0.5) / 1000,
    attempts = #st.attempts, output = st.output_path, error = st.error,
    cost_usd = cost, tokens = tokens,
  }
end

--- Adds the history entry of a task that ended (succeeded or failed); written with the next flush.
-- Per agent only the last HISTORY_MAX are kept until then (the state keeps no more): a big plan
-- flushes seldom, and would otherwise hold an entry for each of its tasks.
function ProjectState:record(st)
  local agent = st.task.agent
  local list = self.pending[agent]
  if not list then
    list = {}
    self.pending[agent] = list
    self.agents[#self.agents + 1] = agent
  end
  list[#list + 1] = st
  -- the last HISTORY_MAX to the front, the nils past the end over the rest
  if #list >= 2 * M.HISTORY_MAX then table.move(list, #list - M.HISTORY_MAX + 1, #list + M.HISTORY_MAX, 1) end
  -- Once a second, and less often for big plans: the file grows with the plan.
  self:flush_in(1000 + #self.run.plan.tasks)
end

--- Writes what changed `ms` milliseconds from now, unless a write is already due.
function ProjectState:flush_in(ms)
  self.dirty = true
  if self.timer then return end
  self.timer = uv.new_timer()
  self.timer:start(ms, 0, function()
    self.timer:close()
    self.timer = nil
    self:flush()
  end)
end

--- Writes what changed (read-modify-write under the lock); `final`: the run's last write.
function ProjectState:flush(final)
  if not self.dirty and not final then return end
  self.dirty = false
  local pending, agents, built, run = self.pending, self.agents, self.built, self.run
  self.pending, self.agents, self.built = {}, {}, {}
  -- the ends it records are in the journal first (theirs may still wait for the records' flush)
  run.records:flush_records()
  local _, warning = run.records:update_state(function(state)
    state.project = run.description or state.project
    state.project_dir = run.project_dir
    state.updated = fsutil.timestamp()
    state.current_run = run.records.id
    state.plan = run.plan.name or state.plan
    state.current_phase = run:current_phase()
    state.status = final and run.final_status or "running"
    state.agents = state.agents or {}
    for _, agent in ipairs(agents) do
      local a = state.agents[agent] or {}
      state.agents[agent] = a
      a.history = a.history or {}
      local list = pending[agent]
      for i = math.max(1, #list - M.HISTORY_MAX + 1), #list do
        local entry = entry_of(list[i], run.records.id)
        a.history[#a.history + 1] = entry
        a.status, a.last_run = entry.status, entry.run_id
      end
      local drop = #a.history - M.HISTORY_MAX   -- the oldest go: the rest to the front, nils after
      if drop > 0 then table.move(a.history, drop + 1, #a.history + drop, 1) end
    end
    if next(built) then
      if type(state.built) ~= "table" then state.built = {} end
      for id, entry in pairs(built) do state.built[id] = entry end
    end
    -- This run's handoffs: the outputs of finished tasks that other tasks depend on.
    state.handoffs = {}
    for _, t in ipairs(run.plan.tasks) do
      for _, d in ipairs(t.depends_on) do
        local up = run.state[d]
        if up.output_path then state.handoffs[d] = { agent = up.task.agent, output = up.output_path } end
      end
    end
  end)
  if warning and not self.warned then
    self.warned = true
    io.stderr:write("coral: warning: project state was broken: ", warning, "\n")
  end
  if final then self:close() end
end

--- Stops the flush timer (idempotent).
function ProjectState:close()
  if self.timer then
    if not self.timer:is_closing() then self.timer:close() end
    self.timer = nil
  end
end

return M
