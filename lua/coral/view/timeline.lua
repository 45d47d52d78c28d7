--- A run as a timeline: every attempt with its start, end and outcome, read back from the run's
-- journal (so it works for a finished, a failed, a running and a killed run), assigned to worker
-- lanes, with the measured critical path. The HTML report (coral.report) and
-- `coral status RUN --gantt` (text below) both draw this model.
local cjson = require "cjson.safe"
local fsutil = require "coral.fsutil"
local records = require "coral.records"
local status_mod = require "coral.view.status"
local uv = require "luv"

local M = {}

-- Two attempts closer than this (seconds) count as back to back on one worker: journal times
-- carry 0.1 ms and an attempt without a start event is placed from its end and duration.
local LANE_SLACK = 0.005

--- The directory of a task's files, as records.lua names it.
function M.task_dir(run_dir, task_id)
  return run_dir .. "/tasks/" .. task_id:gsub("[^%w%-_.]", "_")
end

local function median(list)
  if #list == 0 then return nil end
  table.sort(list)
  local mid = (#list + 1) // 2
  if #list % 2 == 1 then return list[mid] end
  return (list[mid] + list[mid + 1]) / 2
end
M.median = median

-- JSON numbers come back as floats (1.0): attempt numbers, exit codes and counts are integers.
local function int(v)
  return type(v) == "number" and math.tointeger(v) or v
end

local function read_json(path)
  local text = fsutil.read(path)
  if not text then return nil end
  local v = cjson.decode(text)
  return type(v) == "table" and v or nil
end

--- The plan of a run: plan.json (written at the start of a run that had a live report), else
-- rebuilt from invocation.json through the recipe library, else nil.
local function load_plan(run_dir)
  local p = read_json(run_dir .. "/plan.json")
  if p and type(p.tasks) == "table" then return p end
  local inv = read_json(run_dir .. "/invocation.json")
  if not (inv and inv.recipe) then return nil end
  local project = run_dir:match("^(.*)/%.coral/runs/[^/]+$") or "."
  local ok, plan = pcall(function()
    local args = inv.args or {}
    local description = args[1]
    if description and description:sub(1, 1) == "-" then description = nil end
    return require("coral.recipes").plan(inv.recipe, description or "(no description)", 1,
                                         { project_dir = project })
  end)
  if not ok then return nil end
  return cjson.decode(plan:to_json())
end

-- When did a killed run's last attempt stop? At the latest of the last journal event and the
-- last write to the attempt's output files.
local function last_sign_of_life(run_dir, a, fallback)
  local t = fallback
  for _, kind in ipairs { "out", "err" } do
    local st = uv.fs_stat(string.format("%s/attempt-%d.%s", M.task_dir(run_dir, a.task), a.n, kind))
    if st then t = math.max(t, st.mtime.sec + st.mtime.nsec / 1e9) end
  end
  return t
end

local function is_live(run_dir, id)
  local project = run_dir:match("^(.*)/%.coral/runs/[^/]+$")
  if not project then return false end
  local owner = records.read_owner(records.paths(project))
  if not (owner and owner.run_id == id and math.type(owner.pid)) then return false end
  return uv.kill(owner.pid, 0) == 0
end

-- Greedy lanes: attempts by start time, each on the first worker slot free at its start.
local function assign_lanes(attempts)
  local sorted = { table.unpack(attempts) }
  table.sort(sorted, function(a, b)
    if a.start ~= b.start then return a.start < b.start end
    return a.seq < b.seq
  end)
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

-- The measured critical path: the longest chain, along dependencies, of the tasks' measured
-- spans (first start to end, retries and backoff included), as the runner's summary counts it.
local function critical_path(run)
  local best, via = {}, {}
  local visiting = {}
  local function length(id)
    if best[id] then return best[id] end
    if visiting[id] then return 0 end   -- a cycle cannot be in a validated plan; be safe
    visiting[id] = true
    local t = run.tasks[id]
    local own = (t.first_start and t.finish) and (t.finish - t.first_start) or 0
    local m, from = 0, nil
    for _, d in ipairs(t.depends_on or {}) do
      if run.tasks[d] then
        local l = length(d)
        if l > m then m, from = l, d end
      end
    end
    visiting[id] = nil
    best[id], via[id] = own + m, from
    return best[id]
  end
  local top, top_id = 0, nil
  for _, id in ipairs(run.order) do
    local l = length(id)
    if l > top then top, top_id = l, id end
  end
  local path = {}
  local id = top_id
  while id do
    table.insert(path, 1, id)
    id = via[id]
  end
  return path, top
end

--- Loads run dir `run_dir` as a timeline. opts.live: the run is going on in this process;
-- opts.now: the time to draw running attempts up to (default: now).
---@return table run {id, dir, status, started, ended, tasks, order, attempts, lanes, critical, ...}
function M.load(run_dir, opts)
  opts = opts or {}
  local id = run_dir:match("([^/]+)/*$")
  local run = {
    id = id, dir = run_dir, tasks = {}, order = {}, attempts = {}, retries = {}, phases = {},
    summary = read_json(run_dir .. "/summary.json"), invocation = read_json(run_dir .. "/invocation.json"),
  }
  local plan = load_plan(run_dir)
  local function task(tid, agent)
    local t = run.tasks[tid]
    if not t then
      t = { id = tid, agent = agent or tid, text = "", depends_on = {}, attempts = {}, status = "pending" }
      run.tasks[tid] = t
      run.order[#run.order + 1] = tid
    end
    if agent and t.agent == tid then t.agent = agent end
    return t
  end
  if plan then
    run.has_plan = true
    run.plan_name = plan.name
    for _, pt in ipairs(plan.tasks) do
      local t = task(pt.id, pt.agent)
      t.text, t.phase = pt.task or "", pt.phase
      t.depends_on = type(pt.depends_on) == "table" and pt.depends_on or {}
    end
    if type(plan.phases) == "table" then run.phases = plan.phases end
  end

  local events = status_mod.journal(run_dir)
  local open = {}     -- "task\0attempt" -> attempt still running
  local seq, last_t = 0, nil
  for _, e in ipairs(events) do
    e.attempt, e.exit, e.signal, e.pid, e.max_workers = int(e.attempt), int(e.exit), int(e.signal), int(e.pid), int(e.max_workers)
    last_t = math.max(last_t or e.t or 0, e.t or 0)
    if e.event == "run" then
      run.started = run.started or e.t
      run.plan_name = run.plan_name or e.plan
      run.project, run.mode, run.max_workers = e.project or run.project, e.mode, e.max_workers
      run.sessions = (run.sessions or 0) + 1
    elseif e.event == "done" then
      run.ended, run.final_status = e.t, e.status
    elseif e.event == "stopping" then
      run.stopping = e.reason
    elseif e.task then
      local t = task(e.task, e.agent)
      local key = e.task .. "\0" .. tostring(e.attempt)
      if e.event == "start" then
        seq = seq + 1
        local a = { task = e.task, agent = t.agent, n = e.attempt or (#t.attempts + 1), start = e.t, pid = e.pid, seq = seq }
        open[key] = a
        t.attempts[#t.attempts + 1] = a
        run.attempts[#run.attempts + 1] = a
        t.status = "running"
        t.first_start = t.first_start or e.t
      elseif e.event == "end" then
        local a = open[key]
        open[key] = nil
        if not a then   -- no start event (a built-in driver): place it from its end
          seq = seq + 1
          a = { task = e.task, agent = t.agent, n = e.attempt or (#t.attempts + 1), start = e.t - (e.duration or 0), seq = seq }
          t.attempts[#t.attempts + 1] = a
          run.attempts[#run.attempts + 1] = a
          t.first_start = t.first_start or a.start
        end
        a.finish, a.outcome, a.exit, a.signal, a.error = e.t, e.outcome or "failed", e.exit, e.signal, e.error
        a.duration = e.duration or (a.finish - a.start)
        t.finish = e.t
        t.status = a.outcome == "success" and "completed" or "failed"
        t.error = a.outcome ~= "success" and (a.error or a.outcome) or nil
      elseif e.event == "retry" then
        t.status = "retrying"
        run.retries[#run.retries + 1] = { task = e.task, attempt = e.attempt, delay = e.delay, reason = e.reason }
      elseif e.event == "skip" then
        t.status, t.error = "skipped", e.reason
      end
    end
  end
  run.last_event = last_t

  -- Live, finished or killed: attempts still open run on (live) or died with the run (killed).
  run.live = opts.live
  if run.live == nil then run.live = not run.ended and is_live(run_dir, id) end
  local now = opts.now or fsutil.now()
  if run.ended then
    run.status = run.final_status or "completed"
  elseif run.live then
    run.status = "running"
  else
    run.status = "killed"
  end
  for _, a in pairs(open) do
    local t = run.tasks[a.task]
    if run.live then
      a.outcome, a.finish, a.running = "running", now, true
    else
      a.outcome = "interrupted"
      a.finish = math.max(a.start, last_sign_of_life(run_dir, a, run.ended or last_t or a.start))
      t.status = "interrupted"
    end
    a.duration = a.finish - a.start
    t.finish = math.max(t.finish or 0, a.finish)
  end
  if not run.live then
    for _, tid in ipairs(run.order) do
      local t = run.tasks[tid]
      if t.status == "pending" and (run.ended or run.status == "killed") then t.status = "not run" end
      if t.status == "retrying" and not run.live then t.status = "failed" end
    end
  end
  run.ended_at = run.ended or (run.live and now) or last_t or now
  run.started = run.started or (run.attempts[1] and run.attempts[1].start) or run.ended_at

  -- Attempt order per task, lanes, critical path.
  for _, tid in ipairs(run.order) do
    table.sort(run.tasks[tid].attempts, function(a, b) return a.n < b.n end)
  end
  run.lanes = assign_lanes(run.attempts)
  if run.has_plan then
    run.critical, run.critical_seconds = critical_path(run)
  else
    run.critical, run.critical_seconds = {}, 0
  end
  run.on_critical = {}
  for i, tid in ipairs(run.critical) do run.on_critical[tid] = i end

  -- Figures: from summary.json when the run finished, else measured from the journal.
  local busy = 0
  for _, a in ipairs(run.attempts) do busy = busy + (a.duration or 0) end
  local counts = { completed = 0, failed = 0, skipped = 0, running = 0, pending = 0 }
  for _, tid in ipairs(run.order) do
    local s = run.tasks[tid].status
    if s == "completed" then counts.completed = counts.completed + 1
    elseif s == "failed" or s == "interrupted" then counts.failed = counts.failed + 1
    elseif s == "skipped" or s == "not run" then counts.skipped = counts.skipped + 1
    elseif s == "running" or s == "retrying" then counts.running = counts.running + 1
    else counts.pending = counts.pending + 1 end
  end
  local s = run.summary
  local wall = s and s.total_time_seconds or (run.ended_at - run.started)
  run.figures = {
    tasks = #run.order, completed = counts.completed, failed = counts.failed,
    skipped = counts.skipped, running = counts.running, pending = counts.pending,
    attempts = #run.attempts, wall = wall, sequential = busy,
    speedup = wall > 0 and busy / wall or 0, saved = busy - wall,
    max_workers = run.max_workers or (s and int(s.max_workers)), lanes = run.lanes,
    utilisation = (wall > 0 and (run.max_workers or 0) > 0) and busy / (wall * run.max_workers) * 100 or nil,
    critical = run.critical_seconds, cost = s and s.total_cost_usd,
  }
  return run
end

--- Finds run `id` (default: the newest) of `project_dir`, or a run dir given as a path.
function M.find(project_dir, id)
  if id and (id:find("/") or id == "." or id == "..") then
    local st = uv.fs_stat(id)
    if st and st.type == "directory" and uv.fs_stat(id .. "/journal.jsonl") then return fsutil.absolute(id) end
  end
  local run, err = status_mod.load(project_dir or ".", id)
  if not run then return nil, err end
  return fsutil.absolute(run.dir)
end

-- {{{ the timeline as text

local OUTCOME_CHAR = {
  success = "█", failed = "▓", timeout = "▒", ["idle-timeout"] = "▒", ["rate-limited"] = "▒",
  cancelled = "░", interrupted = "▚", running = "▶",
}
local OUTCOME_COLOR = {
  success = "32", failed = "31", timeout = "33", ["idle-timeout"] = "33", ["rate-limited"] = "35",
  cancelled = "90", interrupted = "35", running = "36",
}
M.OUTCOMES = { "success", "failed", "timeout", "idle-timeout", "rate-limited", "cancelled", "interrupted", "running" }

local function fmt_seconds(s)
  return require("coral.view.progress").fmt_duration(s)
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
  for _, o in ipairs { "success", "failed", "timeout", "cancelled", "interrupted", "running" } do
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
