--- Progress output of a run. On a terminal: a live view redrawn in place (each running task
-- with its elapsed time, counts, a bar, an ETA). Otherwise: one timestamped line per event.
-- "json": one JSON object per line per event. "quiet": nothing until the summary.
local cjson = require "cjson"
local host = require "coral.host"
local live_usage = require "coral.run.usage"
local uv = require "luv"

local M = {}

-- os.date once a second, not twice a task: the text of the last second asked is kept
local clock_sec, clock_text
local function clock(t)
  local sec = math.floor(t)
  if sec ~= clock_sec then clock_sec, clock_text = sec, os.date("%H:%M:%S", sec) end
  return clock_text
end

local function fmt_duration(s)
  if s == nil then return "-" end
  if s < 60 then return string.format("%.1fs", s) end
  if s < 3600 then return string.format("%dm%02ds", s // 60, math.floor(s % 60)) end
  return string.format("%dh%02dm", s // 3600, math.floor(s % 3600 / 60))
end
M.fmt_duration = fmt_duration

-- "  $0.0123  45.6k tokens" (what is known of it), or "" when nothing is.
local function fmt_spend(tokens, cost, sep)
  local parts = {}
  if cost then parts[#parts + 1] = string.format("$%.4f", cost) end
  if tokens then
    parts[#parts + 1] = tokens >= 1000 and string.format("%.1fk tokens", tokens / 1000) or (tokens .. " tokens")
  end
  return #parts > 0 and sep .. table.concat(parts, "  ") or ""
end

local Lines = {}
Lines.__index = Lines

-- The lines of start and end events (two a task) are written together, at most LINES_MS after
-- the first of them waits, and at once with any other event's line (a warning, a stop, the
-- run's first line) and when the run ends: one write(2) for many short tasks, not two each.
local LINES_MS = 100
local BATCHED = { start = true, ["end"] = true }

-- Collects what Lines:event writes, for the next flush.
local Pending = {}
Pending.__index = Pending
function Pending:write(text) self[#self + 1] = text end

function Lines:flush()
  local pending = self.pending
  if pending and #pending > 0 then
    self.pending = setmetatable({}, Pending)
    self.out:write(table.concat(pending))
    self.out:flush()
  end
end

function Lines:event(e)
  self.pending = self.pending or setmetatable({}, Pending)
  self:lines(e, self.pending)
  if not BATCHED[e.event] then return self:flush() end
  if not self.timer then
    self.timer = uv.new_timer()
    self.timer:unref()
  end
  if not self.timer:is_active() then self.timer:start(LINES_MS, 0, function() self:flush() end) end
end

function Lines.lines(_, e, out)
  local when = clock(e.t or os.time())
  if e.event == "run" then
    out:write(string.format("[%s] run %s: %d tasks, mode %s, %d workers%s\n", when, e.run_id, e.tasks,
      e.mode, e.max_workers, e.plan and (", plan " .. e.plan) or ""))
  elseif e.event == "start" then
    out:write(string.format("[%s] start     %s (attempt %d%s)%s\n", when, e.task, e.attempt,
      e.pid and string.format(", pid %d", e.pid) or "", e.stale and (": " .. e.stale) or ""))
  elseif e.event == "submit" or e.event == "adopt" then
    out:write(string.format("[%s] %-9s %s (attempt %d, job %s)\n", when, e.event, e.task, e.attempt, tostring(e.job_id)))
  elseif e.event == "end" then
    -- the attempt's outcome, in the words of coral.records.states
    out:write(string.format("[%s] %-9s %s (attempt %d, %s%s)\n", when, e.outcome or "failed", e.task, e.attempt,
      fmt_duration(e.duration), e.error and (": " .. e.error) or ""))
  elseif e.event == "retry" then
    out:write(string.format("[%s] retry     %s in %.1fs (attempt %d)\n", when, e.task, e.delay, e.attempt))
  elseif e.event == "skip" then
    out:write(string.format("[%s] skipped   %s: %s\n", when, e.task, e.reason))
  elseif e.event == "up_to_date" then
    out:write(string.format("[%s] up to date %s (since run %s)\n", when, e.task, tostring(e.since)))
  elseif e.event == "rerun" then
    out:write(string.format("[%s] rerun     %s: %s\n", when, e.task, e.reason))
  elseif e.event == "stopping" then
    out:write(string.format("[%s] stopping: %s\n", when, e.reason))
  elseif e.event == "add" then
    out:write(string.format("[%s] added     %s%s\n", when, e.task, e.by and (" (by " .. e.by .. ")") or ""))
  elseif e.event == "hook_error" then
    out:write(string.format("[%s] warning   %s\n", when, e.error))
  elseif e.event == "coord_behind" or e.event == "coord_caught_up" then
    -- a coordination file whose lock another process holds (coral.records.coordq)
    out:write(string.format("[%s] %s\n", when, e.event == "coord_behind" and ("warning   " .. e.message) or e.message))
  elseif e.event == "wait" then
    out:write(string.format("[%s] waiting   %s\n", when, e.reason))
  elseif e.event == "park" then
    out:write(string.format("[%s] %s %s: %s\n", when, e.state, e.task, e.reason))
  elseif e.event == "budget_warning" then
    out:write(string.format("[%s] warning   %s\n", when, e.message))
  elseif e.event == "limit" then
    out:write(string.format("[%s] limit     %s = %d (%s)\n", when, e.name, e.limit, e.reason))
  elseif e.event == "awaiting_approval" or e.event == "control" then
    out:write(string.format("[%s] %s\n", when, require("coral.control").event_text(e)))
  end
end
--- Writes what waits and stops the timer (the run ended, or was aborted).
function Lines:close()
  self:flush()
  if self.timer then self.timer:close(); self.timer = nil end
end
function Lines:finish() self:close() end

local Json = {}
Json.__index = Json
function Json:event(e)
  e.t = e.t or os.time()
  self.out:write(cjson.encode(e), "\n")
  self.out:flush()
  -- a warning goes to stderr too, as coral's other warnings do
  if e.event == "hook_error" then io.stderr:write("coral: warning: ", e.error, "\n") end
  if e.event == "coord_behind" then io.stderr:write("coral: warning: ", e.message, "\n") end
  if e.event == "budget_warning" then io.stderr:write("coral: warning: ", e.message, "\n") end
end
function Json:finish() end

local Quiet = {}
Quiet.__index = Quiet
function Quiet.event(_, e)
  if e.event == "hook_error" then io.stderr:write("coral: warning: ", e.error, "\n") end
  -- a coordination file behind, and its catching up after that warning
  if e.event == "coord_behind" then io.stderr:write("coral: warning: ", e.message, "\n") end
  if e.event == "coord_caught_up" then io.stderr:write("coral: ", e.message, "\n") end
  if e.event == "budget_warning" then io.stderr:write("coral: warning: ", e.message, "\n") end
end
function Quiet:finish() end

--- The limits in force as one line of the live view ("limits: claude 2/4 (rate-limited), gpu 1/1,
-- 3 waiting"), or nil when no task is counted against one and none waits.
function M.limits_line(run)
  local l = run.limits
  if not l then return nil end
  local parts = {}
  for name, v in pairs(l:snapshot()) do
    parts[#parts + 1] = string.format("%s %d/%d%s", name, math.tointeger(v.used) or v.used, v.limit,
      v.adaptive and " (rate-limited)" or "")
  end
  table.sort(parts)
  local held = run.held and #run.held or 0
  if held > 0 then parts[#parts + 1] = string.format("%d waiting", held) end
  if #parts == 0 then return nil end
  return "  limits: " .. table.concat(parts, ", ")
end

-- The live view: redrawn at most every 100 ms and on each start or end.
local Live = {}
Live.__index = Live

function Live:draw()
  local run = self.run
  local counts = { succeeded = 0, failed = 0, skipped = 0, running = 0 }
  local running = {}
  local now = uv.hrtime()
  local all_tokens, all_cost
  for _, t in ipairs(run.plan.tasks) do
    local st = run.state[t.id]
    counts[st.status] = (counts[st.status] or 0) + 1
    -- spend so far (what the agent CLIs report, live while they stream): per task and in total
    local tokens, cost = live_usage.spent(st)
    if tokens then all_tokens = (all_tokens or 0) + tokens end
    if cost then all_cost = (all_cost or 0) + cost end
    if st.status == "running" then
      local a = st.attempts[#st.attempts]
      running[#running + 1] = string.format("  ▶ %-28s %7s%s%s", t.id,
        fmt_duration((now - a.mono_start) / 1e9), fmt_spend(tokens, cost, "  "),
        a.n > 1 and (" (attempt " .. a.n .. ")") or "")
    end
  end
  local total = #run.plan.tasks
  local ended = counts.succeeded + counts.failed + counts.skipped + (counts.up_to_date or 0)
  local width = 30
  local filled = total > 0 and math.floor(ended / total * width + 0.5) or width
  -- ETA from estimates: the estimated work left spread over the workers, corrected by how
  -- long the finished tasks really took against their estimates.
  local left, est_done, took = 0, 0, 0
  for _, t in ipairs(run.plan.tasks) do
    local st = run.state[t.id]
    local s = st.status
    if s == "pending" or s == "running" or s == "retrying" then left = left + run.plan:estimate(t)
    elseif s == "succeeded" and st.finish and st.first_start then
      est_done = est_done + run.plan:estimate(t)
      took = took + (st.finish - st.first_start)
    end
  end
  if est_done > 0 then left = left * took / est_done end
  local lines = {
    string.format("coral %s  phase %d/%d  %s%s  %d/%d", run.mode.name, run:current_phase(), #run.phases,
      string.rep("█", filled), string.rep("░", width - filled), ended, total),
    string.format("  succeeded %d%s  failed %d  skipped %d%s  running %d  elapsed %s  eta ~%s",
      counts.succeeded, counts.up_to_date and string.format("  up to date %d", counts.up_to_date) or "",
      counts.failed, counts.skipped,
      counts.interrupted and string.format("  interrupted %d", counts.interrupted) or "", counts.running,
      fmt_duration((now - self.started) / 1e9), fmt_duration(left / run.max_workers)),
  }
  if all_tokens or all_cost then lines[#lines + 1] = "  spent" .. fmt_spend(all_tokens, all_cost, " ") end
  local limits = M.limits_line(run)
  if limits then lines[#lines + 1] = limits end
  for i = 1, math.min(#running, 12) do lines[#lines + 1] = running[i] end
  if #running > 12 then lines[#lines + 1] = string.format("  … and %d more", #running - 12) end
  local out = {}
  -- "\r" first: the terminal may have echoed something (^C) after the view, moving the column
  if self.drawn > 0 then out[1] = string.format("\r\27[%dA", self.drawn) end
  for _, l in ipairs(lines) do out[#out + 1] = "\27[2K" .. l .. "\n" end
  -- Clear lines left over from a taller previous frame.
  for _ = #lines + 1, self.drawn do out[#out + 1] = "\27[2K\n" end
  local extra = math.max(0, self.drawn - #lines)
  if extra > 0 then out[#out + 1] = string.format("\27[%dA", extra) end
  self.out:write(table.concat(out))
  self.out:flush()
  self.drawn = #lines
end

function Live:event(e)
  if e.event == "end" and e.outcome ~= "succeeded" or e.event == "skip" or e.event == "stopping"
     or e.event == "rerun" or e.event == "hook_error" or e.event == "coord_behind" or e.event == "coord_caught_up"
     or e.event == "wait" or e.event == "park" or e.event == "budget_warning" or e.event == "limit"
     or e.event == "awaiting_approval" or e.event == "control" then
    -- Failures scroll above the live view, so they stay readable after it is redrawn.
    local text
    if e.event == "end" then text = string.format("✗ %s (attempt %d): %s", e.task, e.attempt, e.error or e.outcome)
    elseif e.event == "skip" then text = string.format("⏭ %s: %s", e.task, e.reason)
    elseif e.event == "rerun" then text = string.format("↻ %s runs again: %s", e.task, e.reason)
    elseif e.event == "hook_error" then text = "warning: " .. e.error
    elseif e.event == "coord_behind" then text = "warning: " .. e.message
    elseif e.event == "coord_caught_up" then text = "✓ " .. e.message
    elseif e.event == "wait" then text = "waiting: " .. e.reason
    elseif e.event == "park" then text = string.format("⏸ %s %s: %s", e.task, e.state, e.reason)
    elseif e.event == "budget_warning" then text = "warning: " .. e.message
    elseif e.event == "limit" then text = string.format("limit %s = %d (%s)", e.name, e.limit, e.reason)
    elseif e.event == "awaiting_approval" or e.event == "control" then text = require("coral.control").event_text(e)
    else text = "stopping: " .. e.reason end
    if self.drawn > 0 then self.out:write(string.format("\r\27[%dA\27[J", self.drawn)) end
    self.drawn = 0
    self.out:write(text, "\n")
  end
  if e.event == "run" and not self.timer then
    self.timer = uv.new_timer()
    self.timer:start(100, 100, function() self:draw() end)
    self.timer:unref()
  end
  if e.event ~= "run" and e.event ~= "done" then self:draw() end
end

function Live:finish()
  if self.timer then self.timer:close(); self.timer = nil end
  self:draw()
end

--- A reporter for `mode` ("auto" picks live on a terminal, else lines).
function M.new(mode, run)
  local out = io.stderr
  if mode == "auto" then mode = host.isatty(2) and "live" or "lines" end
  local cls = ({ live = Live, lines = Lines, json = Json, quiet = Quiet })[mode]
  if mode == "json" then out = io.stdout end
  return setmetatable({ out = out, run = run, drawn = 0, started = uv.hrtime() }, cls)
end

-- Counts read back from JSON are floats (3.0): they print as integers.
local function int(v)
  return string.format("%d", math.tointeger(v) or 0)
end

--- The summary as text, as `coral run` prints it.
function M.summary_text(s)
  local function row(k, v) return string.format("  %-22s %s", k, v) end
  local lines = {
    "",
    string.format("Summary of run %s%s", s.run_id, s.plan and (" (" .. s.plan .. ")") or ""),
    row("Tasks", int(s.tasks)),
    row("Succeeded", int(s.succeeded)),
    row("Failed", int(s.failed)),
    row("Skipped", int(s.skipped)),
    row("Success Rate", string.format("%.1f%%", s.success_rate)),
    row("Total Time", fmt_duration(s.total_time_seconds)),
    row("Sequential Estimate", fmt_duration(s.sequential_estimate_seconds) .. " (measured sum of task times)"),
    row("Time Saved", fmt_duration(math.max(0, s.time_saved_seconds)) ..
      (s.time_saved_seconds < 0 and string.format(" (parallel run was %.1fs slower)", -s.time_saved_seconds) or "")),
    row("Efficiency Gain", string.format("%.1f%% (%.2fx speedup)", s.efficiency_gain_percent, s.speedup)),
    row("Phases", int(s.phases)),
    row("Max Parallel", int(s.max_parallel)),
    row("Critical Path", fmt_duration(s.critical_path_seconds)),
    row("Worker Utilisation", string.format("%.1f%%", s.worker_utilisation_percent)),
    row("Run Dir", s.run_dir),
  }
  if (s.up_to_date or 0) > 0 then   -- after "Succeeded"
    table.insert(lines, 5, row("Up To Date", int(s.up_to_date) .. " (not run: their outputs are up to date)"))
  end
  local ws = s.workspace
  if ws and ws.result_branch then
    lines[#lines + 1] = row("Result", ws.result_branch .. " (--apply commits it to the current branch)")
  elseif ws and ws.error then
    lines[#lines + 1] = row("Result", "none: " .. ws.error .. " (every task's branch stays)")
  end
  if (s.budget_exhausted or 0) > 0 then   -- after "Skipped"
    table.insert(lines, 7 + ((s.up_to_date or 0) > 0 and 1 or 0),
      row("Budget Exhausted", int(s.budget_exhausted) .. " (not started; coral resume --budget-usd N goes on)"))
  end
  if s.total_cost_usd then
    lines[#lines + 1] = row("Cost", string.format("$%.4f (as the agent CLIs reported it)", s.total_cost_usd))
  end
  if s.total_tokens then lines[#lines + 1] = row("Tokens", int(s.total_tokens) .. " (input + output)") end
  local b = s.budget
  if b then
    local parts = {}
    if b.usd then parts[#parts + 1] = string.format("$%.2f of $%.2f spent", b.spent_usd or 0, b.usd) end
    if b.tokens then parts[#parts + 1] = string.format("%s of %s tokens", int(b.spent_tokens), int(b.tokens)) end
    lines[#lines + 1] = row("Budget", table.concat(parts, ", ") ..
      string.format(" ($%.2f reserved before starts)", b.reserved_usd or 0))
  end
  if s.spend and s.spend.by_role and next(s.spend.by_role) and s.total_cost_usd then
    local roles = {}
    for name, e in pairs(s.spend.by_role) do roles[#roles + 1] = { name = name, usd = e.usd } end
    table.sort(roles, function(x, y) return x.usd > y.usd or (x.usd == y.usd and x.name < y.name) end)
    local parts = {}
    for i, r in ipairs(roles) do
      if i > 6 then parts[#parts + 1] = "..."; break end
      parts[#parts + 1] = string.format("%s $%.2f", r.name, r.usd)
    end
    lines[#lines + 1] = row("Spend By Role", table.concat(parts, ", "))
  end
  if s.interrupted then lines[#lines + 1] = row("Interrupted", "yes (" .. tostring(s.interrupted) .. ")") end
  if (s.interrupted_tasks or 0) > 0 then
    lines[#lines + 1] = row("Unfinished", int(s.interrupted_tasks) .. " (interrupted; coral resume runs them)")
  end
  local failures = {}
  for id, r in pairs(s.results) do
    if r.status ~= "succeeded" and r.status ~= "up_to_date" then failures[#failures + 1] = string.format("  %-11s %s: %s", r.status, id, r.error or "") end
  end
  table.sort(failures)
  for _, h in ipairs(type(s.hook_errors) == "table" and s.hook_errors or {}) do
    failures[#failures + 1] = string.format("  %-11s %s", "hook error", h.error)
  end
  if #failures > 0 then
    lines[#lines + 1] = ""
    for _, f in ipairs(failures) do lines[#lines + 1] = f end
  end
  return table.concat(lines, "\n") .. "\n"
end

return M
