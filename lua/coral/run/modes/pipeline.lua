--- Pipeline mode: a task starts once every task it depends on has succeeded or is running and
-- has printed something, and it reads their output on its stdin while they keep running (as a
-- shell pipeline does, with back-pressure: run/flow.lua). A task whose upstream fails is
-- cancelled.
local check = require "coral.check"
local flow = require "coral.run.flow"

local Pipeline = require("coral.run.modes").extend("dependency", {
  name = "pipeline",
  label = "PIPELINE",
  summary = "dependents start while their dependencies run, reading their output on stdin",
  -- a dependent reads its upstream's stream: a task up to date from an earlier run has none
  runs_every_task = true,
})

function Pipeline:init()
  self.queue, self.has_dependents = {}, {}
end

function Pipeline:check(plan)
  if not self.run.executor.streams then
    check.user_error("pipeline mode streams output between processes on this machine; " ..
      "the " .. (self.run.executor.name or "chosen") .. " executor cannot: choose another mode")
  end
  for _, t in ipairs(plan.tasks) do
    for _, d in ipairs(t.depends_on) do self.has_dependents[d] = true end
  end
  self.flow = flow.new(self.run, plan)
end

-- A pipeline wires each task's stdin to its upstreams' output as it starts: a task added
-- after its upstreams ran could not be given what they printed.
function Pipeline.check_added()
  check.user_error("pipeline mode cannot take tasks added while it runs (its streams are wired as tasks " ..
    "start); choose another mode")
end

-- Every upstream has succeeded, or runs and has printed something.
local function ready(run, st)
  for _, d in ipairs(st.task.depends_on) do
    local up = run.state[d]
    if not (up.status == "succeeded" or (up.status == "running" and up.has_output)) then return false end
  end
  return true
end

function Pipeline:pump(free)
  local run = self.run
  self.flow:apply_cuts()
  -- Tasks the graph released (their upstreams are done), then tasks whose upstreams stream.
  for _, id in ipairs(run.g:ready()) do
    local st = run.state[id]
    if st.release_later ~= nil then
      local ok = st.release_later
      st.release_later = nil
      run:release(st, ok, true)
    elseif st.status == "pending" and not st.queued then
      st.queued = true
      self.queue[#self.queue + 1] = st
    end
  end
  for _, t in ipairs(run.plan.tasks) do
    local st = run.state[t.id]
    if st.status == "pending" and not st.queued and #t.depends_on > 0 and ready(run, st) then
      st.queued = true
      self.queue[#self.queue + 1] = st
    end
  end
  while #self.queue > 0 and free > 0 do
    local st = table.remove(self.queue, 1)
    if st.status == "pending" then
      run:start(st)
      free = free - 1
    end
  end
end

function Pipeline:stdio(st, stdin)
  local on_stdout
  if self.has_dependents[st.task.id] then
    on_stdout = function(chunk) self:on_stream(st, chunk) end
  end
  if #st.task.depends_on > 0 then stdin = "pipe" end
  return stdin, on_stdout
end

function Pipeline:on_stream(st, chunk)
  self.flow:chunk(st.task.id, chunk)
  if not st.has_output then
    st.has_output = true
    self.run:pump()
  end
end

-- A task with dependents writes its stdout to a new file; a task with upstreams gets what they
-- printed so far, then what they print.
function Pipeline:started(st)
  if not st.handle then return end
  local id = st.task.id
  if self.has_dependents[id] then
    self.flow:source_started(id, self.run.records:task_path(id, "out", #st.attempts))
  end
  if #st.task.depends_on > 0 then self.flow:attach(id, st.handle) end
end

-- An upstream's files stay whole while a consumer may still read them (run/flow.lua).
function Pipeline:cut_output(st, cut)
  self.flow:cut_output(st.task.id, cut)
end

function Pipeline:finish()
  self.flow:apply_cuts(true)
end

function Pipeline:release(st, ok)
  self.flow:upstream_ended(st.task.id, ok)
  self.flow:apply_cuts()
  if self.run.g:state(st.task.id) == "pending" then
    -- It ended before the graph handed it out (a consumer that read what it needed and left
    -- while its upstream still runs): the graph hears of it once its upstreams are done.
    st.release_later = ok
    return true
  end
  return false
end

return Pipeline
