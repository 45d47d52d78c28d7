--- A small pure-Lua DAG with the semantics of coral.dag (src/dag.c), written for clarity, not
-- speed: the oracle the C graph is checked against in spec/dag_spec.lua. Tasks are validated all
-- at once (no dynamic batches); cycles are reported by kind only.
local M = {}
M.__index = M

function M.new()
  return setmetatable({ list = {}, by_id = {} }, M)
end

function M:add(id, deps, opts)
  if self.by_id[id] then return nil, "duplicate" end
  for _, d in ipairs(deps or {}) do
    if d == id then return nil, "self" end
  end
  local t = { id = id, index = #self.list + 1, deps = {}, dependents = {},
              weight = opts and opts.weight or 1, priority = opts and opts.priority or 0,
              state = "pending" }
  for i, d in ipairs(deps or {}) do t.deps[i] = d end
  self.list[#self.list + 1] = t
  self.by_id[id] = t
  return t.index
end

function M:validate()
  for _, t in ipairs(self.list) do
    for i, d in ipairs(t.deps) do
      local dt = self.by_id[d]
      if not dt then return nil, "unknown", { t.id, d } end
      t.deps[i] = dt
      dt.dependents[#dt.dependents + 1] = t
    end
  end
  -- depth-first search with colours finds a cycle if there is one
  local colour = {}
  local function visit(t)
    if colour[t] == "done" then return true end
    if colour[t] == "open" then return false end
    colour[t] = "open"
    for _, d in ipairs(t.deps) do
      if not visit(d) then return false end
    end
    colour[t] = "done"
    return true
  end
  for _, t in ipairs(self.list) do
    if not visit(t) then return nil, "cycle" end
  end
  -- phase: longest chain of dependencies below; rank: weight plus best rank above
  local phase, rank = {}, {}
  local function phase_of(t)
    if not phase[t] then
      local p = 1
      for _, d in ipairs(t.deps) do p = math.max(p, phase_of(d) + 1) end
      phase[t] = p
    end
    return phase[t]
  end
  local function rank_of(t)
    if not rank[t] then
      local best = 0
      for _, w in ipairs(t.dependents) do best = math.max(best, rank_of(w)) end
      rank[t] = t.weight + best
    end
    return rank[t]
  end
  for _, t in ipairs(self.list) do
    t.phase, t.rank = phase_of(t), rank_of(t)
    t.missing = #t.deps
  end
  return true
end

function M:phases()
  local out = {}
  for _, t in ipairs(self.list) do
    for p = #out + 1, t.phase do out[p] = {} end
    table.insert(out[t.phase], t.id)
  end
  return out
end

function M:critical_length()
  local best = 0
  for _, t in ipairs(self.list) do best = math.max(best, t.rank) end
  return best
end

function M:rank(id) return self.by_id[id].rank end

local function before(a, b)
  if a.priority ~= b.priority then return a.priority > b.priority end
  if a.rank ~= b.rank then return a.rank > b.rank end
  return a.index < b.index
end

--- Up to n runnable tasks, best first; they become running.
function M:ready(n)
  local runnable = {}
  for _, t in ipairs(self.list) do
    if t.state == "pending" and t.missing == 0 then runnable[#runnable + 1] = t end
  end
  table.sort(runnable, before)
  local out = {}
  for i = 1, math.min(n or #runnable, #runnable) do
    runnable[i].state = "running"
    out[i] = runnable[i].id
  end
  return out
end

function M:done(id, ok, release)
  local t = self.by_id[id]
  assert(t.state == "running")
  t.state = ok and "done" or "failed"
  if ok or release then
    for _, w in ipairs(t.dependents) do w.missing = w.missing - 1 end
    return nil
  end
  local skipped = {}
  local function skip(u)
    for _, w in ipairs(u.dependents) do
      if w.state == "pending" then
        w.state = "skipped"
        skipped[#skipped + 1] = w
        skip(w)
      end
    end
  end
  skip(t)
  table.sort(skipped, function(a, b) return a.index < b.index end)
  for i, w in ipairs(skipped) do skipped[i] = w.id end
  return skipped
end

function M:state(id)
  local t = self.by_id[id]
  if t.state == "pending" and t.missing == 0 then return "ready" end
  return t.state
end

return M
