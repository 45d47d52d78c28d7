--- A run as a timeline: every attempt with its start, end and outcome, read back from the run's
-- journal (so it works for a finished, a failed, a running and a killed run), assigned to worker
-- lanes, with the measured critical path. The HTML report (coral.report) and
-- `coral status RUN --gantt` (text below) both draw this model.
local fsutil = require "coral.fsutil"
local journal = require "coral.records.journal"
local records = require "coral.records"
local summary_mod = require "coral.run.summary"
local uv = require "luv"

local M = {}

-- Two attempts closer than this (seconds) count as back to back on one worker: journal times
-- carry microseconds (0.1 ms in journals written before coral.jsonw) and an attempt without a
-- start event is placed from its end and duration.
local LANE_SLACK = 0.005

local function is_live(run_dir, id)
  local project = run_dir:match("^(.*)/%.coral/runs/[^/]+$")
  if not project then return false end
  local owner = records.read_owner(records.paths(project))
  if not (owner and owner.run_id == id and math.type(owner.pid)) then return false end
  if uv.kill(owner.pid, 0) ~= 0 then return false end
  -- A coral killed but not yet reaped (a container's init that reaps late, or none) is a zombie,
  -- which kill(pid, 0) still finds: its state in /proc says so. The state follows the command
  -- name's ")", the last one (a name may hold one).
  local stat = fsutil.read(string.format("/proc/%d/stat", math.tointeger(owner.pid) or -1))
  local state = stat and stat:match(".*%) (%a)")
  return state ~= "Z" and state ~= "X"
end

-- Greedy lanes: attempts by start time, each on the first worker slot free at its start.
local function assign_lanes(attempts)
  local sorted, in_order = {}, true
  for i, a in ipairs(attempts) do
    sorted[i] = a; a.seq = i
    if i > 1 and a.start < attempts[i - 1].start then in_order = false end
  end
  -- (attempts begin in journal order, so mostly in start order already: then no sort)
  if not in_order then
    table.sort(sorted, function(a, b)
      if a.start ~= b.start then return a.start < b.start end
      return a.seq < b.seq
    end)
  end
  local free_at = {}
  for _, a in ipairs(sorted) do
    local lane
    for i, f in ipairs(free_at) do
      if f <= a.start + LANE_SLACK then lane = i; break end
    end
    lane = lane or #free_at + 1
    free_at[lane] = a.finish
    a.lane = lane
  end
  return #free_at
end

-- The plan run dir `run_dir` recorded, decoded again only when plan.json was replaced (a task
-- added while the run goes on): `cache` is the one given to load().
local function cached_plan(run_dir, cache)
  local st = uv.fs_stat(run_dir .. "/plan.json")
  local key = st and string.format("%d:%d:%d.%d", st.ino, st.size, st.mtime.sec, st.mtime.nsec)
  if not key or key ~= cache.plan_key then
    cache.plan, cache.plan_key = records.read_plan(run_dir), key
  end
  return cache.plan
end

--- Loads run dir `run_dir` as a timeline: the journal replayed (coral.records.journal), with
-- the plan the run recorded, worker lanes, the measured critical path and the run's figures.
-- opts.live: the run is going on in this process; opts.now: the time to draw running
-- attempts up to (default: now); opts.cache: a table kept from one load of the run to the
-- next (the live report's), so that only the journal's new lines are decoded and the plan
-- only when it changed (what comes from it is shared between loads: not to be changed).
---@return table run {id, dir, status, started, ended, tasks, order, attempts, lanes, critical, ...}
function M.load(run_dir, opts)
  opts = opts or {}
  local id = run_dir:match("([^/]+)/*$")
  local cache = opts.cache
  if cache then cache.journal = cache.journal or {} end
  local run = cache and journal.replay(journal.read_new(run_dir, cache.journal)) or journal.load(run_dir)
  run.id, run.dir = id, run_dir
  run.summary = records.read_summary(run_dir)
  run.plan_name, run.final_status = run.plan, run.status
  run.phases = {}
  -- The plan the run recorded: every task (those that never started too), in plan order.
  local plan
  if cache then plan = cached_plan(run_dir, cache) else plan = records.read_plan(run_dir) end
  if plan then
    run.has_plan = true
    run.plan_name = plan.name or run.plan_name
    local order, in_plan = {}, {}
    for _, pt in ipairs(plan.tasks) do
      in_plan[pt.id] = true
      local t = run.tasks[pt.id]
      if not t then
        t = { id = pt.id, agent = pt.agent or pt.id, status = "pending", attempts = {} }
        run.tasks[pt.id] = t
      end
      t.text, t.phase, t.recorded = pt.task or "", pt.phase, pt
      t.depends_on = type(pt.depends_on) == "table" and pt.depends_on or {}
      order[#order + 1] = pt.id
    end
    for _, tid in ipairs(run.order) do   -- a task the plan does not know (it changed)
      if not in_plan[tid] then order[#order + 1] = tid end
    end
    run.order = order
    if type(plan.phases) == "table" then run.phases = plan.phases end
  end
  for _, tid in ipairs(run.order) do
    local t = run.tasks[tid]
    t.text, t.depends_on = t.text or "", t.depends_on or {}
  end

  -- Live, finished or killed: attempts still open run on (live) or died with the run (killed).
  run.live = opts.live
  if run.live == nil then run.live = not run.ended and is_live(run_dir, id) end
  local now = opts.now or fsutil.now()
  if run.ended then
    run.status = run.final_status or "succeeded"
  elseif run.live then
    run.status = "running"
  else
    run.status = "killed"
  end
  local last_t = run.last_event
  for _, a in ipairs(run.attempts) do
    if a.open then
      local t = run.tasks[a.task]
      if run.live then
        a.outcome, a.finish, a.running = "running", now, true
        a.duration = a.finish - a.start
        t.finish = math.max(t.finish or 0, a.finish)
      else
        -- it died with coral: at its last sign of life
        journal.interrupt(run, a, records.last_write(run_dir, a.task, a.n, run.ended or last_t or a.start))
      end
    end
  end
  if not run.live then
    for _, tid in ipairs(run.order) do
      local t = run.tasks[tid]
      -- waiting out a backoff when coral stopped: that attempt failed
      if t.status == "retrying" then t.status = "failed" end
    end
  end
  run.ended_at = run.ended or (run.live and now) or last_t or now
  run.started = run.started or (run.attempts[1] and run.attempts[1].start) or run.ended_at

  run.lanes = assign_lanes(run.attempts)
  if run.has_plan then
    local function span(tid)
      local t = run.tasks[tid]
      if t and t.first_start and t.finish then return t.first_start, t.finish end
    end
    local any_ran = false
    for _, tid in ipairs(run.order) do
      if span(tid) then any_ran = true; break end
    end
    local tasks = {}
    for _, tid in ipairs(run.order) do
      local deps = {}
      for _, d in ipairs(run.tasks[tid].depends_on) do if run.tasks[d] then deps[#deps + 1] = d end end
      tasks[#tasks + 1] = { id = tid, depends_on = deps }
    end
    if any_ran then
      run.critical, run.critical_seconds = summary_mod.critical_path(tasks, span)
    else   -- nothing ran yet (the live report's first write): no path, and no graph to build
      run.critical, run.critical_seconds = {}, 0
    end
    -- a path of tasks that took no time says nothing
    if run.critical_seconds <= 0 then run.critical = {} end
  else
    run.critical, run.critical_seconds = {}, 0
  end
  run.on_critical = {}
  for i, tid in ipairs(run.critical) do run.on_critical[tid] = i end

  -- Figures: from summary.json when the run finished, else measured from the journal.
  local busy = 0
  for _, a in ipairs(run.attempts) do busy = busy + (a.duration or 0) end
  local counts = { succeeded = 0, failed = 0, skipped = 0, running = 0, pending = 0, interrupted = 0, up_to_date = 0 }
  for _, tid in ipairs(run.order) do
    local st = run.tasks[tid].status
    if st == "succeeded" then counts.succeeded = counts.succeeded + 1
    elseif st == "failed" then counts.failed = counts.failed + 1
    elseif st == "interrupted" then counts.interrupted = counts.interrupted + 1
    elseif st == "skipped" then counts.skipped = counts.skipped + 1
    elseif st == "up_to_date" then counts.up_to_date = counts.up_to_date + 1
    elseif st == "running" or st == "retrying" then counts.running = counts.running + 1
    else counts.pending = counts.pending + 1 end
  end
  local s = run.summary
  local wall = s and s.total_time_seconds or (run.ended_at - run.started)
  local max_workers = run.max_workers or (s and math.tointeger(s.max_workers))
  run.figures = {
    tasks = #run.order, succeeded = counts.succeeded, failed = counts.failed, interrupted = counts.interrupted,
    skipped = counts.skipped, running = counts.running, pending = counts.pending, up_to_date = counts.up_to_date,
    attempts = #run.attempts, wall = wall, sequential = busy,
    speedup = wall > 0 and busy / wall or 0, saved = busy - wall,
    max_workers = max_workers, lanes = run.lanes,
    utilisation = (wall > 0 and (max_workers or 0) > 0) and busy / (wall * max_workers) * 100 or nil,
    critical = run.critical_seconds, cost = s and s.total_cost_usd,
  }
  return run
end

-- {{{ the timeline as text

local OUTCOME_CHAR = {
  succeeded = "█", failed = "▓", timeout = "▒", ["idle-timeout"] = "▒", ["rate-limited"] = "▒",
  cancelled = "░", interrupted = "▚", running = "▶",
}
local OUTCOME_COLOR = {
  succeeded = "32", failed = "31", timeout = "33", ["idle-timeout"] = "33", ["rate-limited"] = "35",
  cancelled = "90", interrupted = "35", running = "36",
}
M.OUTCOMES = { "succeeded", "failed", "timeout", "idle-timeout", "rate-limited", "cancelled", "interrupted", "running" }

local fmt_duration   -- coral.view.progress's, required on first use (the report calls it per attempt)
local function fmt_seconds(s)
  fmt_duration = fmt_duration or require("coral.view.progress").fmt_duration
  return fmt_duration(s)
end
M.fmt_seconds = fmt_seconds

local function pad(s, n)
  local len = utf8.len(s) or #s
  if len > n then
    local cut = utf8.offset(s, n) or n
    return s:sub(1, cut - 1) .. "…"
  end
  return s .. string.rep(" ", n - len)
end

--- The timeline drawn with Unicode blocks: a row per task (in order of first start), one block
-- run per attempt, a character per outcome; `*` marks the critical path. opts: width (columns,
-- default $COLUMNS or 100), color (ANSI colours).
function M.text(run, opts)
  opts = opts or {}
  local width = opts.width or tonumber(os.getenv("COLUMNS") or "") or 100
  local label_w = 0
  for _, tid in ipairs(run.order) do label_w = math.max(label_w, utf8.len(tid) or #tid) end
  label_w = math.min(math.max(label_w, 8), 28)
  local right = 22
  local cols = math.max(20, width - label_w - 4 - right)
  local t0 = run.started
  local span = math.max(run.ended_at - t0, 1e-3)
  local function col(t) return (t - t0) / span * cols end
  local function paint(s, code)
    if opts.color and code then return "\27[" .. code .. "m" .. s .. "\27[0m" end
    return s
  end

  local rows = {}
  for _, tid in ipairs(run.order) do rows[#rows + 1] = run.tasks[tid] end
  table.sort(rows, function(a, b)
    local sa, sb = a.first_start or math.huge, b.first_start or math.huge
    if sa ~= sb then return sa < sb end
    return a.id < b.id
  end)
  local out = {}
  out[#out + 1] = string.format("run %s  %s%s", run.id, run.status, run.plan_name and ("  plan " .. run.plan_name) or "")
  out[#out + 1] = string.format("  wall %s, %d attempts on %d worker%s%s", fmt_seconds(run.figures.wall), #run.attempts,
    run.lanes, run.lanes == 1 and "" or "s",
    run.figures.sequential > 0 and string.format(", speedup %.2fx", run.figures.speedup) or "")
  -- Time axis: a tick label every ~12 columns.
  local axis = {}
  local ticks = math.max(1, cols // 12)
  local lastc = -1
  for i = 0, ticks do
    local c = math.floor(i * cols / ticks)
    local label = fmt_seconds(i * span / ticks)
    if c > lastc and c + #label <= cols + 8 then
      while #axis < c do axis[#axis + 1] = " " end
      for ch in label:gmatch(".") do axis[#axis + 1] = ch end
      lastc = #axis
    end
  end
  out[#out + 1] = string.rep(" ", label_w + 3) .. table.concat(axis)
  for _, t in ipairs(rows) do
    local cells = {}
    for i = 1, cols do cells[i] = " " end
    for _, a in ipairs(t.attempts) do
      local c1 = math.floor(col(a.start)) + 1
      local c2 = math.max(c1, math.floor(col(a.finish) + 0.5))
      c1, c2 = math.max(1, math.min(c1, cols)), math.max(1, math.min(c2, cols))
      local ch = OUTCOME_CHAR[a.outcome] or "▓"
      for i = c1, c2 do cells[i] = paint(ch, OUTCOME_COLOR[a.outcome]) end
      if a.n > 1 and c1 > 1 and cells[c1 - 1] == " " then cells[c1 - 1] = "·" end
    end
    local last = t.attempts[#t.attempts]
    local note = t.status
    if #t.attempts > 1 then note = note .. " ×" .. #t.attempts end
    if last and last.duration then note = note .. " " .. fmt_seconds(t.finish and t.first_start and (t.finish - t.first_start) or last.duration) end
    local mark = run.on_critical[t.id] and "*" or " "
    out[#out + 1] = string.format("%s %s │%s│ %s", mark, pad(t.id, label_w), table.concat(cells), note)
  end
  local legend = {}
  for _, o in ipairs { "succeeded", "failed", "timeout", "cancelled", "interrupted", "running" } do
    legend[#legend + 1] = paint(OUTCOME_CHAR[o], OUTCOME_COLOR[o]) .. " " .. o
  end
  out[#out + 1] = "  " .. table.concat(legend, "  ") .. "  · retry"
  if #run.critical > 0 then
    out[#out + 1] = string.format("  * critical path: %s (%s)", table.concat(run.critical, " → "),
                                  fmt_seconds(run.critical_seconds))
  end
  return table.concat(out, "\n") .. "\n"
end

--- `coral status RUN --gantt`: the timeline of run dir `run_dir` as text for the terminal.
function M.gantt(run_dir)
  local host = require "coral.host"
  local color = host.isatty(1) and (os.getenv("NO_COLOR") or "") == ""
  return M.text(M.load(run_dir), { color = color })
end

-- }}}

return M
