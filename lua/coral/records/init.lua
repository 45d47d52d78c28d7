--- What a run writes: its run dir under .coral/runs/<run-id>/ (task files, joblog, journal,
-- summary.json) and the project's coordination files (scratchpad.md, activity_tracker.md,
-- .coral/project_state.yaml). Every shared write goes through coral.coord's locked primitives,
-- by way of coral.records.coordq: a busy lock there never stops or freezes the run.
local json = require "coral.json"
local coord = require "coral.coord"
local coordq = require "coral.records.coordq"
local fsutil = require "coral.fsutil"
local names = require "coral.records.names"
local guard = require "coral.guard"
local uv = require "luv"
local yaml = require "coral.records.yaml"

local M = {}

local Records = {}
Records.__index = Records

local PRIVATE_DIR, PRIVATE_FILE = tonumber("700", 8), tonumber("600", 8)
local SHARED_FILE = tonumber("644", 8)

M.SCRATCHPAD_HEADER = "# Scratchpad\n\nShared working memory of the agents of this project. " ..
  "coral adds a section when a task starts; agents append with `coral note \"...\"`.\n"
M.ACTIVITY_HEADER = "# Activity Tracker\n\nOne entry per finished task attempt, written by coral.\n"
M.JOBLOG_HEADER = "task\tattempt\tstart\tduration\texit\tsignal\toutcome\n"

--- A new run id: sortable by time, unique within the project.
function M.new_run_id()
  local sec, usec = uv.gettimeofday()
  return string.format("%s-%06d-%04x", os.date("%Y%m%d-%H%M%S", sec), usec, uv.os_getpid() % 65536)
end

--- Paths of the coordination files of a project dir.
function M.paths(project_dir)
  local coral_dir = project_dir .. "/.coral"
  return {
    project = project_dir,
    coral = coral_dir,
    runs = coral_dir .. "/runs",
    state = coral_dir .. "/project_state.yaml",
    scratchpad = project_dir .. "/scratchpad.md",
    activity = project_dir .. "/activity_tracker.md",
  }
end

local function must(ok, err)
  if not ok then error(err, 0) end
  return ok, err
end

--- Run ids of a project, oldest first.
function M.run_ids(project_dir)
  local ids = {}
  local handle = uv.fs_scandir(M.paths(project_dir).runs)
  while handle do
    local name, kind = uv.fs_scandir_next(handle)
    if not name then break end
    if kind == "directory" then ids[#ids + 1] = name end
  end
  table.sort(ids)
  return ids
end

--- The run dir of run `id` of `project_dir` (default: its newest run), or of a run dir given
-- as a path (it has a journal). Returns the absolute path, or nil and why not.
function M.find_run(project_dir, id)
  project_dir = project_dir or "."
  if id and (id:find("/") or id == "." or id == "..") then
    local st = uv.fs_stat(id)
    if st and st.type == "directory" and uv.fs_stat(id .. "/journal.jsonl") then return fsutil.absolute(id) end
  end
  local ids = M.run_ids(project_dir)
  if #ids == 0 then return nil, "no runs in " .. fsutil.absolute(project_dir) .. "/.coral/runs" end
  id = id or ids[#ids]
  local dir = M.paths(fsutil.absolute(project_dir)).runs .. "/" .. id
  if not uv.fs_stat(dir) then return nil, "no run '" .. id .. "' in " .. fsutil.absolute(project_dir) end
  return dir
end

--- Opens the records of a new run (creating .coral/runs/<id>/, private) or of an existing one.
function M.open(project_dir, run_id)
  local self = setmetatable({}, Records)
  self.paths = M.paths(project_dir)
  self.id = run_id or M.new_run_id()
  self.dir = self.paths.runs .. "/" .. self.id
  must(fsutil.mkdirs(self.dir .. "/tasks", PRIVATE_DIR, self.paths.project))  -- no link below the project
  must(names.mark(self.dir))   -- a new run names its task dirs by names.path_name
  uv.fs_chmod(self.paths.coral, PRIVATE_DIR)
  uv.fs_chmod(self.paths.runs, PRIVATE_DIR)
  self.journal_path = self.dir .. "/journal.jsonl"
  self.joblog_path = self.dir .. "/joblog.tsv"
  self.summary_path = self.dir .. "/summary.json"
  return self
end

--- The directory of a task's files in run dir `run_dir`: tasks/<the id as a file name>
-- (coral.records.names, which also finds the dirs of runs of earlier coral versions).
M.task_dir = names.task_dir

--- Path of a task's file: kind "prompt" (prompt.md), "out"/"err" (attempt-N.out/.err),
-- "output" (the final text, output.md), "inputs" (inputs.json), or "dir" (the task's dir).
function Records:task_path(task_id, kind, attempt)
  -- Made once per task (several paths are asked for each attempt).
  self.task_dirs = self.task_dirs or {}
  local dir = self.task_dirs[task_id]
  if not dir then
    dir = M.task_dir(self.dir, task_id)
    -- tasks/ exists (open made it): one mkdir, no stat first; a resumed run finds it there
    local _, how = must(fsutil.mkdir(dir, PRIVATE_DIR))
    self.task_dirs[task_id] = dir
    -- made empty by this run: no attempt of the task has run yet to plant a link there
    if how == "new" then
      self.new_task_dirs = self.new_task_dirs or {}
      self.new_task_dirs[task_id] = true
    end
  end
  if kind == "dir" then return dir end
  if kind == "out" or kind == "err" then
    -- an executor that opens these following links: none may be planted there. Not looked at
    -- when the executor refuses a link in the open itself (`refuses_links`, set by the runner:
    -- the local executor), nor for the first attempt in a dir this run made (empty then, and
    -- the task's own process has not run yet): there an lstat would only see what a planter
    -- racing the open could still change after it.
    local path = string.format("%s/attempt-%d.%s", dir, attempt or 1, kind)
    if not (self.refuses_links or ((attempt or 1) == 1 and self.new_task_dirs and self.new_task_dirs[task_id])) then
      must(fsutil.own_file(path))
    end
    return path
  end
  if kind == "prompt" then return dir .. "/prompt.md" end
  if kind == "output" then return dir .. "/output.md" end
  if kind == "inputs" then return dir .. "/inputs.json" end
  return string.format("%s/attempt-%d.%s", dir, attempt or 1, kind)
end

--- Forgets the dir of a task that has ended for good: a plan of 100,000 tasks would otherwise
-- keep 100,000 paths for the run (12 MB). A later path of it (a `coral ctl` tail, a dependent's
-- condition reading its output) is made again, and its dir checked again by the mkdir.
function Records:forget_task_dir(task_id)
  if self.task_dirs then self.task_dirs[task_id] = nil end
  if self.new_task_dirs then self.new_task_dirs[task_id] = nil end
end

--- Makes the dir of a task that is next in line to start (Run:prepare_next), so that its start
-- does not wait for the mkdir. Its first attempt's files are then checked as a retry's are:
-- the dir may have waited a while. A failure is left for the task's start to report. Returns
-- true when the dir was made now.
function Records:prepare_task_dir(task_id)
  self.task_dirs = self.task_dirs or {}
  if self.task_dirs[task_id] then return false end
  local dir = M.task_dir(self.dir, task_id)
  if not fsutil.mkdir(dir, PRIVATE_DIR) then return false end
  self.task_dirs[task_id] = dir
  return true
end

-- The journal and the joblog belong to this run alone (the project's run lock keeps every other
-- coral out), so they stay open for the whole run and each record is one write(2) on an
-- O_APPEND descriptor: whole or not at all, in the kernel before coral acts on it, without the
-- open, lock and close of a shared file. A short write (a full disk) is cut back off.
local function append_private(self, key, path, text, header)
  local fd = self[key]
  if not fd then
    local err
    fd, err = fsutil.open(path, "a+", PRIVATE_FILE)   -- "+": its last byte is read below
    if not fd then error("append " .. path .. ": " .. err, 0) end
    self[key] = fd
    local size = uv.fs_fstat(fd).size
    if header and size == 0 then text = header .. text end
    -- A last line that a crash cut mid-write (no "\n") must not swallow this record: a resumed
    -- run's records start on a fresh line (the reader reports the cut one and skips it).
    if size > 0 and uv.fs_read(fd, 1, size - 1) ~= "\n" then text = "\n" .. text end
  end
  local ok, err, n = fsutil.write_all(fd, text, -1)
  if not ok then
    if n > 0 then
      local st = uv.fs_fstat(fd)
      if st then uv.fs_ftruncate(fd, st.size - n) end
    end
    error("append " .. path .. ": " .. tostring(err), 0)
  end
end

-- In a run (records.batch, set by the runner) the journal's and the joblog's lines wait in
-- memory and are written together, one write(2) each: before a process is started (its `spawn` record must be in the file before the
-- process exists: a coral killed after it leaves an attempt resume counts as in flight), at
-- most FLUSH_MS after the first of them, before the summary and the project state (made from
-- them: the runner flushes first), and when the run's records close. So a noop task
-- costs one journal write and one joblog row write, not four. A coral killed with lines
-- waiting loses the records of at most FLUSH_MS: attempts that ended then look in flight
-- to resume, which runs them again, as for a kill a moment earlier. The joblog goes first: a
-- journal `end` whose row was lost would leave an attempt without its row.
-- Written at once, with what waits before them: a `spawn` (above), a run's first and last
-- events (the final report and `coral status` read the file), and a live-control action (its
-- client is told it is done: it must survive a kill from then on).
local AT_ONCE = { spawn = true, run = true, done = true, stopping = true, control = true }

function Records:flush_records()
  local rows, lines = self.pending_joblog, self.pending_journal
  if rows and #rows > 0 then
    self.pending_joblog = {}
    append_private(self, "joblog_fd", self.joblog_path, table.concat(rows), M.JOBLOG_HEADER)
  end
  if lines and #lines > 0 then
    self.pending_journal = {}
    lines[#lines + 1] = ""   -- the last line's newline
    append_private(self, "journal_fd", self.journal_path, table.concat(lines, "\n"))
  end
end

--- Appends one event to the journal: a JSON line, whole or not at all, written before coral
-- acts on it (a `spawn` at once, with what waits before it; see flush_records). The event
-- gets its wall-clock time `t`.
function Records:event(name, fields)
  fields = fields or {}
  fields.event = name
  fields.t = fields.t or fsutil.now()
  local lines = self.pending_journal or {}
  self.pending_journal = lines
  lines[#lines + 1] = json.encode(fields)   -- the newlines come with the flush
  if AT_ONCE[name] or not self.batch or self.at_once then self:flush_records() else self:flush_soon() end
end

--- The line of event `name` up to its time (`{..., "t":`), for a record C writes itself
-- (coral.proc's standby, run/standby.lua), adding the time and the end.
function M.record_head(name, fields)
  fields.event = name
  local text = json.encode(fields)
  return text:sub(1, -2) .. (text == "{}" and "" or ",") .. '"t":'
end

--- The journal's descriptor for a record C writes itself: every line waiting is written first,
-- and from then on, until `at_once` is cleared, each event is written at once (C's line must
-- come after every line before it). nil when the journal is not open yet.
function Records:journal_for_c()
  self:flush_records()
  if not self.journal_fd then return nil end
  self.at_once = true
  return self.journal_fd
end

--- Appends a row to the joblog (one row per attempt). The task column is the id with its
-- backslashes and control bytes escaped (names.printable): a row stays one line whatever the id.
function Records:joblog(row)
  local line = table.concat({
    names.printable(row.task), row.attempt, string.format("%.3f", row.start), string.format("%.3f", row.duration),
    row.exit or "", row.signal or "", row.outcome,
  }, "\t") .. "\n"
  local rows = self.pending_joblog or {}
  self.pending_joblog = rows
  rows[#rows + 1] = line
  if self.batch then self:flush_soon() else self:flush_records() end
end

--- The queue of the run's writes to the coordination files (coral.records.coordq).
function Records:coord_queue()
  self.coordq = self.coordq or coordq.new(self.paths.project)
  return self.coordq
end

--- Writes what is pending and closes the run's files. Idempotent. What waits for a busy lock
-- of a coordination file gets at most `wait` seconds (default coordq.END_WAIT), then is
-- reported as not written.
function Records:close(wait)
  local queue = self:coord_queue()
  queue.ending = true   -- what is flushed now waits for finish, which reports on stderr
  local ok, err = pcall(function()
    self:flush_records()
    self:flush_shared()
    queue:finish(wait)
  end)
  if self.flush_timer then self.flush_timer:close(); self.flush_timer = nil end
  for _, key in ipairs { "journal_fd", "joblog_fd" } do
    if self[key] then uv.fs_close(self[key]); self[key] = nil end
  end
  if not ok then error(err, 0) end
end

-- Activity entries are collected and appended together at most FLUSH_MS later (and when the
-- run ends): one locked append for many tasks when tasks are short. The journal has every
-- attempt already; the tracker is its readable copy.
local FLUSH_MS = 100

local function minutes(seconds)
  if seconds < 60 then return string.format("%.1f seconds", seconds) end
  return string.format("%.1f minutes", seconds / 60)
end

local function activity_text(entry)
  local status
  if entry.outcome == "succeeded" then status = "✅ Succeeded"
  elseif entry.outcome == "skipped" then status = "⏭ Skipped: " .. (entry.reason or "")
  elseif entry.outcome == "up_to_date" then status = "✔ Up to date: " .. (entry.reason or "")
  else status = "❌ Failed: " .. (entry.reason or entry.outcome) end
  local lines = {
    string.format("\n### [%s] %s (%s)", fsutil.timestamp(entry.when, "%Y-%m-%d %H:%M"), entry.agent, entry.mode),
    "**Task**: " .. (entry.task ~= "" and entry.task or entry.id),
    "**Group**: " .. entry.group,
    "**Dependencies**: " .. (#entry.deps > 0 and table.concat(entry.deps, ", ") or "none"),
    "**Status**: " .. status,
  }
  if entry.attempt and (entry.attempt > 1 or entry.retrying) then
    lines[#lines + 1] = string.format("**Attempt**: %d of %d", entry.attempt, entry.attempts)
  end
  if entry.duration then lines[#lines + 1] = "**Duration**: " .. minutes(entry.duration) end
  return table.concat(lines, "\n") .. "\n"
end

-- A command's scratchpad section (Records:scratchpad_start).
local function section_text(task, when)
  return string.format("\n## [%s] %s (task %s)\n%s\n", fsutil.timestamp(when, "%Y-%m-%d %H:%M"),
                       task.agent, task.id, task.task ~= "" and task.task or "(no task text)")
end

-- What waits for the next flush of a shared file: texts, or what they are made from.
local TEXT_OF = { pending_activity = activity_text,
                  pending_scratchpad = function(x) return section_text(x.task, x.when) end }

function Records:flush_shared()
  local files = { pending_scratchpad = { self.paths.scratchpad, M.SCRATCHPAD_HEADER },
                  pending_activity = { self.paths.activity, M.ACTIVITY_HEADER } }
  for key, file in pairs(files) do
    local pending = self[key]
    if pending and #pending > 0 then
      self[key] = {}
      for i, x in ipairs(pending) do
        if type(x) == "table" then pending[i] = TEXT_OF[key](x) end
      end
      self:coord_queue():append(file[1], table.concat(pending),
        guard.coord_opts(self.paths.project, file[1], { header = file[2], mode = SHARED_FILE }), #pending)
    end
  end
end

-- The records and the shared entries waiting are written at most FLUSH_MS from now.
function Records:flush_soon()
  if not self.flush_timer then
    self.flush_timer = uv.new_timer()
    self.flush_timer:unref()
  end
  if not self.flush_timer:is_active() then
    self.flush_timer:start(FLUSH_MS, 0, function()
      self:flush_records()
      self:flush_shared()
    end)
  end
end

-- `item`: a text, or the table TEXT_OF[key] makes it from at the flush.
function Records:share(key, item)
  self[key] = self[key] or {}
  self[key][#self[key] + 1] = item
  self:flush_soon()
end

--- Who holds the project's run lock: written by the holder after taking it, read by a refused run.
-- Not fsynced: it says who is alive now, which a machine's crash ends anyway (its lock is the
-- fact; a reader takes an owner that is not running as stale). The rename still makes it whole.
function Records:write_owner()
  local owner = json.encode { pid = math.tointeger(uv.os_getpid()), run_id = self.id, since = fsutil.now() }
  must(fsutil.write_atomic(self.paths.coral .. "/run.owner", owner .. "\n", PRIVATE_FILE, true))
end

function M.read_owner(paths)
  local text = fsutil.read(paths.coral .. "/run.owner")
  return text and require("cjson.safe").decode(text) or nil
end

--- How the run was started (recipe, description, options), so `coral resume` can rebuild it.
function Records:write_invocation(invocation)
  must(fsutil.write_atomic(self.dir .. "/invocation.json", json.encode(invocation) .. "\n", PRIVATE_FILE))
end

function M.read_invocation(run_dir)
  local text = fsutil.read(run_dir .. "/invocation.json")
  return text and require("cjson.safe").decode(text) or nil
end

--- The newest run of `project_dir` that call `call` of script execution `execution` started
-- (its invocation says so: coral.run.script), or nil.
function M.find_script_run(project_dir, execution, call)
  local ids = M.run_ids(project_dir)
  for i = #ids, 1, -1 do
    local inv = M.read_invocation(M.paths(project_dir).runs .. "/" .. ids[i])
    if type(inv) == "table" and inv.execution == execution and inv.call == call then return ids[i] end
  end
  return nil
end

--- The plan the run executes (tasks, dependencies, estimates, phases, critical path), written
-- when the run starts so that views draw the plan of the run, not today's recipe.
function Records:write_plan(plan, more)
  must(fsutil.write_atomic(self.dir .. "/plan.json", function(write) plan:write_json(write, more) end,
                          PRIVATE_FILE))
end

--- The plan a run recorded (decoded plan.json), or nil.
function M.read_plan(run_dir)
  local text = fsutil.read(run_dir .. "/plan.json")
  local plan = text and require("cjson.safe").decode(text)
  if type(plan) ~= "table" or type(plan.tasks) ~= "table" then return nil end
  return plan
end

--- The summary a run wrote when it ended (decoded summary.json), or nil (still going, killed).
function M.read_summary(run_dir)
  local text = fsutil.read(run_dir .. "/summary.json")
  local summary = text and require("cjson.safe").decode(text)
  return type(summary) == "table" and summary or nil
end

--- The last sign of life of attempt `n` of a task: the latest of `since` and the last write to
-- its stdout and stderr files.
function M.last_write(run_dir, task_id, n, since)
  local t = since
  for _, kind in ipairs { "out", "err" } do
    local st = uv.fs_stat(string.format("%s/attempt-%d.%s", M.task_dir(run_dir, task_id), n, kind))
    if st then t = math.max(t, st.mtime.sec + st.mtime.nsec / 1e9) end
  end
  return t
end

function Records:write_summary(summary, each_result)
  -- `each_result(emit)`: the results, made one at a time, when summary.results holds only some
  -- (run/summary.lua's M.of)
  each_result = each_result or function(emit)
    for id, result in pairs(summary.results) do emit(result, id) end
  end
  local head = {}
  for k, v in pairs(summary) do if k ~= "results" then head[k] = v end end
  must(fsutil.write_atomic(self.summary_path, function(write)
    -- A collector step after each piece: without it the generational collector let 100 MB of
    -- pieces build up over the 100,000 results of a summary. (Not for plan.json: steps taken
    -- there, before the run switches to that collector, left it doing full collections for
    -- the whole run, 13 % of coral's CPU; perf, 30,000 tasks.)
    json.write(function(piece)
      write(piece)
      collectgarbage("step")
    end, head, "results", true, each_result)
  end, PRIVATE_FILE))
end

--- The scratchpad section coral adds when a task starts. An agent's section is written at once,
-- before the agent can add notes under it; a command's (`batch`) goes with the next flush.
function Records:scratchpad_start(task, when, batch)
  if batch then return self:share("pending_scratchpad", { task = task, when = when }) end
  self:flush_shared()   -- keep the sections in start order
  self:coord_queue():append(self.paths.scratchpad, section_text(task, when),
    guard.coord_opts(self.paths.project, self.paths.scratchpad, { header = M.SCRATCHPAD_HEADER, mode = SHARED_FILE }))
end

--- Appends a note from an agent (or `coral note`) to a scratchpad.
local function line_entry(text, who)
  return string.format("- [%s]%s %s\n", fsutil.timestamp(nil, "%Y-%m-%d %H:%M:%S"),
                       who and (" " .. who .. ":") or "", text)
end

function M.note(path, text, who)
  local project, p = guard.project_of(path)
  return coord.append(p, "\n" .. line_entry(text, who),
                      guard.coord_opts(project, p, { header = M.SCRATCHPAD_HEADER, mode = SHARED_FILE }))
end

--- Appends a progress line from an agent (or `coral log`) to an activity tracker.
function M.log(path, text, who)
  local project, p = guard.project_of(path)
  return coord.append(p, line_entry(text, who),
                      guard.coord_opts(project, p, { header = M.ACTIVITY_HEADER, mode = SHARED_FILE }))
end

--- The activity entry of a finished attempt (or of a skipped task): written with the next flush
-- (the text is made then, off the path from a task's end to the next start).
function Records:activity(entry)
  self:share("pending_activity", entry)
end

--- Reads the project state; returns the table (empty if there is none), or nil and an error
-- saying where the file broke.
function M.read_state(path)
  local text = fsutil.read(path)
  if not text then return {} end
  local state, err = yaml.decode(text)
  if not state then return nil, path .. ":" .. err:gsub("^line ", "") end
  return state
end

--- Read-modify-write of .coral/project_state.yaml under its lock: fn(state) changes the table.
-- A file broken by hand is kept aside as project_state.yaml.broken-<time> and started afresh,
-- and the problem is returned as a second value. While another process holds the file's lock,
-- the update waits in the coordination queue (fn is called when it is written).
function Records:update_state(fn)
  local warning
  self:coord_queue():update(self.paths.state, function(old)
    local state = {}
    -- The file as this process last wrote it (nobody else wrote it since: its text is the
    -- same to the byte) is the table that text was written from, not read again: a run
    -- rewrites the file every second or so, and reading tens of KB of YAML blocks the loop.
    local last = self.state_written
    self.state_written = nil   -- fn changes the table: it stands for no text until encoded
    if last and old == last.text then
      state = last.state
    elseif old and old ~= "" then
      local parsed, perr = yaml.decode(old)
      if parsed then
        state = parsed
      else
        -- a second break in the same second keeps its own copy (-2, -3, ...)
        local aside, aerr = fsutil.write_new(self.paths.state .. ".broken-" .. os.date("%Y%m%d-%H%M%S"), old,
                                             PRIVATE_FILE)
        warning = string.format("%s:%s (%s)", self.paths.state, perr:gsub("^line ", ""),
                                aside and ("kept aside as " .. aside) or ("not kept aside: " .. tostring(aerr)))
      end
    end
    fn(state)
    local text = yaml.encode(state, "coral project state: written by coral under a lock; edit with care")
    -- if the write fails the file keeps its old text, which then differs from this one
    self.state_written = { text = text, state = state }
    return text
  end, guard.coord_opts(self.paths.project, self.paths.state, { mode = PRIVATE_FILE }))
  return true, warning
end

M.Records = Records
return M
