--- Named counting limits, a gate of the run (run/admission.lua). A task holds, while an attempt
-- of it runs, one unit of its driver's name (`claude`, `cmd`, ...), one of `model:<model>` when
-- it names a model, and what it declares in `resources` ({ gpu = 1, mem_gb = 4 }). A limit
-- (`limits = { claude = 2, gpu = 1 }`, `--limit NAME=N`) caps the units of its name in use at
-- once; `cpus` and `mem_gb` are the machine's unless given. A name without a limit is not
-- counted against anything, except a resource: a task that asks for one nobody set is a
-- mistake (a typo would run unbounded), and so is one asking for more than a limit's total.
--
-- A driver that is rate-limited gets a limit of its own that adapts: it drops to half of the
-- driver's tasks running when the refusal came (at least 1), and grows back by one with each
-- success of a task started since, up to the driver's configured limit (or max_workers). The running count that was
-- refused is remembered as a ceiling for CEILING_MEMORY seconds, so the limit settles just
-- under what the API takes instead of climbing into it again; a retry-after the API gave holds
-- the driver's tasks back that long. Every change is journaled (`limit` events).
local check = require "coral.check"
local fsutil = require "coral.fsutil"
local uv = require "luv"

local M = {}

--- Seconds a rate limit's ceiling is kept after the last refusal.
M.CEILING_MEMORY = 60

--- The machine's own limits, for resources `cpus` and `mem_gb`.
function M.machine()
  local cpus = uv.available_parallelism and uv.available_parallelism() or #(uv.cpu_info() or {})
  return { cpus = math.max(1, cpus), mem_gb = math.max(1, math.floor(uv.get_total_memory() / 2 ^ 30)) }
end

--- What is wrong with a table of limits (name -> whole number >= 1), or nil. `what` names it.
function M.check(limits, what)
  if limits == nil then return nil end
  if type(limits) ~= "table" then return string.format("%s must be a table of NAME = N, got %s", what, type(limits)) end
  for k, v in pairs(limits) do
    if type(k) ~= "string" or k == "" then
      return string.format("%s: a limit's name must be a string, got %s", what, tostring(k))
    end
    if math.type(v) ~= "integer" or v < 1 then
      return string.format("%s: limit '%s' must be a whole number >= 1, got %s", what, k, tostring(v))
    end
  end
end

--- What is wrong with a task's resources table, or nil.
function M.check_resources(resources)
  for k, v in pairs(resources) do
    if type(k) ~= "string" or k == "" then
      return string.format("coral.task: resources: a resource's name must be a string, got %s", tostring(k))
    end
    if type(v) ~= "number" or v < 0 or v ~= v then
      return string.format("coral.task: resources.%s must be a number >= 0, got %s", k, tostring(v))
    end
  end
end

--- `--limit NAME=N` words -> a table of limits, or nil and an error.
function M.parse(words)
  local out = {}
  for _, w in ipairs(words or {}) do
    local name, n = w:match("^([^=]+)=(%d+)$")
    n = tonumber(n)
    if not name or n < 1 then
      return nil, string.format("option '--limit': expected NAME=N with N a whole number >= 1, got '%s'", w)
    end
    out[name] = math.tointeger(n)
  end
  return out
end

local Limits = { name = "limits" }
Limits.__index = Limits

--- The limits gate of `run`, or nil when no task could be limited by anything: no limit set,
-- no resource asked for, and (always) the drivers' own adaptive limits.
function M.new(run, driver_name_of)
  local self = setmetatable({
    run = run, driver_name_of = driver_name_of,
    configured = {}, used = {}, adaptive = {}, ceiling = {}, cut_at = {}, blocked_until = {}, shared_needs = {},
    changes = {},   -- { t, name, limit, reason } for the report
  }, Limits)
  if run.executor.on_this_machine then
    for k, v in pairs(M.machine()) do self.configured[k] = v end
  end
  for k, v in pairs(run.runner.limits or {}) do self.configured[k] = v end
  return self
end

--- The units task `st` holds while it runs: name -> count.
function Limits:needs(st)
  local task = st.task
  if st.needs then return st.needs end
  local driver = self.driver_name_of(task)
  st.driver_name = driver
  local model = task.model or self.run.runner.model
  -- the usual task, with no resources of its own, shares its needs with its driver and model's
  -- others (read only): one table, not one a task
  local shared_key = not task.resources and (driver or "") .. "\0" .. (model or "")
  local needs = shared_key and self.shared_needs[shared_key]
  if not needs then
    needs = {}
    if driver then needs[driver] = 1 end
    if model then needs["model:" .. model] = 1 end
    for k, v in pairs(task.resources or {}) do
      if v > 0 then needs[k] = (needs[k] or 0) + v end
    end
    if shared_key then self.shared_needs[shared_key] = needs end
  end
  st.needs = needs
  return needs
end

--- The limit of `name` now: its configured one and its adaptive one (a driver being
-- rate-limited), whichever is lower; nil when nothing limits it.
function Limits:limit(name)
  local c, a = self.configured[name], self.adaptive[name]
  if c and a then return math.min(c, a) end
  return c or a
end

--- Checks the plan's tasks before the run (raises a user error): a resource nobody limits,
-- or a task that asks for more than a limit's total.
function Limits:preflight(tasks)
  for _, t in ipairs(tasks) do
    for k, v in pairs(t.resources or {}) do
      local total = self.configured[k]
      if not total then
        local names = {}
        for n in pairs(self.configured) do names[#names + 1] = n end
        table.sort(names)
        check.user_error(string.format("task '%s' asks for resource '%s', which has no limit%s: set one " ..
          "(limits = { %s = N } on the runner, or --limit %s=N)", t.id, k, check.did_you_mean(k, names), k, k), t.where)
      elseif v > total then
        check.user_error(string.format("task '%s' asks for %s %s, more than the limit's total of %s: it could " ..
          "never start", t.id, tostring(v), k, tostring(total)), t.where)
      end
    end
  end
end

function Limits:admit(st)
  local needs = self:needs(st)
  local driver = st.driver_name
  local until_t = driver and self.blocked_until[driver]
  if until_t then
    local wait = until_t - fsutil.now()
    if wait > 0 then
      return "wait", string.format("%s is rate-limited: its tasks wait %.0f s (retry-after)", driver, wait)
    end
    self.blocked_until[driver] = nil
  end
  for name, n in pairs(needs) do
    local limit = self:limit(name)
    local used = self.used[name] or 0
    -- a task alone may always start (a limit cut below one task's units still runs one), unless
    -- the limit was set to 0 (live control: hold them all)
    if limit and (limit == 0 or (used > 0 and used + n > limit)) then
      return "wait", string.format("limit %s: %s of %s in use", name, tostring(used), tostring(limit))
    end
  end
  return true
end

function Limits:take(st)
  -- an attempt adopted on resume is admitted without asking: its needs are worked out here
  for name, n in pairs(self:needs(st)) do self.used[name] = (self.used[name] or 0) + n end
end

function Limits:give(st, a, result)
  local driver = st.driver_name
  local running = driver and self.used[driver] or 0
  for name, n in pairs(st.needs) do self.used[name] = (self.used[name] or 0) - n end
  if not driver then return end
  if result.rate_limited then
    self:throttle(driver, running, a, result.retry_after)
  elseif result.ok and not (self.cut_at[driver] and a.start < self.cut_at[driver]) then
    -- a success says the limit may grow only for an attempt that started under it
    self:grow(driver)
  end
end

function Limits:record(name, limit, reason)
  local t = fsutil.now()
  self.changes[#self.changes + 1] = { t = t, name = name, limit = limit, reason = reason }
  self.run:emit("limit", { name = name, limit = limit, reason = reason })
end

-- The driver's cap when it is not being throttled: its configured limit, else max_workers.
function Limits:full(driver)
  return math.min(self.configured[driver] or self.run.max_workers, self.run.max_workers)
end

--- A rate limit reached `driver` while `running` of its tasks ran (attempt `a` among them):
-- its limit drops to half of that. An attempt that started before the last cut ran under the
-- old limit: its refusal says nothing new.
function Limits:throttle(driver, running, a, retry_after)
  local now = fsutil.now()
  if retry_after and retry_after > 0 then
    self.blocked_until[driver] = math.max(self.blocked_until[driver] or 0, now + retry_after)
    local timer = uv.new_timer()
    timer:start(math.ceil(retry_after * 1000), 0, function()
      timer:close()
      if not self.run.finished then self.run:pump() end
    end)
  end
  if a and self.cut_at[driver] and a.start < self.cut_at[driver] then return end
  local limit = math.max(1, running // 2)
  self.ceiling[driver] = { value = math.max(1, running - 1), t = now }
  self.cut_at[driver] = now
  local current = self:limit(driver) or self:full(driver)
  if limit < current or not self.adaptive[driver] then
    self.adaptive[driver] = limit
    self:record(driver, limit, string.format("rate-limited with %d running", running))
  end
end

--- A task of `driver` succeeded: its throttled limit grows by one, up to the ceiling of its
-- last refusal (while remembered) and its full limit.
function Limits:grow(driver)
  local a = self.adaptive[driver]
  if not a then return end
  local top = self:full(driver)
  local ceiling = self.ceiling[driver]
  if ceiling and fsutil.now() - ceiling.t < M.CEILING_MEMORY then top = math.min(top, ceiling.value) end
  if a >= top then return end
  a = a + 1
  if a >= self:full(driver) then
    self.adaptive[driver] = nil
    self:record(driver, self:full(driver), "back to its full limit")
  else
    self.adaptive[driver] = a
    self:record(driver, a, "a task succeeded")
  end
end

--- Sets limit `name` to `n` now (live control; 0 holds its tasks back).
function Limits:set(name, n)
  self.configured[name] = n
  self:record(name, n, "set")
end

--- The limits in force, for the live view: name -> { limit, used, adaptive }.
function Limits:snapshot()
  local out = {}
  for name in pairs(self.used) do
    local limit = self:limit(name)
    if limit then out[name] = { limit = limit, used = self.used[name], adaptive = self.adaptive[name] ~= nil } end
  end
  for name, limit in pairs(self.run.runner.limits or {}) do
    out[name] = out[name] or { limit = self:limit(name) or limit, used = self.used[name] or 0 }
  end
  return out
end

return M
