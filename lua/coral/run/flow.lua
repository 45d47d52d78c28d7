--- The streams of a pipeline (run/modes/pipeline.lua), with back-pressure. Each dependency of a
-- task is an edge from the upstream's stdout to the consumer's stdin. An edge holds at most
-- LIMIT bytes in coral's memory: while a started consumer has more than that queued, or is
-- behind, its upstream's stdout is not read (p:pause_stdout), so the upstream blocks in its
-- next write as it would in a shell pipeline; it is read again once the consumer has drained to
-- half of LIMIT. Memory stays flat however much flows.
--
-- Nothing is kept for a consumer that has not started yet (no worker free, another upstream
-- still silent): C writes an upstream's stdout file before it hands coral each chunk, so a
-- consumer that starts late, or starts again for a retry, reads what it missed from the
-- upstream's files (one per attempt), CHUNK bytes at a time as its stdin takes them, then
-- follows the live stream. Upstreams never wait for a consumer that has not started: a run
-- with fewer workers than tasks, or a consumer whose other upstream prints only at its end,
-- cannot deadlock. So those files must stay whole while a consumer may still read them: the
-- output cap (output_cap) is applied to them once every consumer has ended (cut_output).
local states = require "coral.records.states"
local uv = require "luv"

local M = {}

M.LIMIT = 1024 * 1024   -- bytes queued for one consumer's stdin before its upstreams pause
local CHUNK = 65536     -- bytes read from an upstream's file at a time (one read of the pipe)

local Flow = {}
Flow.__index = Flow

--- The flow of a run's plan: an edge for each dependency.
function M.new(run, plan)
  local self = setmetatable({ run = run, sources = {}, sinks = {}, cuts = {} }, Flow)
  for _, t in ipairs(plan.tasks) do
    local sink = { edges = {} }
    self.sinks[t.id] = sink
    for _, d in ipairs(t.depends_on) do
      local src = self.sources[d] or { produced = 0, segments = {}, edges = {} }
      self.sources[d] = src
      local e = { up = d, down = t.id, sent = 0 }
      src.edges[#src.edges + 1] = e
      sink.edges[#sink.edges + 1] = e
    end
  end
  return self
end

local function queued(handle)
  return handle.write_queue_size and handle:write_queue_size() or 0
end

-- The upstream pauses while one of its started consumers is behind (it reads from the file) or
-- holds more than LIMIT (half of it to resume, so it does not flap).
function Flow:update_pause(up)
  local src = self.sources[up]
  local handle = self.run.state[up].handle
  if not (handle and handle.pause_stdout) then return end
  local limit = src.paused and M.LIMIT // 2 or M.LIMIT
  local blocked = false
  for _, e in ipairs(src.edges) do
    if e.handle and (e.sent < src.produced or queued(e.handle) > limit) then blocked = true; break end
  end
  if blocked ~= (src.paused or false) then
    src.paused = blocked
    if blocked then handle:pause_stdout() else handle:resume_stdout() end
  end
end

-- The consumer's stdin is gone (it ended, or closed it): its edges take nothing more.
function Flow:detach(down)
  local sink = self.sinks[down]
  local ups = {}
  for _, e in ipairs(sink.edges) do
    if e.handle then e.handle = nil; ups[#ups + 1] = e.up end
  end
  sink.handle = nil
  for _, up in ipairs(ups) do self:update_pause(up) end
end

function Flow:cancel(down, why)
  local st = self.run.state[down]
  self:detach(down)
  if st.handle then
    st.cancelled = st.cancelled or why
    st.handle:cancel()
  end
end

-- Its stdin ends once every upstream has succeeded and all they printed has been handed over.
function Flow:maybe_close(down)
  local sink = self.sinks[down]
  if sink.closed or not sink.handle then return end
  for _, e in ipairs(sink.edges) do
    if self.run.state[e.up].status ~= "succeeded" or e.sent < self.sources[e.up].produced then return end
  end
  sink.closed = true
  sink.handle:close_stdin()
end

local function write(self, e, data)
  local sink = self.sinks[e.down]
  if e.handle:write(data, sink.on_written) then
    e.sent = e.sent + #data
    return true
  end
  self:detach(e.down)   -- EPIPE: it has ended, or closed its stdin
  return false
end

-- The segment (one attempt's file) that holds byte `offset` of the upstream's output.
local function segment_at(src, offset)
  for _, seg in ipairs(src.segments) do
    if offset >= seg.from and offset < seg.from + seg.size then return seg end
  end
end

-- A consumer behind its upstream reads the rest from the upstream's files while its stdin takes
-- it.
function Flow:feed(e)
  local src = self.sources[e.up]
  local fd, fd_path
  while e.handle and e.sent < src.produced and queued(e.handle) <= M.LIMIT do
    local seg = segment_at(src, e.sent)
    if not seg then break end
    local want = math.min(CHUNK, seg.from + seg.size - e.sent)
    if fd_path ~= seg.path then
      if fd then uv.fs_close(fd) end
      local err
      fd, err = uv.fs_open(seg.path, "r", 0)
      fd_path = seg.path
      if not fd then
        self:cancel(e.down, string.format("cannot read the output of upstream task '%s': %s", e.up, err))
        return
      end
    end
    local data, err = uv.fs_read(fd, want, e.sent - seg.from)
    if not data or #data < want then
      uv.fs_close(fd)
      self:cancel(e.down, string.format("cannot read the output of upstream task '%s': %s", e.up,
        err or (seg.path .. " is shorter than what the task printed")))
      return
    end
    if not write(self, e, data) then break end
  end
  if fd then uv.fs_close(fd) end
end

--- An attempt of a task with consumers started: its output goes to `path` from now on.
function Flow:source_started(up, path)
  local src = self.sources[up]
  src.segments[#src.segments + 1] = { path = path, from = src.produced, size = 0 }
  src.paused = false
end

--- A chunk of an upstream's stdout (already in its file): to each started consumer that has all
-- that came before it; one that is behind reads it from the file in its turn.
function Flow:chunk(up, data)
  local src = self.sources[up]
  local before = src.produced
  src.produced = before + #data
  local seg = src.segments[#src.segments]
  seg.size = seg.size + #data
  for _, e in ipairs(src.edges) do
    if e.handle then
      if e.sent == before then write(self, e, data) else self:feed(e) end
    end
  end
  self:update_pause(up)
end

-- Feeds consumer `down` what its upstreams have for it, reads or pauses them as their
-- consumers' room says, and ends its stdin once it has everything.
function Flow:refill(down)
  local sink = self.sinks[down]
  for _, e in ipairs(sink.edges) do
    if e.handle then self:feed(e) end
  end
  for _, e in ipairs(sink.edges) do self:update_pause(e.up) end
  self:maybe_close(down)
end

-- A write to the consumer is done: it may take more, and its upstreams may go on.
function Flow:drained(down, handle, err)
  local sink = self.sinks[down]
  if sink.handle ~= handle then return end   -- an earlier attempt's, or detached
  if err then return self:detach(down) end
  self:refill(down)
end

--- A consumer's process started (`handle` writes its stdin): it gets all its upstreams printed
-- so far, then what they print.
function Flow:attach(down, handle)
  local sink = self.sinks[down]
  sink.handle, sink.closed = handle, false
  sink.on_written = function(err) self:drained(down, handle, err) end
  for _, e in ipairs(sink.edges) do e.handle, e.sent = handle, 0 end
  self:refill(down)
end

--- An upstream ended for good: its consumers' stdin ends once they have all of it; if it
-- failed, they are cancelled.
function Flow:upstream_ended(up, ok)
  local src = self.sources[up]
  if not src then return end
  for _, e in ipairs(src.edges) do
    if ok then
      self:maybe_close(e.down)
    elseif self.sinks[e.down].handle then
      self:cancel(e.down, string.format("upstream task '%s' failed", up))
    end
  end
end

-- Whether every consumer of `up` has ended: none will read its files again.
function Flow:consumed(up)
  for _, e in ipairs(self.sources[up].edges) do
    if not states.ended(self.run.state[e.down].status) then return false end
  end
  return true
end

--- The output cap of an attempt of `up` (cut(), from run/attempt.lua): now, unless a consumer
-- may still read the file; then once every consumer has ended (or at the end of the run).
function Flow:cut_output(up, cut)
  if not self.sources[up] or self:consumed(up) then return cut() end
  self.cuts[#self.cuts + 1] = { up = up, cut = cut }
end

--- Applies the cuts whose consumers have all ended; all of them when `all` (the run is over).
function Flow:apply_cuts(all)
  local keep = {}
  for _, c in ipairs(self.cuts) do
    if all or self:consumed(c.up) then c.cut() else keep[#keep + 1] = c end
  end
  self.cuts = keep
end

return M
