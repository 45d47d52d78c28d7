--- Pipeline mode: a task starts once every task it depends on has succeeded or is running and
-- has printed something, and it reads their output on its stdin while they keep running (as a
-- shell pipeline does). A task whose upstream fails is cancelled.
local check = require "coral.check"

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
  st.streamed = st.streamed or {}
  st.streamed[#st.streamed + 1] = chunk
  for _, down in ipairs(st.downstream or {}) do
    if down.handle and down.handle.write then down.handle:write(chunk) end
  end
  if not st.has_output then
    st.has_output = true
    self.run:pump()
  end
end

-- Connects a started task to its upstreams: what they printed so far, then what they print.
function Pipeline:started(st)
  if not (st.handle and #st.task.depends_on > 0) then return end
  local open = 0
  for _, d in ipairs(st.task.depends_on) do
    local up = self.run.state[d]
    up.downstream = up.downstream or {}
    up.downstream[#up.downstream + 1] = st
    for _, chunk in ipairs(up.streamed or {}) do st.handle:write(chunk) end
    if up.status ~= "succeeded" then open = open + 1 end
  end
  st.open_upstreams = open
  if open == 0 then st.handle:close_stdin() end
end

-- An upstream ended: its dependents' stdin closes when their last upstream succeeded; an
-- upstream that failed cancels them.
local function close_downstream(up, ok)
  for _, down in ipairs(up.downstream or {}) do
    if down.handle then
      if ok then
        down.open_upstreams = down.open_upstreams - 1
        if down.open_upstreams == 0 then down.handle:close_stdin() end
      else
        down.cancelled = string.format("upstream task '%s' failed", up.task.id)
        down.handle:cancel()
      end
    end
  end
end

function Pipeline:release(st, ok)
  close_downstream(st, ok)
  if self.run.g:state(st.task.id) == "pending" then
    -- It ended before the graph handed it out (a consumer that read what it needed and left
    -- while its upstream still runs): the graph hears of it once its upstreams are done.
    st.release_later = ok
    return true
  end
  return false
end

return Pipeline
