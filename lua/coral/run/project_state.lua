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
  return setmetatable({ run = run, pending = {}, built = {}, dirty = true }, ProjectState)
end

--- Records the success of a task that declares outputs (run/uptodate.lua's record), written
-- with the next flush to the state's `built` table.
function ProjectState:record_built(id, entry)
  self.built[id] = entry
  self.dirty = true
end

--- Adds the history entry of a task that ended (succeeded or failed); written with the next flush.
function ProjectState:record(st)
  local a = st.attempts[#st.attempts]
  -- its spend, over its attempts: the budget's estimates of the agent's next tasks (run/budget.lua)
  local cost, tokens
  for _, x in ipairs(st.attempts) do
    if x.cost_usd then cost = (cost or 0) + x.cost_usd end
    if type(x.usage) == "table" then tokens = (tokens or 0) + require("coral.run.budget").tokens(x.usage) end
  end
  self.pending[#self.pending + 1] = {
    agent = st.task.agent, entry = {
      task = st.task.task, task_id = st.task.id, run_id = self.run.records.id, status = st.status,
      started = fsutil.timestamp(st.first_start), finished = fsutil.timestamp(a.finish),
      duration = math.floor((a.finish - st.first_start) * 1000 + 0.5) / 1000,
      attempts = #st.attempts, output = st.output_path, error = st.error,
      cost_usd = cost, tokens = tokens,
    },
  }
  self.dirty = true
  if self.timer then return end
  self.timer = uv.new_timer()
  -- Once a second, and less often for big plans: the file grows with the plan.
  self.timer:start(1000 + #self.run.plan.tasks, 0, function()
    self.timer:close()
    self.timer = nil
    self:flush()
  end)
end

--- Writes what changed (read-modify-write under the lock); `final`: the run's last write.
function ProjectState:flush(final)
  if not self.dirty and not final then return end
  self.dirty = false
  local pending, built, run = self.pending, self.built, self.run
  self.pending, self.built = {}, {}
  local _, warning = run.records:update_state(function(state)
    state.project = run.description or state.project
    state.project_dir = run.project_dir
    state.updated = fsutil.timestamp()
    state.current_run = run.records.id
    state.plan = run.plan.name or state.plan
    state.current_phase = run:current_phase()
    state.status = final and run.final_status or "running"
    state.agents = state.agents or {}
    for _, h in ipairs(pending) do
      local a = state.agents[h.agent] or {}
      state.agents[h.agent] = a
      a.history = a.history or {}
      a.history[#a.history + 1] = h.entry
      a.status, a.last_run = h.entry.status, h.entry.run_id
      while #a.history > M.HISTORY_MAX do table.remove(a.history, 1) end
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
