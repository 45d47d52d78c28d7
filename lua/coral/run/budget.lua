--- The run's budget, a gate of the run (run/admission.lua): dollars and tokens planned with
-- before they are spent. Before a task starts, its expected spend is reserved: its own
-- `estimate_usd` / `estimate_tokens`, else the median spend of the same role's tasks that ended
-- in this run, else in the project's history, else 0. A task whose reservation would take
-- spent + reserved past the budget does not start: it is parked `budget_exhausted` (its
-- dependents wait with it), and from then on nothing that needs budget starts (a `cmd` task
-- costs nothing and still may). What runs finishes; a resume with a higher ceiling goes on.
-- A running attempt counts at its reservation or at what it has spent so far (live usage from
-- a streaming CLI), whichever is more. Tokens are input plus output tokens.
--
-- A task's own `budget = { usd =, tokens = }` stops an attempt whose spend passes it, as a
-- timeout does (`budget_exceeded`); the live usage of a streaming CLI is what sees it happen.
-- At `warn` (0.8 of the budget unless set) one warning line and one `budget_warning` event.
local check = require "coral.check"
local project_state = require "coral.run.project_state"

local M = {}

M.WARN = 0.8

--- What is wrong with a budget table ({ usd =, tokens =, warn = }), or nil.
function M.check(b, what)
  if b == nil then return nil end
  if type(b) ~= "table" then return string.format("%s must be a table { usd = N, tokens = N }, got %s", what, type(b)) end
  local known = { usd = true, tokens = true, warn = true }
  for k, v in pairs(b) do
    if not known[k] then
      return string.format("%s: unknown field '%s'%s", what, tostring(k), check.did_you_mean(tostring(k), { "usd", "tokens", "warn" }))
    end
    if type(v) ~= "number" or v ~= v or v < 0 then
      return string.format("%s.%s must be a number >= 0, got %s", what, k, tostring(v))
    end
  end
  if b.warn and b.warn > 1 then return string.format("%s.warn is a fraction of the budget (0.8), got %s", what, b.warn) end
end

--- The tokens of a usage table: input plus output.
function M.tokens(usage)
  if type(usage) ~= "table" then return 0 end
  return (tonumber(usage.input_tokens) or 0) + (tonumber(usage.output_tokens) or 0)
end

--- Spend recorded in a project's state: agent -> { usd = {...}, tokens = {...} } per task.
function M.history(state)
  local out = {}
  local agents = type(state) == "table" and type(state.agents) == "table" and state.agents or {}
  for name, a in pairs(agents) do
    for _, h in ipairs(type(a) == "table" and type(a.history) == "table" and a.history or {}) do
      if type(h) == "table" and (type(h.cost_usd) == "number" or type(h.tokens) == "number") then
        local e = out[name] or { usd = {}, tokens = {} }
        out[name] = e
        if type(h.cost_usd) == "number" then e.usd[#e.usd + 1] = h.cost_usd end
        if type(h.tokens) == "number" then e.tokens[#e.tokens + 1] = h.tokens end
      end
    end
  end
  return out
end

local Budget = { name = "budget" }
Budget.__index = Budget

--- The budget gate of `run`: the runner's budget and the tasks' own. `history`: M.history of
-- the project state. `needs_budget(task)`: false for tasks that cost nothing (commands).
function M.new(run, history, needs_budget)
  return setmetatable({
    run = run, limit = run.runner.budget or {}, history = history or {}, needs_budget = needs_budget,
    spent_usd = 0, spent_tokens = 0, reserved_usd = 0, reserved_tokens = 0,
    total_reserved_usd = 0, total_reserved_tokens = 0,
    by_agent = {},         -- agent -> { usd = {...}, tokens = {...} } of this run's tasks
    running = {},          -- st -> true: admitted attempts
    exhausted = nil,       -- why nothing that needs budget starts any more
  }, Budget)
end

--- Adds what the earlier sessions of a resumed run spent (their attempts' records).
function Budget:restore(states)
  for _, st in pairs(states) do
    for _, a in ipairs(st.attempts) do
      self.spent_usd = self.spent_usd + (a.cost_usd or 0)
      self.spent_tokens = self.spent_tokens + M.tokens(a.usage)
    end
  end
end

local function median(list)
  local copy = {}
  for i, v in ipairs(list or {}) do copy[i] = v end
  return project_state.median(copy)
end

--- What task `st` is expected to spend: { usd, tokens, from = where the figure comes from }.
function Budget:expected(st)
  local task = st.task
  local mine = self.by_agent[task.agent]
  local past = self.history[task.agent]
  local function pick(own, key)
    if own then return own, "its estimate" end
    local v = mine and median(mine[key])
    if v then return v, "this run's " .. task.agent .. " tasks" end
    v = past and median(past[key])
    if v then return v, "the project's history of " .. task.agent end
    return 0, nil
  end
  local usd, from_usd = pick(task.estimate_usd, "usd")
  local tokens, from_tokens = pick(task.estimate_tokens, "tokens")
  return { usd = usd, tokens = tokens, from = from_usd or from_tokens }
end

-- Spent plus what the running attempts hold: each its reservation or its live spend.
function Budget:committed()
  local usd, tokens = self.spent_usd, self.spent_tokens
  for st in pairs(self.running) do
    local r, live = st.reservation, st.live_spend or {}
    usd = usd + math.max(r.usd, live.usd or 0)
    tokens = tokens + math.max(r.tokens, live.tokens or 0)
  end
  return usd, tokens
end

local function money(v) return string.format("$%.2f", v) end

function Budget:admit(st)
  local limit = self.limit
  if not (limit.usd or limit.tokens) then return true end
  if self.needs_budget and not self.needs_budget(st.task) then return true end
  local exp = self:expected(st)
  st.expected_spend = exp
  if self.exhausted then
    return "park", "budget_exhausted", "the run's budget is exhausted (" .. self.exhausted .. ")"
  end
  local usd, tokens = self:committed()
  local over
  if limit.usd and usd + exp.usd > limit.usd + 1e-9 then
    over = string.format("its expected %s would take the run past its budget of %s (%s spent or running)",
      money(exp.usd), money(limit.usd), money(usd))
  elseif limit.tokens and tokens + exp.tokens > limit.tokens then
    over = string.format("its expected %d tokens would take the run past its budget of %d tokens (%d spent or " ..
      "running)", math.floor(exp.tokens), math.floor(limit.tokens), math.floor(tokens))
  elseif (limit.usd and usd >= limit.usd) or (limit.tokens and tokens >= limit.tokens) then
    over = "the run has spent its budget"
  end
  if over then
    self.exhausted = over
    return "park", "budget_exhausted", over
  end
  return true
end

function Budget:take(st)
  -- a task that costs nothing holds no reservation (and has no spend to give back)
  if self.needs_budget and not self.needs_budget(st.task) then
    st.expected_spend = nil
    return
  end
  local exp = st.expected_spend or { usd = 0, tokens = 0 }
  st.expected_spend = nil
  st.reservation, st.live_spend = exp, nil
  self.running[st] = true
  self.reserved_usd = self.reserved_usd + exp.usd
  self.reserved_tokens = self.reserved_tokens + exp.tokens
  self.total_reserved_usd = self.total_reserved_usd + exp.usd
  self.total_reserved_tokens = self.total_reserved_tokens + exp.tokens
end

function Budget:give(st, _, result)
  if not self.running[st] then return end
  self.running[st] = nil
  local r = st.reservation
  self.reserved_usd = self.reserved_usd - r.usd
  self.reserved_tokens = self.reserved_tokens - r.tokens
  local live = st.live_spend or {}
  -- the driver's final figures are authoritative; the live ones stand in when it had none
  local usd = result.cost_usd or live.usd or 0
  local tokens = result.usage and M.tokens(result.usage) or live.tokens or 0
  st.reservation, st.live_spend = nil, nil
  self.spent_usd = self.spent_usd + usd
  self.spent_tokens = self.spent_tokens + tokens
  local agent = st.task.agent
  local e = self.by_agent[agent] or { usd = {}, tokens = {} }
  self.by_agent[agent] = e
  if result.cost_usd or live.usd then e.usd[#e.usd + 1] = usd end
  if result.usage or live.tokens then e.tokens[#e.tokens + 1] = tokens end
  self:check_warn()
end

--- Live usage of a running attempt (cumulative for the attempt). Returns why the attempt
-- must stop (its task's own budget passed), or nil.
function Budget:live(st, usage, cost_usd)
  if not self.running[st] then return nil end
  local live = st.live_spend or {}
  st.live_spend = live
  if cost_usd then live.usd = cost_usd end
  if usage then live.tokens = M.tokens(usage) end
  self:check_warn()
  local own = st.task.budget
  if own then
    if own.usd and live.usd and live.usd > own.usd then
      return string.format("budget_exceeded: spent %s of its %s budget", money(live.usd), money(own.usd))
    end
    if own.tokens and live.tokens and live.tokens > own.tokens then
      return string.format("budget_exceeded: used %d of its %d tokens budget", live.tokens, math.floor(own.tokens))
    end
  end
end

--- One warning when the run's spend passes the warn fraction of its budget.
function Budget:check_warn()
  local limit = self.limit
  if self.warned or not (limit.usd or limit.tokens) then return end
  local usd, tokens = self.spent_usd, self.spent_tokens
  for st in pairs(self.running) do
    local live = st.live_spend or {}
    usd, tokens = usd + (live.usd or 0), tokens + (live.tokens or 0)
  end
  local warn = limit.warn or M.WARN
  local text
  if limit.usd and limit.usd > 0 and usd >= warn * limit.usd then
    text = string.format("the run has spent %s of its %s budget (%.0f%%)", money(usd), money(limit.usd),
      usd / limit.usd * 100)
  elseif limit.tokens and limit.tokens > 0 and tokens >= warn * limit.tokens then
    text = string.format("the run has used %d of its %d tokens budget (%.0f%%)", math.floor(tokens),
      math.floor(limit.tokens), tokens / limit.tokens * 100)
  end
  if not text then return end
  self.warned = true
  self.run:emit("budget_warning", { message = text, spent_usd = usd, spent_tokens = tokens })
end

--- The budget's part of the summary.
function Budget:summary()
  local limit = self.limit
  if not (limit.usd or limit.tokens) then return nil end
  return {
    usd = limit.usd, tokens = limit.tokens, warn = limit.warn or M.WARN,
    spent_usd = self.spent_usd, spent_tokens = self.spent_tokens,
    reserved_usd = self.total_reserved_usd, reserved_tokens = self.total_reserved_tokens,
    exhausted = self.exhausted,
  }
end

return M
