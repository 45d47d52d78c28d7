--- A run's writes to the project's coordination files (scratchpad.md, activity_tracker.md,
-- .coral/project_state.yaml): they never stop or freeze the run. Those files are for people and
-- agents; the journal is coral's truth and is written before them, needing no shared lock.
--
-- A write that cannot get its file's lock within TRY_WAIT is queued, one queue per file, in
-- order, and a timer of the loop tries again with backoff (each try only tries the lock once,
-- so the loop never waits for it); the run is told which file is behind and who holds its
-- lock, and again when it has caught up. At the end of the run, what is still queued is
-- written with one bounded wait for all files (END_WAIT; Ctrl-C ends it), and what still is not
-- is reported by name on stderr: the run's status and exit code do not change because of it.
--
-- Only a busy lock is queued. Any other failure (a full disk, a file coral refuses to write
-- through) raises, as every write of a run's records does.
local coord = require "coral.coord"
local uv = require "luv"

local M = {}

--- Seconds a write waits for a busy lock before it is queued: agents hold these locks for
-- microseconds (one append), so a lock held longer than this is held by something stuck.
M.TRY_WAIT = 0.02
--- Retries of a queued file: the first after FIRST_RETRY_MS, doubling up to MAX_RETRY_MS.
M.FIRST_RETRY_MS, M.MAX_RETRY_MS = 25, 1000
--- Seconds the end of a run waits in all for the locks of what is still queued.
M.END_WAIT = 2

-- Codes of a lock another process holds: the entries wait. (EINTR: a signal cut a wait short.)
local BUSY = { ETIMEDOUT = true, EINTR = true }

local function now()
  return uv.hrtime() / 1e9
end

local function count(f)
  local n = 0
  for _, item in ipairs(f.items) do n = n + item.n end
  return n
end

local function entries(f, n)
  if f.kind == "update" then return n == 1 and "update" or "updates" end
  return n == 1 and "entry" or "entries"
end

-- "its lock is held by pid 1234", from coord's message "... (held by pid 1234)", which says
-- who holds the lock (docs/coord.md: the holder's pid and host, recorded in the lock file, or
-- the pid the kernel reports); the whole message when it says something else.
local function holder_of(err)
  local h = type(err) == "string" and err:match("%(([^()]*)%)%s*$")
  if h and h:find("^held") then return "its lock is " .. h end
  if h then return "its lock was busy (" .. h .. ")" end
  return tostring(err)
end

-- Writes every queued item of `f` under one lock, waiting up to `timeout` seconds for it:
-- appends as one record, updates as one read-modify-write applying each function in order.
-- true, or nil, err, code. An update function that raises drops the queue and raises.
local function write(f, timeout)
  f.opts.timeout = timeout
  local ok, err, code
  if f.kind == "append" then
    local texts = {}
    for i, item in ipairs(f.items) do texts[i] = item.text end
    ok, err, code = coord.append(f.path, table.concat(texts), f.opts)
  else
    local items = f.items
    local pok, a, b, c = pcall(coord.update, f.path, function(old)
      local text = old
      for _, item in ipairs(items) do
        local new = item.fn(text)
        if new ~= nil then text = new end
      end
      return text
    end, f.opts)
    if not pok then f.items = {}; error(a, 0) end
    ok, err, code = a, b, c
  end
  if ok == nil then return nil, err, code end
  f.items = {}
  return true
end

local Queue = {}
Queue.__index = Queue

--- A queue for the coordination files of `project_dir` (named relative to it in messages).
-- `queue.on_event(name, fields)`, when set, is told `coord_behind` and `coord_caught_up`
-- (fields: file, message, and entries, late for the latter); without it they go to stderr.
function M.new(project_dir)
  return setmetatable({ project = project_dir, files = {}, order = {} }, Queue)
end

function Queue:file(path, kind, opts)
  local f = self.files[path]
  if f then return f end
  local prefix = self.project .. "/"
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  f = { path = path, name = path:sub(1, #prefix) == prefix and path:sub(#prefix + 1) or path, kind = kind,
        opts = o, items = {}, delay = M.FIRST_RETRY_MS }
  self.files[path] = f
  self.order[#self.order + 1] = f
  return f
end

function Queue:tell(name, fields)
  if self.on_event and not self.ending then return self.on_event(name, fields) end
  io.stderr:write(name == "coord_behind" and "coral: warning: " or "coral: ", fields.message, "\n")
end

-- Queues `item` for `path` and writes it now when nothing of that file is waiting and its lock
-- is free within TRY_WAIT.
function Queue:add(path, kind, opts, item)
  local f = self:file(path, kind, opts)
  f.items[#f.items + 1] = item
  -- behind already: after what waits, when its timer finds the lock free; at the end: finish
  if #f.items > 1 or self.ending then return end
  local ok, err, code = write(f, M.TRY_WAIT)
  if ok then return end
  if not BUSY[code] then f.items = {}; error(err, 0) end
  self:behind(f, err)
end

--- Appends `text` (`n` entries, default 1) to `path` as coord.append(path, text, opts) does,
-- now or, if its lock is busy, later and in order.
function Queue:append(path, text, opts, n)
  self:add(path, "append", opts, { text = text, n = n or 1 })
end

--- coord.update(path, fn, opts), now or, if its lock is busy, later and in order (fn is then
-- called later, on the file as it is then). true if it was written now, false if it waits.
function Queue:update(path, fn, opts)
  self:add(path, "update", opts, { fn = fn, n = 1 })
  return #self.files[path].items == 0
end

--- Whether anything waits for a lock.
function Queue:pending()
  for _, f in ipairs(self.order) do
    if #f.items > 0 then return true end
  end
  return false
end

function Queue:behind(f, err)
  f.holder = holder_of(err)
  if not f.since then
    f.since = now()
    self:tell("coord_behind", { file = f.name, message = string.format(
      "%s is behind: %s; its entries wait and are written when the lock is free", f.name, f.holder) })
  end
  if not f.timer then
    f.timer = uv.new_timer()
    f.timer:unref()   -- it never keeps coral alive: the end of the run writes what is left
  end
  f.timer:start(f.delay, 0, function() self:on_retry(f) end)
  f.delay = math.min(f.delay * 2, M.MAX_RETRY_MS)
end

function Queue:caught_up(f, n)
  local late = now() - f.since
  f.since, f.holder, f.delay = nil, nil, M.FIRST_RETRY_MS
  self:tell("coord_caught_up", { file = f.name, entries = n, late = math.floor(late * 10 + 0.5) / 10,
    message = string.format("%s caught up: %d %s written (%.1f s late)", f.name, n, entries(f, n), late) })
end

--- The end of the run: stops the retries and writes what is queued, waiting at most `wait`
-- seconds (default END_WAIT) in all for the locks; Ctrl-C (the host's interrupt) ends the wait.
-- What is still not written is reported on stderr, file by file, and dropped. A failure that
-- is not a busy lock is raised after the report. Idempotent.
function Queue:finish(wait)
  self.ending = true
  local deadline = now() + (wait or M.END_WAIT)
  local failure, stopped
  -- One pcall around all of it: the interrupt is raised at whatever instruction runs next.
  local ok, err = pcall(function()
    for _, f in ipairs(self.order) do
      if f.timer then f.timer:close(); f.timer = nil end
      if #f.items > 0 then
        local n = count(f)
        local wok, werr, code = write(f, math.max(0, deadline - now()))
        if wok then
          if f.since then self:caught_up(f, n) end
        elseif BUSY[code] then
          f.holder = holder_of(werr)
        else
          f.error, failure = werr, failure or werr
        end
      end
    end
  end)
  if not ok then
    if tostring(err):find("interrupted by SIG", 1, true) then stopped = tostring(err) else failure = failure or err end
  end
  if stopped then
    -- The host also keeps the interruption for the next uv.run (to wake a waiting loop): it
    -- has ended the wait, which is all it may do to a run that has ended.
    local rok, rerr = pcall(uv.run, "nowait")
    if not rok and not tostring(rerr):find("interrupted by SIG", 1, true) then failure = failure or rerr end
    -- the files not reached: one try each, without waiting, which also learns who holds them
    for _, f in ipairs(self.order) do
      if #f.items > 0 and not f.holder and not f.error then
        local n = count(f)
        local pok, wok, werr = pcall(write, f, 0)
        if pok and wok then
          if f.since then self:caught_up(f, n) end
        elseif pok then
          f.holder = holder_of(werr)
        end
      end
    end
  end
  for _, f in ipairs(self.order) do
    if f.timer then f.timer:close(); f.timer = nil end
    if #f.items > 0 then
      local n = count(f)
      local why = f.error or f.holder or (stopped and ("the wait was " .. stopped)) or "its lock is busy"
      io.stderr:write(string.format("coral: warning: %s: %d %s not written: %s\n", f.name, n, entries(f, n), why))
      f.items, f.since = {}, nil
    end
  end
  if failure then error(failure, 0) end
end

-- A queued file's timer: one try of the lock, never a wait.
function Queue:on_retry(f)
  if self.ending or #f.items == 0 then return end
  local n = count(f)
  local ok, err, code = write(f, 0)
  if ok then return self:caught_up(f, n) end
  if not BUSY[code] then f.items = {}; error(err, 0) end
  self:behind(f, err)
end

return M
