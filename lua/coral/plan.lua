--- Tasks and plans: what a recipe declares. A plan is a validated dependency graph of tasks,
-- built from a list of phases (each a list of tasks) or a flat list of tasks.
local check = require "coral.check"
local dag = require "coral.dag"
local id_refusal = require("coral.records.names").refusal

local M = {}

local Task = {}
Task.__index = Task
M.Task = Task

local Plan = {}
Plan.__index = Plan
M.Plan = Plan

local TASK_OPTIONS = {
  id = "string", agent = "string", task = "string", depends_on = "list",
  timeout = "number", idle_timeout = "number", retries = "integer", priority = "integer",
  estimate = "number", cmd = "string|list", driver = "string|table", context = "table",
  cwd = "string", env = "table", model = "string", slurm = "table", inputs = "list", outputs = "list",
  when = "function", force = "boolean", on_success = "function", workspace = "string", on_conflict = "string",
  resources = "table", estimate_usd = "number", estimate_tokens = "number", budget = "table",
  approve = "boolean|table",
}

-- The words of a task's (or a plan's) `workspace` (coral.run.workspaces).
local WORKSPACES = { "auto", "worktree", "shared" }

--- Default estimate (seconds) for a task with neither an estimate nor a recorded history.
M.DEFAULT_ESTIMATE = 60

local NON_NEGATIVE = { "retries", "timeout", "idle_timeout", "estimate", "estimate_usd", "estimate_tokens" }

local EMPTY = {}   -- a list to iterate when a field is absent: never written
local PATH_LISTS = { "inputs", "outputs" }

-- A task from its spec table, or nil and what is wrong with it. `checked`: its options were
-- checked already (coral.task checks them where it was called: not twice a task). `owned`:
-- the spec is a table coral.task made for this task, which becomes the task itself (a plan
-- of 100,000 tasks copied each one more time).
local function new_task(spec, checked, owned)
  if not checked then
    local err = check.option_error("coral.task", spec, TASK_OPTIONS)
    if err then return nil, err end
  end
  if spec.agent == nil and spec.id == nil then return nil, "coral.task: a task needs an agent or an id" end
  local t
  if owned then
    t = setmetatable(spec, Task)
  else
    t = setmetatable({}, Task)
    for k, v in pairs(spec) do t[k] = v end
  end
  t.agent = t.agent or t.id
  t.task = t.task or ""
  for i, d in ipairs(t.depends_on or EMPTY) do
    if type(d) ~= "string" then
      return nil, string.format("coral.task: depends_on[%d] must be a task id string, got %s", i, type(d))
    end
  end
  if t.id == "" then return nil, "coral.task: id must not be empty" end
  -- the id, or the agent's name that becomes it: it names files and joblog rows
  local refusal = id_refusal(t.id or t.agent)
  if refusal then return nil, "coral.task: " .. refusal end
  if t.agent == "" then return nil, "coral.task: agent must not be empty" end
  for _, k in ipairs(NON_NEGATIVE) do
    if t[k] and t[k] < 0 then return nil, string.format("coral.task: %s must be >= 0", k) end
  end
  if type(t.cmd) == "table" then
    if #t.cmd == 0 then return nil, "coral.task: cmd must not be an empty list" end
    for i, a in ipairs(t.cmd) do
      if type(a) ~= "string" and type(a) ~= "number" then
        return nil, string.format("coral.task: cmd[%d] must be a string, got %s", i, type(a))
      end
    end
  elseif t.cmd == "" then
    return nil, "coral.task: cmd must not be empty"
  end
  for _, key in ipairs(PATH_LISTS) do
    local paths = t[key] and {}
    for i, path in ipairs(t[key] or EMPTY) do
      if type(path) ~= "string" or path == "" then
        return nil, string.format("coral.task: %s[%d] must be a path, got %s", key, i, type(path))
      end
      if path:sub(1, 1) == "/" or ("/" .. path .. "/"):find("/%.%./") then
        return nil, string.format("coral.task: %s[%d] '%s' must be a path inside the project", key, i, path)
      end
      paths[i] = path:gsub("^%./", ""):gsub("/+", "/")
    end
    if t[key] then t[key] = paths end
  end
  if t.resources then
    local rerr = require("coral.run.limits").check_resources(t.resources)
    if rerr then return nil, rerr end
  end
  if t.budget ~= nil then
    local berr = require("coral.run.budget").check(t.budget, "coral.task: budget")
    if berr then return nil, berr end
  end
  if t.workspace ~= nil then
    local werr = check.choice_error("coral.task", "workspace", t.workspace, WORKSPACES)
    if werr then return nil, werr end
  end
  if type(t.approve) == "table" then
    -- an approval gate (coral.control): who approves it reads `prompt`; `timeout` rejects it
    local aerr = check.option_error("coral.task: approve", t.approve, { prompt = "string", timeout = "number" })
    if aerr then return nil, aerr end
    if t.approve.timeout and t.approve.timeout <= 0 then return nil, "coral.task: approve.timeout must be > 0" end
  end
  if t.on_conflict == "" then return nil, "coral.task: on_conflict must be \"fail\", \"agent\" or a role id" end
  for k, v in pairs(t.env or EMPTY) do
    if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
      return nil, string.format("coral.task: env[%s] must be a string, got %s", tostring(k), type(v))
    end
  end
  return t
end

--- Declares a task: task(agent, text [, opts]) or task{agent=, task=, ...}.
-- opts: id, depends_on, timeout, idle_timeout, retries, priority, estimate, cmd (argv list,
-- or a string run by /bin/sh -c), driver, model, context, cwd, env, slurm.
---@return table task
function M.task(agent, text, opts)
  local spec
  if type(agent) == "table" and text == nil and opts == nil then
    spec = agent
  else
    if type(agent) ~= "string" then check.fail("coral.task: agent must be a string, got " .. type(agent), 2) end
    if text ~= nil and type(text) ~= "string" then
      check.fail("coral.task: task text must be a string, got " .. type(text), 2)
    end
    check.options("coral.task", opts, TASK_OPTIONS, 2)
    -- the constructor sizes the table for the usual fields at once (a nil field takes no
    -- slot, but counts in the size): no rehash as they come
    spec = { agent = agent, task = text, id = nil, depends_on = nil, cmd = nil, where = nil }
    for k, v in pairs(opts or EMPTY) do spec[k] = v end
    spec.agent, spec.task = agent, text
  end
  local t, err = new_task(spec, spec ~= agent, spec ~= agent)
  if not t then check.fail(err, 2) end
  t.where = check.where(1)
  return t
end

local function is_task(v)
  return getmetatable(v) == Task
end

-- Turns a raw table {agent=..., task=...} found in a plan into a Task, blaming `where`.
local function as_task(v, where)
  if is_task(v) then return v end
  local t, err = new_task(v)
  if not t then check.user_error(err, where) end
  t.where = where
  return t
end

local function copy_task(t)
  local c = setmetatable({}, Task)
  for k, v in pairs(t) do c[k] = v end
  if t.depends_on then c.depends_on = { table.unpack(t.depends_on) } end
  return c
end

local function plan_error(where, message)
  check.user_error(message, where)
end

--- Raises a mistake of the user's (bad input, a busy project): coral.check's user error.
M.user_error = check.user_error

--- Builds a plan from a list of phases or a flat list of tasks. In a list of phases, a task
-- without depends_on depends on every task of the phase before it.
---@param spec table
---@param opts? {name?: string, description?: string}
function M.plan(spec, opts)
  if getmetatable(spec) == Plan then return spec end
  -- `return coral.plan {...}` is a tail call: the recipe's frame is gone, and the script coral
  -- runs is blamed (coral.recipes blames the recipe file it loaded).
  local where = check.blame(2)
  if type(spec) ~= "table" then
    check.fail("coral.plan: expected a list of phases or of tasks, got " .. type(spec), 2)
  end
  check.options("coral.plan", opts, { name = "string", description = "string", workspace = "string" }, 2)
  if opts and opts.workspace ~= nil then
    local err = check.choice_error("coral.plan", "workspace", opts.workspace, WORKSPACES)
    if err then check.fail(err, 2) end
  end
  local self = setmetatable({ tasks = {}, by_id = {}, declared_phases = {}, where = where }, Plan)
  self.name = opts and opts.name
  self.description = opts and opts.description
  self.workspace = opts and opts.workspace

  local phased = #spec > 0
  for _, v in ipairs(spec) do
    if is_task(v) or (type(v) == "table" and (v.agent or v.id)) then phased = false end
  end
  local groups = phased and spec or { spec }
  for p, group in ipairs(groups) do
    if type(group) ~= "table" then
      plan_error(where, string.format("phase %d must be a list of tasks, got %s", p, type(group)))
    end
    local phase = {}
    for i, v in ipairs(group) do
      if type(v) ~= "table" then
        plan_error(where, string.format("phase %d, item %d is not a task (got %s)", p, i, type(v)))
      end
      -- A plan owns copies of its tasks: the same task object may be used in two plans.
      local t = copy_task(as_task(v, where))
      t.phase = phased and p or nil
      phase[#phase + 1] = t
      self.tasks[#self.tasks + 1] = t
    end
    if phased then self.declared_phases[#self.declared_phases + 1] = phase end
  end

  -- Ids: explicit ones first, then the agent's name, made unique with -2, -3, ...
  for _, t in ipairs(self.tasks) do
    if t.id then
      local other = self.by_id[t.id]
      if other then
        plan_error(t.where, string.format("duplicate task id '%s' (first declared at %s)", t.id, other.where))
      end
      self.by_id[t.id] = t
    end
  end
  for _, t in ipairs(self.tasks) do
    if not t.id then
      local id, n = t.agent, 1
      while self.by_id[id] do n = n + 1; id = t.agent .. "-" .. n end
      t.id = id
      self.by_id[id] = t
    end
  end

  -- Phase defaults: depend on the whole previous phase.
  if phased then
    local previous = {}
    for _, phase in ipairs(self.declared_phases) do
      for _, t in ipairs(phase) do
        if t.depends_on == nil then
          t.depends_on = {}
          for _, d in ipairs(previous) do t.depends_on[#t.depends_on + 1] = d.id end
          t.implicit_deps = true
        end
      end
      if #phase > 0 then previous = phase end
    end
  end
  for _, t in ipairs(self.tasks) do t.depends_on = t.depends_on or {} end

  -- A task that reads a file another task declares as its output depends on that task.
  local producer = {}
  for _, t in ipairs(self.tasks) do
    for _, o in ipairs(t.outputs or {}) do
      if producer[o] and producer[o] ~= t then
        plan_error(t.where, string.format("task '%s' declares output '%s', which task '%s' declares too",
                                          t.id, o, producer[o].id))
      end
      producer[o] = t
    end
  end
  for _, t in ipairs(self.tasks) do
    for _, i in ipairs(t.inputs or {}) do
      local up = producer[i]
      if up and up ~= t then
        local known = false
        for _, d in ipairs(t.depends_on) do if d == up.id then known = true end end
        if not known then
          t.depends_on = { table.unpack(t.depends_on) }
          t.depends_on[#t.depends_on + 1] = up.id
          t.input_deps = t.input_deps or {}
          t.input_deps[up.id] = i
        end
      end
    end
  end

  self:validate()
  return self
end

-- {{{ tasks added while the plan runs (coral.run.dynamic)

--- The options of a task, by name, with their types.
M.TASK_OPTIONS = TASK_OPTIONS

--- Makes the tasks of `items` (coral.task objects or raw task tables, whose mistakes blame
-- `where`) ready to be added to the plan: copies, each with its id (without one, its agent's
-- name made unique against the plan and `batch`), appended to `batch`. Nothing is checked
-- against the plan yet (check_added does that). Raises a user error; returns the new tasks.
function Plan:prepare(items, where, batch)
  local taken = {}
  for _, t in ipairs(batch) do taken[t.id] = true end
  local out = {}
  for i, v in ipairs(items) do
    if type(v) ~= "table" then
      plan_error(where, string.format("item %d is not a task (got %s)", i, type(v)))
    end
    local t = copy_task(as_task(v, where))
    t.phase, t.depends_on = nil, t.depends_on or {}
    if not t.id then
      local id, n = t.agent, 1
      while self.by_id[id] or taken[id] do n = n + 1; id = t.agent .. "-" .. n end
      t.id = id
    end
    taken[t.id] = true
    batch[#batch + 1] = t
    out[#out + 1] = t
  end
  return out
end

local function contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

--- Checks tasks made by prepare() against the plan, as a plan is checked when it is built,
-- each mistake blaming the line that declared the culprit: a duplicate id, an unknown or own
-- dependency, a cycle (tasks of the plan cannot depend on added ones, so only the batch can
-- close one), an output another task declares, and an output a task of the plan reads (that
-- task would not wait for one added after it). A task of the batch that reads a file another
-- task declares as output gets it as a dependency. The plan is not changed.
function Plan:check_added(batch)
  local in_batch = {}
  for _, t in ipairs(batch) do
    local other = self.by_id[t.id] or in_batch[t.id]
    if other then
      plan_error(t.where, string.format("duplicate task id '%s' (first declared at %s)", t.id, other.where))
    end
    in_batch[t.id] = t
  end
  local producer, reader = {}, {}
  for _, t in ipairs(self.tasks) do
    for _, o in ipairs(t.outputs or {}) do producer[o] = t end
    for _, i in ipairs(t.inputs or {}) do reader[i] = reader[i] or t end
  end
  for _, t in ipairs(batch) do
    for _, o in ipairs(t.outputs or {}) do
      if producer[o] and producer[o] ~= t then
        plan_error(t.where, string.format("task '%s' declares output '%s', which task '%s' declares too",
                                          t.id, o, producer[o].id))
      end
      if reader[o] then
        plan_error(t.where, string.format("task '%s' declares output '%s', which task '%s' reads: a task " ..
          "of the plan cannot wait for a task added while it runs", t.id, o, reader[o].id))
      end
      producer[o] = t
    end
  end
  for _, t in ipairs(batch) do
    for _, i in ipairs(t.inputs or {}) do
      local up = producer[i]
      if up and up ~= t and not contains(t.depends_on, up.id) then
        t.depends_on = { table.unpack(t.depends_on) }
        t.depends_on[#t.depends_on + 1] = up.id
        t.input_deps = t.input_deps or {}
        t.input_deps[up.id] = i
      end
    end
  end
  for _, t in ipairs(batch) do
    for _, d in ipairs(t.depends_on) do
      if d == t.id then
        plan_error(t.where, string.format("task '%s' depends on itself", t.id))
      elseif not self.by_id[d] and not in_batch[d] then
        local ids = {}
        for _, o in ipairs(self.tasks) do ids[#ids + 1] = o.id end
        for _, o in ipairs(batch) do ids[#ids + 1] = o.id end
        plan_error(t.where, string.format("task '%s' depends on unknown task '%s'%s", t.id, d,
                                          check.did_you_mean(d, ids)))
      end
    end
  end
  local g <close> = dag.new()
  for _, t in ipairs(batch) do
    local deps = {}
    for _, d in ipairs(t.depends_on) do if in_batch[d] then deps[#deps + 1] = d end end
    assert(g:add(t.id, deps))
  end
  local ok, err, kind, ids = g:validate()
  if not ok then
    local first = kind == "cycle" and ids and in_batch[ids[1]]
    plan_error(first and first.where or batch[1].where, err)
  end
end

--- Adds tasks checked by check_added() to the plan. Each joins the phase after its latest
-- dependency's, and none a phase before `floor` (the run's current one: those before it are
-- over); a phase past the last is a new one. Returns the phase of each task, in order.
function Plan:add(batch, floor)
  local lists, of = self.added_phases, self.added_phase_of
  if not lists then
    -- From now on the phases are kept here: the generations of a plan of tasks would put a
    -- task without dependencies in phase 1, which may be over.
    lists, of = {}, self:phase_of()
    for p, ids in ipairs(self:phases()) do lists[p] = table.move(ids, 1, #ids, 1, {}) end
  end
  local phase_of_batch, left = {}, #batch
  while left > 0 do   -- dependencies in the batch first (it has no cycle)
    for _, t in ipairs(batch) do
      if not phase_of_batch[t] then
        local p, ready = floor or 1, true
        for _, d in ipairs(t.depends_on) do
          if of[d] then p = math.max(p, of[d] + 1) else ready = false end
        end
        if ready then
          p = math.max(1, math.min(p, #lists + 1))
          lists[p] = lists[p] or {}
          table.insert(lists[p], t.id)
          of[t.id], phase_of_batch[t] = p, p
          left = left - 1
        end
      end
    end
  end
  local phases = {}
  for i, t in ipairs(batch) do
    phases[i] = phase_of_batch[t]
    self.tasks[#self.tasks + 1] = t
    self.by_id[t.id] = t
  end
  self.added_phases, self.added_phase_of = lists, of
  self.analysis, self.checked_graph, self.dependents_index = nil, nil, nil
  return phases
end

-- }}}

--- Builds the C dependency graph of the plan (weights = estimates, in seconds).
---@param opts? {no_edges?: boolean}
function Plan:graph(opts)
  local g = dag.new()
  local no_edges = opts and opts.no_edges
  for _, t in ipairs(self.tasks) do
    local ok, err = g:add(t.id, no_edges and {} or t.depends_on,
                          { weight = self:estimate(t), priority = t.priority or 0 })
    if not ok then plan_error(t.where, err) end
  end
  return g
end

--- The estimate used for `t`: its own, else the one given by set_estimates, else the default.
function Plan:estimate(t)
  return t.estimate or (self.estimates and self.estimates[t.id]) or M.DEFAULT_ESTIMATE
end

--- Sets estimates from history: a table task id -> seconds.
function Plan:set_estimates(estimates)
  -- none (a project's first run): the weights stay as they are, and so does the analysis
  if next(estimates) == nil and not self.estimates then return end
  self.estimates = estimates
  self.analysis, self.checked_graph = nil, nil
end

--- Checks the graph: unknown, self and cyclic dependencies, reported at the task's line.
function Plan:validate()
  for _, t in ipairs(self.tasks) do
    for _, d in ipairs(t.depends_on) do
      if d == t.id then
        plan_error(t.where, string.format("task '%s' depends on itself", t.id))
      elseif not self.by_id[d] then
        plan_error(t.where, string.format("task '%s' depends on unknown task '%s'", t.id, d))
      end
    end
  end
  local g = self:graph()
  self.checked_graph = g   -- analyse() asks the same graph for phases and the critical path
  local ok, err, kind, ids = g:validate()
  if not ok then
    -- A cycle message names the tasks; blame the first one's line.
    local first = kind == "cycle" and ids and ids[1]
    plan_error(first and self.by_id[first] and self.by_id[first].where or self.where, err)
  end
  return true
end

local function analyse(self)
  if not self.analysis then
    local g = self.checked_graph
    if not g then   -- the estimates changed since validate(): the weights are new
      g = self:graph()
      assert(g:validate())
    end
    local path, length = g:critical_path()
    self.analysis = { phases = g:phases(), path = path, length = length }
    -- validate() kept the graph for this analysis only: for 100,000 tasks it holds 11 MB,
    -- which a run (with its own graph) would otherwise carry to its end
    self.checked_graph = nil
    g:close()
  end
  return self.analysis
end

--- The plan's phases: the declared ones for a list of phases, else the topological
-- generations (each a list of task ids); tasks added while the plan ran in the phases
-- Plan:add gave them.
function Plan:phases()
  if self.added_phases then return self.added_phases end
  if #self.declared_phases > 0 then
    local out = {}
    for _, phase in ipairs(self.declared_phases) do
      local ids = {}
      for _, t in ipairs(phase) do ids[#ids + 1] = t.id end
      if #ids > 0 then out[#out + 1] = ids end
    end
    return out
  end
  return analyse(self).phases
end

--- The topological generations, whatever the declaration.
function Plan:generations()
  return analyse(self).phases
end

--- The critical path: list of task ids and its length in estimated seconds.
function Plan:critical_path()
  local a = analyse(self)
  return a.path, a.length
end

--- The ids of the tasks that depend on task `id`, in plan order (an index built once).
function Plan:dependents(id)
  if not self.dependents_index then
    local index = {}
    for _, t in ipairs(self.tasks) do
      for _, d in ipairs(t.depends_on) do
        local list = index[d]
        if not list then list = {}; index[d] = list end
        list[#list + 1] = t.id
      end
    end
    self.dependents_index = index
  end
  return self.dependents_index[id] or {}
end

--- Phase number (1-based) of each task id, as phases() reports them.
function Plan:phase_of()
  local of = {}
  for p, ids in ipairs(self:phases()) do
    for _, id in ipairs(ids) do of[id] = p end
  end
  return of
end

local function short(text, n)
  text = (text or ""):gsub("%s+", " ")
  if #text > n then text = text:sub(1, n - 1) .. "…" end
  return text
end
M.short = short

--- A readable listing of the phases and dependencies.
function Plan:to_text()
  local lines = {}
  local path, length = self:critical_path()
  local on_path = {}
  for _, id in ipairs(path) do on_path[id] = true end
  lines[#lines + 1] = string.format("Plan%s: %d tasks in %d phases",
    self.name and (" " .. self.name) or "", #self.tasks, #self:phases())
  if self.description then lines[#lines + 1] = "Project: " .. self.description end
  for p, ids in ipairs(self:phases()) do
    lines[#lines + 1] = string.format("Phase %d:", p)
    for _, id in ipairs(ids) do
      local t = self.by_id[id]
      local names = {}
      for i, d in ipairs(t.depends_on) do
        names[i] = t.input_deps and t.input_deps[d] and (d .. " (reads its " .. t.input_deps[d] .. ")") or d
      end
      local deps = #names > 0 and ("  <- " .. table.concat(names, ", ")) or ""
      lines[#lines + 1] = string.format("  %s %-24s %s%s", on_path[id] and "*" or "-", id,
                                        short(t.task, 48), deps)
    end
  end
  lines[#lines + 1] = string.format("Critical path (*): %s (%.0f s estimated)",
                                    table.concat(path, " -> "), length)
  return table.concat(lines, "\n") .. "\n"
end

local function dot_quote(s)
  return '"' .. tostring(s):gsub('[\\"]', "\\%0"):gsub("\n", "\\n") .. '"'
end

--- The plan as Graphviz DOT: phases as ranks, critical path in bold red.
function Plan:to_dot()
  local path = self:critical_path()
  local on_path, next_on_path = {}, {}
  for i, id in ipairs(path) do on_path[id] = true; next_on_path[id] = path[i + 1] end
  -- newrank: rank=same is honoured inside a cluster, so a phase is one rank (column) unless a
  -- task depends on another of its own phase (a sequence inside the phase keeps its order).
  local out = { "digraph plan {", "  rankdir=LR;", "  newrank=true;",
                '  node [shape=box, style="rounded", fontname="Helvetica"];' }
  local phase_of = self:phase_of()
  for p, ids in ipairs(self:phases()) do
    local flat = true
    for _, id in ipairs(ids) do
      for _, d in ipairs(self.by_id[id].depends_on) do
        if phase_of[d] == p then flat = false end
      end
    end
    out[#out + 1] = string.format("  subgraph cluster_phase%d { label=%s; style=dashed;%s", p, dot_quote("Phase " .. p),
                                  flat and " rank=same;" or "")
    for _, id in ipairs(ids) do
      local t = self.by_id[id]
      out[#out + 1] = string.format("    %s [label=%s%s];", dot_quote(id),
        dot_quote(t.agent .. "\n" .. short(t.task, 40)),
        on_path[id] and ', color="red", penwidth=2' or "")
    end
    out[#out + 1] = "  }"
  end
  for _, t in ipairs(self.tasks) do
    for _, d in ipairs(t.depends_on) do
      local critical = on_path[d] and next_on_path[d] == t.id
      out[#out + 1] = string.format("  %s -> %s%s;", dot_quote(d), dot_quote(t.id),
                                    critical and ' [color="red", penwidth=2]' or "")
    end
  end
  out[#out + 1] = "}"
  return table.concat(out, "\n") .. "\n"
end

--- The plan as a Mermaid flowchart: phases as subgraphs, critical path highlighted.
function Plan:to_mermaid()
  local path = self:critical_path()
  local node_name, n = {}, 0
  for _, t in ipairs(self.tasks) do n = n + 1; node_name[t.id] = "t" .. n end
  local function label(s) return (s:gsub('"', "#quot;")) end
  local out = { "flowchart LR" }
  local next_on_path = {}
  for i, id in ipairs(path) do next_on_path[id] = path[i + 1] end
  for p, ids in ipairs(self:phases()) do
    out[#out + 1] = string.format('  subgraph phase%d["Phase %d"]', p, p)
    for _, id in ipairs(ids) do
      local t = self.by_id[id]
      out[#out + 1] = string.format('    %s["%s<br/>%s"]', node_name[id], label(t.agent),
                                    label(short(t.task, 40)))
    end
    out[#out + 1] = "  end"
  end
  local links, critical_links = 0, {}
  for _, t in ipairs(self.tasks) do
    for _, d in ipairs(t.depends_on) do
      out[#out + 1] = string.format("  %s --> %s", node_name[d], node_name[t.id])
      if next_on_path[d] == t.id then critical_links[#critical_links + 1] = links end
      links = links + 1
    end
  end
  if #critical_links > 0 then   -- links are numbered from 0 in declaration order
    out[#out + 1] = "  linkStyle " .. table.concat(critical_links, ",") .. " stroke:#d00,stroke-width:3px"
  end
  local critical = {}
  for _, id in ipairs(path) do critical[#critical + 1] = node_name[id] end
  if #critical > 0 then
    out[#out + 1] = "  classDef critical stroke:#d00,stroke-width:3px"
    out[#out + 1] = "  class " .. table.concat(critical, ",") .. " critical"
  end
  return table.concat(out, "\n") .. "\n"
end

--- The plan as JSON, given to `write(piece)` in pieces (coral.json.write): tasks with their
-- dependencies, phases and the critical path. `more(task)`, if given, returns a new table of
-- more fields of a task (a run adds each task's definition): the task's entry is made in it,
-- and the plan's own fields win.
function Plan:write_json(write, more)
  local phase_of = self:phase_of()
  local path, length = self:critical_path()
  require("coral.json").write(write, {
    name = self.name, description = self.description,
    phases = self:phases(), critical_path = path, critical_path_seconds = length,
  }, "tasks", false, function(emit)
    for _, t in ipairs(self.tasks) do
      local entry = more and more(t) or {}
      entry.id, entry.agent, entry.task, entry.depends_on = t.id, t.agent, t.task, t.depends_on
      entry.estimate, entry.priority, entry.phase = self:estimate(t), t.priority or 0, phase_of[t.id]
      emit(entry)
    end
  end)
end

--- The same text, whole.
function Plan:to_json(more)
  local pieces = {}
  self:write_json(function(piece) pieces[#pieces + 1] = piece end, more)
  return table.concat(pieces)
end

return M
