--- Admission: whether a task the graph handed out may start now. The graph says a task is
-- ready; the run's gates say whether it starts: a counting limit (run/limits.lua), the budget
-- (run/budget.lua), an approval or a pause (live control). Each gate answers for one task:
--   gate:admit(st)           true (it may start), or "wait", why (it waits here, in order, and
--                            is asked again at every pump), or "park", state, why (it will not
--                            start in this run: its status becomes `state`; resume decides again)
--   gate:take(st)            optional: it starts now (a limit counts its units)
--   gate:give(st, a, result) optional: its attempt ended (the units come back)
-- A task waiting does not take a worker, and does not stop another ready task behind it from
-- starting (no head-of-line blocking): the run's pump asks the mode for more while workers
-- are free and the mode's tasks go to the waiting list.
local M = {}

--- Sets up a run's admission: no gates, nothing waiting.
function M.init(run)
  run.gates, run.held, run.parked = {}, {}, 0
end

--- Adds a gate (a table with admit and optionally take, give, name).
function M.add(run, gate)
  run.gates[#run.gates + 1] = gate
end

local function verdict(run, st)
  for _, gate in ipairs(run.gates) do
    local answer, state_or_why, why = gate:admit(st)
    if answer ~= true then return gate, answer, state_or_why, why end
  end
end

local function take(run, st)
  for _, gate in ipairs(run.gates) do
    if gate.take then gate:take(st) end
  end
  st.admitted = true
end

local function hold(run, st, gate, why)
  if st.held then
    st.held.gate, st.held.why = gate.name, why
    return
  end
  st.held = { gate = gate.name, why = why }
  run.held[#run.held + 1] = st
  if gate.held then gate:held(st, why) end
end

local function unhold(run, st)
  if not st.held then return end
  st.held = nil
  for i = #run.held, 1, -1 do
    if run.held[i] == st then table.remove(run.held, i) end
  end
end

--- Takes a waiting task off the waiting list: it will not start from there (live control
-- ends it another way: a cancel, a rejected approval).
M.unhold = unhold

-- It will not start in this run: its status becomes `state` (Run:park).
local function park(run, st, state, why)
  unhold(run, st)
  run.parked = run.parked + 1
  st.parked = true
  run:park(st, state, why)
end

--- Whether `st` may start now; when it may not, it waits (or is parked). `forced`: it starts
-- whatever the gates say (an attempt adopted on resume is already running): its units count.
function M.admit(run, st, forced)
  if not forced then
    local gate, how, state, why = verdict(run, st)
    if gate then
      if how == "park" then
        park(run, st, state, why)
      else
        hold(run, st, gate, state)
      end
      return false
    end
  end
  unhold(run, st)
  take(run, st)
  return true
end

--- Whether no gate would hold `st` if it were asked now (nothing is taken).
function M.open_for(run, st)
  return verdict(run, st) == nil
end

--- Starts the waiting tasks that may start now, in the order they came (the graph hands them
-- out highest priority first), while workers are free: `begin(st)` starts one.
function M.pump(run, begin)
  local i = 1
  while i <= #run.held and run.running < run.max_workers and not run.stopping do
    local st = run.held[i]
    local gate, how, state, why = verdict(run, st)
    if not gate then
      unhold(run, st)
      take(run, st)
      begin(st)
    elseif how == "park" then
      park(run, st, state, why)
    else
      st.held.gate, st.held.why = gate.name, state
      i = i + 1
    end
  end
end

--- An attempt of an admitted task ended: each gate takes back what it gave.
function M.ended(run, st, a, result)
  if not st.admitted then return end
  st.admitted = nil
  for _, gate in ipairs(run.gates) do
    if gate.give then gate:give(st, a, result) end
  end
end

--- The tasks handed out by the graph that are not running: waiting here, or parked.
function M.count(run)
  return #run.held + run.parked
end

--- The run stops: what waits here will not start (it is skipped as not reached).
function M.drop(run)
  for _, st in ipairs(run.held) do st.held = nil end
  run.held = {}
end

return M
