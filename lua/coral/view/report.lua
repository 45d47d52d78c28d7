--- The HTML run report: one self-contained file (no network, no external script or font) with
-- the summary, an SVG Gantt timeline (a lane per worker slot, a bar per attempt coloured by its
-- outcome, the critical path outlined), the plan graph drawn here in SVG (layered by phase, so
-- Graphviz is not needed), and per task its figures and links to its files. While a run is
-- going, `attach` rewrites the report every few seconds and the page reloads itself.
local fsutil = require "coral.fsutil"
local records = require "coral.records"
local slice = require "coral.slice"
local timeline = require "coral.view.timeline"
local uv = require "luv"

local point = slice.point   -- where a live write gives the loop back (coral.slice)

local M = {}

--- Seconds between two rewrites of a live report (and the page's reload interval).
M.INTERVAL = 2

local fmt = timeline.fmt_seconds

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }
local find = string.find
-- The texts escaped for the page being drawn (M.html starts it anew): an id, a status or an
-- agent is drawn in each section, and a table read costs less than a call.
local escaped = {}
local function esc(s)
  local e = escaped[s]
  if e then return e end
  if s == nil then return "" end
  local text = type(s) == "string"
  e = text and s or tostring(s)
  -- Most texts (ids, numbers, times) have nothing to escape: no gsub, no copy. A long text (a
  -- prompt) is searched with plain finds (memchr): a class is tried at every byte.
  if #e < 32 and find(e, "[&<>\"']")
     or #e >= 32 and (find(e, "&", 1, true) or find(e, "<", 1, true) or find(e, ">", 1, true)
                      or find(e, '"', 1, true) or find(e, "'", 1, true)) then
    e = e:gsub("[&<>\"']", ESC)
  end
  if text then escaped[s] = e end   -- not a number: -0.0 is the key 0
  return e
end
M.escape = esc

-- A coordinate with one decimal. The texts are kept for the page being drawn: a drawing has
-- few distinct values (a lane's or a row's y, a column's x) and printf of a double is slow.
local nums = {}
local function num(x)
  local s = nums[x]
  if not s then
    s = string.format("%.1f", x)
    if x > 0 then nums[x] = s end   -- not -0.0 (a key 0, "0.0"), nor NaN (no key)
  end
  return s
end

-- Integers as text (string.format's %d), kept for the page being drawn: attempt numbers,
-- lanes and coordinates repeat.
local INTS = { __index = function(t, i)
  local s = string.format("%d", i)
  t[i] = s
  return s
end }
local ints = setmetatable({}, INTS)

-- os.date once per second, not twice an attempt: a report draws hundreds of attempts that
-- began and ended within the same few seconds (the text of the last second asked is kept)
local last_date = {}   -- format -> { sec, text }
local function date(format, sec)
  local last = last_date[format]
  if not last then last = {}; last_date[format] = last end
  if last[1] ~= sec then last[1], last[2] = sec, os.date(format, sec) end
  return last[2]
end

local function clock(t)
  if not t then return "-" end
  return date("%H:%M:%S", t // 1) .. "." .. ints[(t % 1) * 10 // 1]
end

local function when(t)
  return t and date("%Y-%m-%d %H:%M:%S", math.floor(t)) or "-"
end

-- {{{ paths

local function split(path)
  local parts = {}
  for p in path:gmatch("[^/]+") do parts[#parts + 1] = p end
  return parts
end

--- The path of `target` relative to directory `from` (both absolute).
function M.relative(from, target)
  -- the usual case, a file under the report's own dir: the rest of its path, when no empty
  -- component ("//", a trailing "/") makes the split below differ from it
  local n = #from
  if target:byte(n + 1) == 47 and target:sub(1, n) == from and from:byte(n) ~= 47
     and not from:find("//", 1, true) then
    local rest = target:sub(n + 2)
    if rest ~= "" and rest:byte(1) ~= 47 and rest:byte(-1) ~= 47 and not rest:find("//", 1, true) then
      return rest
    end
  end
  local a, b = split(from), split(target)
  local i = 1
  while a[i] and b[i] and a[i] == b[i] do i = i + 1 end
  local out = {}
  for _ = i, #a do out[#out + 1] = ".." end
  for j = i, #b do out[#out + 1] = b[j] end
  return #out > 0 and table.concat(out, "/") or "."
end

local function href(path)
  return (path:gsub("[^%w%-%._~/]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- }}}
-- {{{ what a live report keeps

-- True when nothing drawn of attempt `a` can change before the next event of its task: it
-- ended (a running one is drawn up to now; one that coral lost is closed at its files' last
-- write). An attempt's files are all written before its end is journaled.
local function settled(a)
  return a.finish ~= nil and not a.open and not a.running and a.outcome ~= "interrupted"
end

-- The same for task `t`: it has no attempt yet (it gets one before its files), or its last
-- attempt is settled.
local function task_settled(t)
  local last = t.attempts[#t.attempts]
  return last == nil or settled(last)
end

-- The parts of the page a live report keeps from one write to the next (in M.write's
-- opts.cache), for the tasks and attempts that are settled: the plan graph's layout, a task's
-- incoming edges, node and table row, an attempt's hover text. Each is checked against what
-- it was made of (the task's last journal event, its attempt count and status, whether it is
-- on the critical path); all are dropped when the plan, the task list or the report's dir
-- changes. Rebuilding all of them at each write was half of a live report's time.
local function page_cache(cache, run, out_dir)
  if not cache then return nil end
  local view = cache.view
  if not view or view.plan ~= cache.plan or view.tasks ~= #run.order or view.out_dir ~= out_dir then
    view = { plan = cache.plan, tasks = #run.order, out_dir = out_dir, rows = {}, nodes = {}, edges = {}, titles = {} }
    cache.view = view
  end
  return view
end

-- }}}
-- {{{ the Gantt timeline

local COLORS = {
  succeeded = "#3a9a4f", failed = "#d64541", timeout = "#e8912d", ["idle-timeout"] = "#e8912d",
  ["rate-limited"] = "#a06cd5", cancelled = "#9a9a9a", interrupted = "#7d5ba6", running = "#3b82c4",
}
M.COLORS = COLORS
local FILL = {   -- patterns make timeouts and running attempts visible without colour too
  timeout = "url(#hatch-timeout)", ["idle-timeout"] = "url(#hatch-timeout)", running = "url(#hatch-running)",
  interrupted = "url(#hatch-interrupted)",
}

local function nice_step(span, target)
  local raw = span / target
  local p = 10 ^ math.floor(math.log(raw, 10))
  for _, m in ipairs { 1, 2, 5, 10 } do
    if m * p >= raw then return m * p end
  end
  return 10 * p
end

-- The hover text of attempt `a`, escaped: its parts are escaped, not the whole text (a
-- gsub of each title, for its "run's", was a third of the timeline's time).
local function attempt_title(run, a, task)
  local t = run.tasks[a.task]
  local title = task .. " — attempt " .. ints[a.n] .. " (" .. esc(a.outcome) .. ")\nagent: " .. esc(a.agent or t.agent)
    .. "\nstart " .. clock(a.start) .. ", end " .. (a.running and "now " or "") .. clock(a.finish) .. ", " .. fmt(a.duration)
    .. "\n+" .. fmt(a.start - run.started) .. " → +" .. fmt(a.finish - run.started) .. " from the run&#39;s start"
  if a.exit or a.signal then
    title = title .. "\nexit " .. esc(tostring(a.exit == nil and "-" or a.exit))
      .. ((a.signal and a.signal ~= 0) and (", signal " .. esc(tostring(a.signal))) or "")
  end
  if a.error then title = title .. "\nerror: " .. esc(a.error) end
  if run.on_critical[a.task] then title = title .. "\non the critical path" end
  return title
end

local function gantt_svg(run, view)
  local label_w, lane_h, bar_h, top, chart_w = 92, 30, 22, 28, 1040
  local lanes = math.max(run.lanes, 1)
  local height = top + lanes * lane_h + 12
  local span = math.max(run.ended_at - run.started, 1e-3)
  local function x(t) return label_w + (t - run.started) / span * chart_w end
  local out = {}
  local function add(s) out[#out + 1] = s end
  add(string.format('<svg id="gantt" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="timeline of the run">',
    label_w + chart_w + 20, height, label_w + chart_w + 20, height))
  add([[<defs>
<pattern id="hatch-timeout" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#e8912d"/><rect width="2.5" height="6" fill="#f6c88f"/></pattern>
<pattern id="hatch-running" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="8" height="8" fill="#3b82c4"/><rect width="3" height="8" fill="#7fb2e0"/></pattern>
<pattern id="hatch-interrupted" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(-45)"><rect width="6" height="6" fill="#7d5ba6"/><rect width="2" height="6" fill="#b9a3d6"/></pattern>
<marker id="retry-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker>
</defs>]])
  -- Axis with a grid line per tick.
  local step = nice_step(span, 10)
  add('<g class="axis">')
  local tick = 0
  while tick <= span + 1e-9 do
    local tx = label_w + tick / span * chart_w
    add(string.format('<line x1="%s" y1="%d" x2="%s" y2="%d" stroke="#e3e3e3"/>', num(tx), top - 6, num(tx), height - 8))
    add(string.format('<text x="%s" y="%d" text-anchor="middle">%s</text>', num(tx), top - 10, esc(fmt(tick))))
    tick = tick + step
  end
  add("</g>")
  add('<g class="lanes">')
  for l = 1, lanes do
    local y = top + (l - 1) * lane_h
    add(string.format('<rect class="lane" x="%d" y="%d" width="%d" height="%d" fill="%s"/>', label_w, y, chart_w,
      lane_h, l % 2 == 0 and "#f7f7f9" or "#ffffff"))
    add(string.format('<text class="lane-label" x="%d" y="%s">worker %d</text>', label_w - 8, num(y + lane_h / 2 + 4), l))
  end
  add("</g>")
  -- Retry links: from the end of a failed attempt to the start of the next one.
  local by_task = {}   -- task -> attempt number -> attempt
  for _, a in ipairs(run.attempts) do
    local of_task = by_task[a.task]
    if not of_task then of_task = {}; by_task[a.task] = of_task end
    of_task[a.n] = a
  end
  add('<g class="retry-links">')
  for _, a in ipairs(run.attempts) do
    local prev = a.n > 1 and by_task[a.task][a.n - 1]
    if prev then
      local y1 = top + (prev.lane - 1) * lane_h + lane_h / 2
      local y2 = top + (a.lane - 1) * lane_h + lane_h / 2
      add(string.format('<path class="retry-link" data-task="%s" d="M%.1f,%.1f C%.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="none" stroke="#555" stroke-dasharray="3,3" marker-end="url(#retry-arrow)"><title>%s</title></path>',
        esc(a.task), x(prev.finish), y1, x(prev.finish) + 12, y1, x(a.start) - 12, y2,
        x(a.start), y2, esc(string.format("%s: retry, attempt %d after %s", a.task, a.n, fmt(a.start - prev.finish)))))
    end
  end
  add("</g>")
  add('<g class="bars">')
  -- an attempt's hover text, kept by a live report while the attempt is settled
  local function title(a, task, critical)
    if not view then return attempt_title(run, a, task) end
    local of_task = view.titles[a.task]
    if not of_task then of_task = {}; view.titles[a.task] = of_task end
    local kept = of_task[a.n]
    if kept and kept.finish == a.finish and kept.outcome == a.outcome and kept.critical == critical then
      return kept.text
    end
    local text = attempt_title(run, a, task)
    of_task[a.n] = settled(a) and { finish = a.finish, outcome = a.outcome, critical = critical, text = text } or nil
    return text
  end
  -- A bar is its group, rect, label and end (a line each), joined with `..`: string.format's
  -- %s is dearer than a concatenation, and a report draws a bar per attempt
  for _, a in ipairs(run.attempts) do
    point()
    local bx = x(a.start)
    local bw = x(a.finish) - bx
    if bw < 2 then bw = 2 end
    local y = top + (a.lane - 1) * lane_h + (lane_h - bar_h) / 2
    local critical = run.on_critical[a.task] ~= nil
    local task = esc(a.task)
    local label = a.task .. (a.n > 1 and (" #" .. a.n) or "")
    local fits = (bw - 6) / 6.6 // 1
    if fits >= 3 then
      if #label > fits then label = label:sub(1, fits - 1) .. "…" end
      label = '\n<text class="bar-label" x="' .. num(bx + 4) .. '" y="' .. num(y + bar_h / 2 + 4) .. '">' .. esc(label)
        .. "</text>"
    else
      label = ""
    end
    local outcome = esc(a.outcome)
    add('<g class="attempt" data-task="' .. task .. '">\n<rect class="bar outcome-' .. a.outcome
      .. (critical and " critical" or "") .. (a.n > 1 and " retry" or "") .. '" data-task="' .. task
      .. '" data-attempt="' .. ints[a.n] .. '" data-outcome="' .. outcome .. '" data-lane="' .. ints[a.lane] .. '"'
      .. (critical and ' data-critical="1"' or "") .. ' x="' .. num(bx) .. '" y="' .. num(y) .. '" width="' .. num(bw)
      .. '" height="' .. ints[bar_h] .. '" rx="3" fill="' .. (FILL[a.outcome] or COLORS[a.outcome] or "#d64541") .. '"'
      .. (critical and ' stroke="#111" stroke-width="2.5"' or ' stroke="#ffffff" stroke-width="0.5"')
      .. "><title>" .. title(a, task, critical) .. "</title></rect>" .. label .. "\n</g>")
  end
  add("</g>")
  if run.live then
    add(string.format('<line class="now" x1="%s" y1="%d" x2="%s" y2="%d" stroke="#3b82c4" stroke-width="1.5" stroke-dasharray="4,2"><title>now</title></line>',
      num(x(run.ended_at)), top - 6, num(x(run.ended_at)), height - 8))
  end
  add("</svg>")
  return table.concat(out, "\n")
end

local function legend()
  local items = {}
  for _, o in ipairs { "succeeded", "failed", "timeout", "rate-limited", "cancelled", "interrupted", "running" } do
    items[#items + 1] = string.format('<span class="key"><svg width="14" height="12"><rect width="14" height="12" rx="2" fill="%s"/></svg> %s</span>',
      COLORS[o], o)
  end
  items[#items + 1] = '<span class="key"><svg width="14" height="12"><rect x="1" y="1" width="12" height="10" rx="2" fill="#ccc" stroke="#111" stroke-width="2"/></svg> critical path</span>'
  items[#items + 1] = '<span class="key"><svg width="22" height="12"><path d="M1,6 H20" stroke="#555" stroke-dasharray="3,3"/></svg> retry</span>'
  return '<p class="legend">' .. table.concat(items, " ") .. "</p>"
end

-- }}}
-- {{{ the plan graph

local STATUS_FILL = {
  succeeded = "#dff3e3", failed = "#f9dcdb", interrupted = "#ebe2f5", skipped = "#eeeeee", up_to_date = "#eef7ef",
  running = "#dcebf8", retrying = "#fdebd3", pending = "#ffffff",
}

-- Columns: phases in order, and within a phase, a task goes right of its dependencies in the
-- same phase; rows: by the mean row of a task's dependencies (fewer crossings), then plan order.
local function graph_layout(run)
  local phase_of, phases = {}, run.phases
  if #phases == 0 then
    phases = { run.order }
  end
  for p, ids in ipairs(phases) do
    for _, id in ipairs(ids) do phase_of[id] = p end
  end
  local extra = {}
  for _, id in ipairs(run.order) do
    if not phase_of[id] then extra[#extra + 1] = id end
  end
  if #extra > 0 then phases = { table.unpack(phases) }; phases[#phases + 1] = extra end
  for p, ids in ipairs(phases) do
    for _, id in ipairs(ids) do phase_of[id] = p end
  end
  local col, first_col, columns = {}, {}, 0
  for p, ids in ipairs(phases) do
    first_col[p] = columns + 1
    local remaining, placed = {}, 0
    for _, id in ipairs(ids) do remaining[#remaining + 1] = id end
    -- Tasks whose same-phase dependencies are placed go next; repeat (a cycle cannot happen).
    while placed < #ids do
      local progress = false
      for _, id in ipairs(remaining) do
        if not col[id] then
          local ready, c = true, first_col[p]
          for _, d in ipairs(run.tasks[id].depends_on) do
            if phase_of[d] == p and not col[d] then ready = false end
            if col[d] and phase_of[d] == p then c = math.max(c, col[d] + 1) end
          end
          if ready then col[id] = c; placed = placed + 1; progress = true end
        end
      end
      if not progress then
        for _, id in ipairs(remaining) do if not col[id] then col[id] = first_col[p]; placed = placed + 1 end end
      end
    end
    for _, id in ipairs(ids) do columns = math.max(columns, col[id]) end
  end
  local by_col = {}
  for c = 1, columns do by_col[c] = {} end
  for _, ids in ipairs(phases) do
    for _, id in ipairs(ids) do table.insert(by_col[col[id]], id) end
  end
  local row = {}
  for c = 1, columns do
    local ids = by_col[c]
    local key, index = {}, {}
    for i, id in ipairs(ids) do
      index[id] = i
      local sum, n = 0, 0
      for _, d in ipairs(run.tasks[id].depends_on) do
        if row[d] then sum, n = sum + row[d], n + 1 end
      end
      key[id] = n > 0 and sum / n or i - 1
    end
    table.sort(ids, function(a, b)
      if key[a] ~= key[b] then return key[a] < key[b] end
      return index[a] < index[b]
    end)
    for i, id in ipairs(ids) do row[id] = i - 1 end
  end
  return { col = col, row = row, columns = columns, by_col = by_col, phases = phases, first_col = first_col }
end

local function plan_svg(run, view)
  if #run.order == 0 then return '<p class="note">No tasks recorded yet.</p>' end
  local L = view and view.layout or graph_layout(run)   -- (the plan's alone: kept while it is)
  if view then view.layout = L end
  local node_w, node_h, col_w, row_h, pad_top, pad_left = 176, 46, 232, 62, 34, 16
  local rows = 0
  for c = 1, L.columns do rows = math.max(rows, #L.by_col[c]) end
  local width = pad_left * 2 + (L.columns - 1) * col_w + node_w
  local height = pad_top + rows * row_h + 10
  local function pos(id) return pad_left + (L.col[id] - 1) * col_w, pad_top + L.row[id] * row_h end
  local out = {}
  local function add(s) out[#out + 1] = s end
  add(string.format('<svg id="plan-graph" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="plan graph">',
    width, height, width, height))
  add([[<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" markerHeight="9" markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#777"/></marker>
<marker id="arrow-critical" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" markerHeight="9" markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#c0392b"/></marker></defs>]])
  -- Phase bands.
  for p, ids in ipairs(L.phases) do
    if #ids > 0 and #run.phases > 0 then
      local last = L.first_col[p]
      for _, id in ipairs(ids) do last = math.max(last, L.col[id]) end
      local x0 = pad_left + (L.first_col[p] - 1) * col_w - 8
      local x1 = pad_left + (last - 1) * col_w + node_w + 8
      add(string.format('<rect class="phase" x="%d" y="4" width="%d" height="%d" rx="6" fill="%s"/>', x0, x1 - x0,
        height - 8, p % 2 == 0 and "#f4f6fa" or "#fafbfd"))
      add(string.format('<text class="phase-label" x="%d" y="20">Phase %d</text>', x0 + 8, p))
    end
  end
  local eid = {}   -- id -> esc(id): a task's id is drawn with each of its edges
  for _, id in ipairs(run.order) do eid[id] = esc(id) end
  for _, id in ipairs(run.order) do
    point()
    -- a task's incoming edges, kept by a live report while the one on the critical path is
    -- (from the task before it there, if any)
    local crit_from = run.on_critical[id] and run.on_critical[id] > 1 and run.critical[run.on_critical[id] - 1] or false
    local kept = view and view.edges[id]
    local edges = kept and kept.crit_from == crit_from and kept.text
    if not edges then
      local t = run.tasks[id]
      local tx, ty = pos(id)
      ty = ty + node_h / 2
      local lines = {}
      for _, d in ipairs(t.depends_on) do
        if run.tasks[d] then
          local sx, sy = pos(d)
          sx, sy = sx + node_w, sy + node_h / 2
          local dx = (tx - sx) / 2
          if dx < 40 then dx = 40 end
          local crit = d == crit_from   -- (a path visits a task once: its edge into id is from there)
          lines[#lines + 1] = '<path class="edge' .. (crit and " critical" or "") .. '" data-from="' .. (eid[d] or esc(d))
            .. '" data-to="' .. eid[id] .. '" d="M' .. num(sx) .. "," .. num(sy) .. " C" .. num(sx + dx) .. ","
            .. num(sy) .. " " .. num(tx - dx) .. "," .. num(ty) .. " " .. num(tx - 2) .. "," .. num(ty)
            .. '" fill="none" stroke="' .. (crit and "#c0392b" or "#9a9a9a") .. '" stroke-width="'
            .. (crit and "2.5" or "1.2") .. '" marker-end="url(#' .. (crit and "arrow-critical" or "arrow") .. ')"/>'
        end
      end
      edges = table.concat(lines, "\n")
      if view then view.edges[id] = { crit_from = crit_from, text = edges } end
    end
    if edges ~= "" then add(edges) end
  end
  -- A node's text on one line, cut to n bytes. Only the start of a long text (a prompt) is
  -- collapsed: what it yields is the start of what the whole would, and enough when longer than n.
  local function clip(s, n)
    if #s <= n and not find(s, "%s") then return s end
    local head = #s > 4 * n and s:sub(1, 4 * n) or s
    local short = head:gsub("%s+", " ")
    if #short <= n and head ~= s then short = s:gsub("%s+", " ") end
    if #short > n then short = short:sub(1, n - 1) .. "…" end
    return short
  end
  for _, id in ipairs(run.order) do
    point()
    local t = run.tasks[id]
    local crit = run.on_critical[id] ~= nil
    -- kept by a live report while the task is settled and had no event since
    local kept = view and view.nodes[id]
    local node = kept and kept.last == t.last and kept.n == #t.attempts and kept.status == t.status
      and kept.crit == crit and kept.text
    if not node then
      local x, y = pos(id)
      local status = esc(t.status)
      -- the hover text, its parts escaped; the node's group, box, two lines of text and end,
      -- a line each (`..`, not string.format: see gantt_svg)
      local title = eid[id] .. " (" .. esc(t.agent) .. ")\n" .. esc(t.text) .. "\nstatus: " .. status .. ", "
        .. ints[#t.attempts] .. " attempt(s)" .. (t.first_start and t.finish and (", " .. fmt(t.finish - t.first_start)) or "")
      node = '<g class="node' .. (crit and " critical" or "") .. '" data-task="' .. eid[id] .. '" data-status="' .. status
        .. '"><title>' .. title .. '</title>\n<rect x="' .. ints[x] .. '" y="' .. ints[y] .. '" width="' .. ints[node_w]
        .. '" height="' .. ints[node_h] .. '" rx="6" fill="' .. (STATUS_FILL[t.status] or "#fff") .. '" stroke="'
        .. (crit and "#c0392b" or "#888") .. '" stroke-width="' .. (crit and "2.5" or "1") .. '"/>\n<text x="'
        .. ints[x + 8] .. '" y="' .. ints[y + 18] .. '" class="node-title">' .. esc(clip(id, 25)) .. '</text>\n<text x="'
        .. ints[x + 8] .. '" y="' .. ints[y + 35] .. '" class="node-sub">' .. esc(clip(t.text ~= "" and t.text or t.agent, 30))
        .. "</text>\n</g>"
      if view and task_settled(t) then
        view.nodes[id] = { last = t.last, n = #t.attempts, status = t.status, crit = crit, text = node }
      end
    end
    add(node)
  end
  add("</svg>")
  return table.concat(out, "\n")
end

-- }}}
-- {{{ the page

local CSS = [[
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;margin:0;background:#fff}
header{padding:16px 24px;background:#1f2933;color:#f5f7fa}
header h1{margin:0;font-size:20px;font-weight:600}
header p{margin:4px 0 0;color:#cbd2d9}
main{padding:8px 24px 32px}
section{margin-top:18px}
h2{font-size:16px;margin:0 0 8px;border-bottom:1px solid #e4e7eb;padding-bottom:4px}
table{border-collapse:collapse}
td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
#task-table td,#task-table th{border-bottom:1px solid #eef0f2;padding:4px 12px 4px 0}
#summary-table th{font-weight:normal;color:#52606d}
.status{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.status-succeeded{background:#dff3e3;color:#1e6b32}
.status-failed,.status-timeout{background:#f9dcdb;color:#9b2420}
.status-interrupted,.status-killed{background:#ebe2f5;color:#553c7b}
.status-budget_exhausted{background:#fdf0d5;color:#7a5200}
.status-running,.status-retrying{background:#dcebf8;color:#1d5d94}
.status-skipped,.status-pending{background:#eee;color:#555}
.status-up_to_date{background:#eef7ef;color:#3d6b47}
td.added{color:#1e6b32}td.removed{color:#9b2420}
.scroll{overflow-x:auto}
svg text{font:11px system-ui,"DejaVu Sans",sans-serif;fill:#333}
#gantt .lane-label{text-anchor:end;fill:#52606d}
#gantt .bar-label{fill:#fff;pointer-events:none;font-weight:600}
#gantt .axis text{fill:#7b8794}
#plan-graph .node-title{font-weight:600}
#plan-graph .phase-label{fill:#7b8794;font-weight:600}
.legend{color:#52606d;font-size:12px}
.legend .key{margin-right:12px;white-space:nowrap}
.note{color:#52606d}
.hl rect.bar,.hl.node rect{filter:brightness(1.15) drop-shadow(0 0 3px #0070f3)}
a{color:#1d5d94}
code{font-size:12px}
]]

-- The page's script: cross-highlights a task's bars, graph node and table row on hover, and
-- writes the counts it finds in the drawing into the Gantt caption (what the browser drew,
-- not what the generator meant to draw).
local SCRIPT = [[
(function () {
  var bars = document.querySelectorAll('#gantt rect.bar');
  var critical = document.querySelectorAll('#gantt rect.bar.critical');
  var tasks = {};
  bars.forEach(function (b) { tasks[b.getAttribute('data-task')] = true; });
  var c = document.getElementById('dom-counts');
  if (c) {
    c.setAttribute('data-bars', bars.length);
    c.setAttribute('data-critical-bars', critical.length);
    c.setAttribute('data-tasks', Object.keys(tasks).length);
    c.textContent = bars.length + ' attempts of ' + Object.keys(tasks).length + ' tasks drawn, ' +
      critical.length + ' on the critical path';
  }
  function mark(task, on) {
    document.querySelectorAll('[data-task]').forEach(function (el) {
      if (el.getAttribute('data-task') === task && !el.matches('rect')) el.classList.toggle('hl', on);
    });
  }
  document.querySelectorAll('g.attempt, g.node, tr[data-task]').forEach(function (el) {
    el.addEventListener('mouseenter', function () { mark(el.getAttribute('data-task'), true); });
    el.addEventListener('mouseleave', function () { mark(el.getAttribute('data-task'), false); });
  });
})();
]]

-- Each limit that changed during the run (a rate-limited driver's, one set live) as a step line
-- over the Gantt chart's time axis: its value from the first change to the end of the run.
local function limits_svg(run)
  local changes = run.limits
  if not changes or #changes == 0 then return "" end
  local names, by_name = {}, {}
  for _, c in ipairs(changes) do
    if not by_name[c.name] then by_name[c.name] = {}; names[#names + 1] = c.name end
    table.insert(by_name[c.name], c)
  end
  local label_w, chart_w, row_h = 92, 1040, 72
  local span = math.max(run.ended_at - run.started, 1e-3)
  local function x(t) return label_w + math.max(0, math.min(t - run.started, span)) / span * chart_w end
  local height = #names * row_h + 8
  local out = { string.format('<svg id="limits" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" ' ..
    'viewBox="0 0 %d %d" role="img" aria-label="limits over time">', label_w + chart_w + 20, height,
    label_w + chart_w + 20, height) }
  for i, name in ipairs(names) do
    local list = by_name[name]
    local top = (i - 1) * row_h + 4
    local most = 1
    for _, c in ipairs(list) do most = math.max(most, c.limit) end
    local function y(v) return top + row_h - 10 - v / most * (row_h - 18) end
    out[#out + 1] = string.format('<text class="lane-label" x="%d" y="%s">%s</text>', label_w - 8,
      num(top + row_h / 2), esc(name))
    out[#out + 1] = string.format('<line x1="%d" y1="%s" x2="%d" y2="%s" stroke="#e3e3e3"/><text x="%d" y="%s" ' ..
      'font-size="10" text-anchor="end">%d</text><text x="%d" y="%s" font-size="10" text-anchor="end">0</text>',
      label_w, num(y(0)), label_w + chart_w, num(y(0)), label_w - 30, num(y(most) + 4), most, label_w - 30, num(y(0)))
    local d = {}
    for j, c in ipairs(list) do
      local x1 = x(c.t)
      local x2 = x(list[j + 1] and list[j + 1].t or run.ended_at)
      if j == 1 then
        d[#d + 1] = string.format("M%s,%s H%s", num(x1), num(y(c.limit)), num(x2))
      else   -- from where the last step ended (x1): up or down to the new value, then on
        d[#d + 1] = string.format("V%s H%s", num(y(c.limit)), num(x2))
      end
      out[#out + 1] = string.format('<circle class="limit-change" data-limit="%s" data-value="%d" cx="%s" cy="%s" ' ..
        'r="3" fill="#a06cd5"><title>%s</title></circle>', esc(name), c.limit, num(x1), num(y(c.limit)),
        esc(string.format("%s = %d at %s: %s", name, c.limit, fmt(c.t - run.started), c.reason or "")))
    end
    out[#out + 1] = string.format('<path d="%s" fill="none" stroke="#a06cd5" stroke-width="2"/>', table.concat(d, " "))
    out[#out + 1] = string.format('<text x="%s" y="%s" font-size="11">%d</text>', num(label_w + chart_w + 4),
      num(y(list[#list].limit) + 4), list[#list].limit)
  end
  out[#out + 1] = "</svg>"
  return '<p class="note">Limits that changed during the run (a rate-limited driver\'s, or one set while it ran), ' ..
    "over the same time axis.</p>" .. table.concat(out, "\n")
end

-- The run's spend: the budget, and the spend per role and per driver (summary.json).
local function spend_section(run)
  local s = run.summary
  if not s or not (s.budget or s.spend) then return "" end
  local parts = { '<section id="spend"><h2>Spend</h2>' }
  local b = s.budget
  if b then
    local held = {}
    for _, id in ipairs(run.order) do
      if run.tasks[id].status == "budget_exhausted" then held[#held + 1] = id end
    end
    parts[#parts + 1] = string.format("<p>Budget: %s%s; %s reserved before starts.%s</p>",
      b.usd and string.format("$%.2f of $%.2f spent", b.spent_usd or 0, b.usd) or "",
      b.tokens and string.format("%s%d of %d tokens", b.usd and ", " or "", math.floor(b.spent_tokens or 0),
        math.floor(b.tokens)) or "",
      string.format("$%.2f", b.reserved_usd or 0),
      #held > 0 and (" Not started (budget_exhausted): " .. esc(table.concat(held, ", ")) .. ".") or "")
  end
  for _, kind in ipairs { "by_role", "by_driver" } do
    local rows = {}
    for name, e in pairs(s.spend and s.spend[kind] or {}) do
      rows[#rows + 1] = { name = name, usd = e.usd or 0, tokens = e.tokens or 0, tasks = e.tasks or 0 }
    end
    table.sort(rows, function(x, y) return x.usd > y.usd or (x.usd == y.usd and x.name < y.name) end)
    if #rows > 0 then
      local html = {}
      for _, r in ipairs(rows) do
        html[#html + 1] = string.format("<tr><td>%s</td><td>%d</td><td>$%.4f</td><td>%d</td></tr>", esc(r.name),
          r.tasks, r.usd, math.floor(r.tokens))
      end
      parts[#parts + 1] = string.format('<table id="spend-%s"><thead><tr><th>%s</th><th>tasks</th><th>cost</th>' ..
        "<th>tokens</th></tr></thead><tbody>%s</tbody></table>", kind:gsub("_", "-"), kind == "by_role" and "role" or
        "driver", table.concat(html))
    end
  end
  parts[#parts + 1] = "</section>"
  return table.concat(parts)
end

local function status_badge(s)
  return string.format('<span class="status status-%s">%s</span>', esc(s:gsub(" ", "-")), esc(s))
end

local function summary_table(run)
  local f = run.figures
  local rows = {}
  local function row(k, v) rows[#rows + 1] = string.format("<tr><th>%s</th><td>%s</td></tr>", esc(k), v) end
  row("Status", status_badge(run.status) .. (run.stopping and (" " .. esc(run.stopping)) or ""))
  row("Tasks", string.format("%d: %d succeeded, %s%d failed, %d skipped%s%s", f.tasks, f.succeeded,
    f.up_to_date > 0 and string.format("%d up to date, ", f.up_to_date) or "", f.failed, f.skipped,
    f.interrupted > 0 and string.format(", %d interrupted", f.interrupted) or "",
    (f.running + f.pending > 0) and string.format(", %d running, %d waiting", f.running, f.pending) or ""))
  row("Attempts", tostring(f.attempts) .. (#run.retries > 0 and string.format(" (%d retries)", #run.retries) or ""))
  row("Wall time", esc(fmt(f.wall)) .. (run.live and " so far" or ""))
  row("Sequential sum", esc(fmt(f.sequential)) .. " (measured: every attempt's duration added up)")
  row("Speedup", string.format('<span id="speedup">%.2f×</span> (sequential sum ÷ wall time)', f.speedup))
  row("Time saved", esc(fmt(math.max(0, f.saved))) ..
    (f.saved < 0 and esc(string.format(" (the parallel run took %s longer)", fmt(-f.saved))) or ""))
  if #run.critical > 0 then
    row("Critical path", esc(fmt(f.critical)) .. ": " .. esc(table.concat(run.critical, " → ")))
  else
    row("Critical path", run.has_plan and "-" or "unknown (the run's plan was not recorded)")
  end
  row("Workers", string.format("%s slots, %d used at most", tostring(f.max_workers or "?"), f.lanes))
  if f.utilisation then row("Worker utilisation", string.format("%.1f%%", f.utilisation)) end
  if f.cost then row("Cost", string.format("$%.4f", f.cost)) end
  row("Mode", esc(run.mode or "-"))
  row("Started", esc(when(run.started)))
  row("Ended", run.live and "running" or esc(when(run.ended or run.ended_at)) .. (run.ended and "" or " (last sign of life)"))
  row("Run dir", "<code>" .. esc(run.dir) .. "</code>")
  return '<table id="summary-table">' .. table.concat(rows) .. "</table>"
end

-- The names in directory `dir` (a set; empty when it cannot be read).
local function files_in(dir)
  local names = {}
  local scan = uv.fs_scandir(dir)
  if not scan then return names end
  while true do
    local name = uv.fs_scandir_next(scan)
    if not name then break end
    names[name] = true
  end
  return names
end

-- The href of task dir `dir` with a "/" (from the report's dir), to which a file's name is
-- added (prompt.md, attempt-N.out: nothing to escape); `tasks` is the run's tasks/ and `prefix`
-- its href with a "/" (made once a page: a relative path of each link's whole path was most of
-- the task table's time), false where the report's dir is inside tasks/ or a path is not in
-- the plain form that makes the two the same. nil then: each file's path is made whole.
local function dir_href(tasks, prefix, dir)
  local name = dir:sub(#tasks + 2)
  if not prefix or dir:sub(1, #tasks + 1) ~= tasks .. "/" or name == "" or name:find("/", 1, true) then return nil end
  return prefix .. esc(href(name)) .. "/"
end

local function task_table(run, out_dir, view)
  local rows = { "<thead><tr><th>Task</th><th>Agent</th><th>Status</th><th>Attempts</th><th>Time</th><th>Exit</th><th>Files</th><th>Error</th></tr></thead><tbody>" }
  local badges = {}   -- status -> its badge: a few statuses, a row each
  local tasks = run.dir .. "/tasks"
  local plain = not (out_dir == tasks or out_dir:sub(1, #tasks + 1) == tasks .. "/" or out_dir:byte(-1) == 47
    or out_dir:find("//", 1, true) or tasks:find("//", 1, true))
  local prefix = plain and esc(href(M.relative(out_dir, tasks))) .. "/"   -- (see dir_href)
  local listed   -- the names in tasks/, read when first needed
  for _, id in ipairs(run.order) do
    point()
    local t = run.tasks[id]
    local eid = esc(id)
    -- the row but its start (whether the task is on the critical path): kept by a live report
    -- while the task is settled and had no event since
    local kept = view and view.rows[id]
    local rest = kept and kept.last == t.last and kept.n == #t.attempts and kept.status == t.status and kept.rest
    if not rest then
      local dir = records.task_dir(run.dir, id)
      local links = {}
      -- one read of the task's dir, not a stat per file; a task that never started has no
      -- dir, mostly: tasks/ is read once for all of them, not each missing dir tried
      local present
      if #t.attempts == 0 then
        listed = listed or files_in(tasks)
        if dir:sub(1, #tasks + 1) == tasks .. "/" and not listed[dir:sub(#tasks + 2)] then present = {} end
      end
      present = present or files_in(dir)
      local base   -- (dir_href's, or false)
      local function link(file, label)
        if present[file] then
          if base == nil then base = dir_href(tasks, prefix, dir) or false end
          links[#links + 1] = '<a href="' .. (base and base .. file or esc(href(M.relative(out_dir, dir .. "/" .. file))))
            .. '">' .. label .. "</a>"
        end
      end
      link("prompt.md", "prompt")
      if present["output.md"] then
        link("output.md", "output")
      else
        -- A command's output is the stdout of its successful attempt (not copied to output.md).
        for _, a in ipairs(t.attempts) do
          if a.outcome == "succeeded" then link("attempt-" .. ints[a.n] .. ".out", "output") end
        end
      end
      for _, a in ipairs(t.attempts) do
        local n = ints[a.n]
        link("attempt-" .. n .. ".out", "out" .. n)
        link("attempt-" .. n .. ".err", "err" .. n)
      end
      local last = t.attempts[#t.attempts]
      local outcomes = {}
      for _, a in ipairs(t.attempts) do outcomes[#outcomes + 1] = a.outcome end
      local badge = badges[t.status]
      if not badge then badge = status_badge(t.status); badges[t.status] = badge end
      rest = eid .. "</code></td><td>" .. esc(t.agent) .. "</td><td>" .. badge .. '</td><td title="'
        .. esc(table.concat(outcomes, ", ")) .. '">' .. ints[#t.attempts] .. "</td><td>"
        .. (t.first_start and t.finish and fmt(t.finish - t.first_start) or "-") .. "</td><td>"   -- (nothing to escape)
        .. (last and esc(last.exit == nil and "-" or last.exit) or "-") .. "</td><td>" .. table.concat(links, " ")
        .. "</td><td>" .. esc(t.error or "") .. "</td></tr>"
      if view and task_settled(t) then
        view.rows[id] = { last = t.last, n = #t.attempts, status = t.status, rest = rest }
      end
    end
    rows[#rows + 1] = '<tr data-task="' .. eid
      .. (run.on_critical[id] and '" class="critical"><td>★ <code>' or '"><td><code>') .. rest
  end
  rows[#rows + 1] = "</tbody>"
  return '<table id="task-table">' .. table.concat(rows, "\n") .. "</table>"
end

-- The worktree tasks' work (docs/workspaces.md): per task its branch, commit and diff stat,
-- in plan order (the order dependencies are merged in), and the result branch. "" when no
-- task had a worktree.
local function changes_section(run)
  local rows = {}
  for _, id in ipairs(run.order) do
    local t = run.tasks[id]
    if t.branch then
      local c = type(t.changes) == "table" and t.changes or {}
      rows[#rows + 1] = string.format(
        '<tr><td><code>%s</code></td><td><code>%s</code></td><td><code>%s</code></td><td>%s</td>' ..
        '<td class="added">+%s</td><td class="removed">−%s</td></tr>',
        esc(id), esc(t.branch), esc(tostring(t.commit or ""):sub(1, 10)), esc(tostring(math.tointeger(c.files) or "-")),
        esc(tostring(math.tointeger(c.added) or 0)), esc(tostring(math.tointeger(c.removed) or 0)))
    end
  end
  if #rows == 0 then return "" end
  local ws = run.summary and run.summary.workspace
  local result = ""
  if ws and ws.result_branch then
    result = string.format("<p>Result: <code>%s</code> (the tasks nothing depends on, merged in plan order onto the " ..
                           "base <code>%s</code>).</p>", esc(ws.result_branch), esc(tostring(ws.base):sub(1, 10)))
  elseif ws and ws.error then
    result = "<p>No result branch: " .. esc(ws.error) .. "; every task's branch stays.</p>"
  end
  return '<section id="changes"><h2>Changes</h2><p class="note">Each task with a git worktree: its branch, ' ..
    "its commit and what it changed against the base it started from, in plan order (a task starts from the " ..
    "base merged with its dependencies' branches in this order).</p>" .. result ..
    '<div class="scroll"><table id="changes-table"><thead><tr><th>task</th><th>branch</th><th>commit</th>' ..
    "<th>files</th><th>added</th><th>removed</th></tr></thead><tbody>" .. table.concat(rows, "\n") ..
    "</tbody></table></div></section>"
end

-- Live control's actions (coral ctl, coral attach): when, what, on what, by whom.
local function controls_section(run)
  if not run.controls or #run.controls == 0 then return nil end
  local rows = { "<table><tr><th>when</th><th>action</th><th>on</th><th>details</th><th>uid</th><th>pid</th></tr>" }
  for _, e in ipairs(run.controls) do
    local details = {}
    for _, k in ipairs { "workers", "name", "value", "reason", "note", "where" } do
      if e[k] ~= nil then details[#details + 1] = k .. " " .. tostring(e[k]) end
    end
    if type(e.tasks) == "table" then details[#details + 1] = "tasks " .. table.concat(e.tasks, ", ") end
    rows[#rows + 1] = string.format("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>",
      esc(when(e.t)), esc(tostring(e.action)), esc(tostring(e.target or "")), esc(table.concat(details, "; ")),
      esc(tostring(math.tointeger(e.uid) or e.uid)), esc(tostring(math.tointeger(e.pid) or e.pid)))
  end
  rows[#rows + 1] = "</table>"
  return '<section id="control"><h2>Live control</h2><p class="note">What coral ctl and coral attach did ' ..
    "during the run (the journal's control events).</p>" .. table.concat(rows) .. "</section>"
end

--- The report of a loaded run (coral.timeline) as HTML; `out_dir` is where the file goes (links
-- to task files are relative to it). opts.refresh: seconds between reloads (a live run);
-- opts.cache: M.write's (see page_cache), or nil.
function M.html(run, out_dir, opts)
  opts = opts or {}
  nums, escaped, ints = {}, {}, setmetatable({}, INTS)
  local view = page_cache(opts.cache, run, out_dir)
  local title = string.format("coral run %s", run.id)
  local parts = {
    "<!DOCTYPE html>",
    '<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    '<meta name="generator" content="coral">',
  }
  if opts.refresh then
    parts[#parts + 1] = string.format('<meta http-equiv="refresh" content="%d">', opts.refresh)
  end
  parts[#parts + 1] = "<title>" .. esc(title .. (run.plan_name and (" — " .. run.plan_name) or "")) .. "</title>"
  parts[#parts + 1] = "<style>" .. CSS .. "</style></head>"
  parts[#parts + 1] = string.format('<body data-run="%s" data-status="%s">', esc(run.id), esc(run.status))
  parts[#parts + 1] = string.format("<header><h1>%s%s</h1><p>%s%s</p></header>", esc(title),
    run.plan_name and (" · " .. esc(run.plan_name)) or "", esc(run.project or ""),
    run.live and string.format(" · live: this page reloads every %d s", opts.refresh or M.INTERVAL) or "")
  parts[#parts + 1] = "<main>"
  parts[#parts + 1] = '<section id="summary"><h2>Summary</h2>' .. summary_table(run) .. "</section>"
  parts[#parts + 1] = '<section id="timeline"><h2>Timeline</h2>'
  parts[#parts + 1] = string.format('<p class="note">One lane per worker slot, one bar per attempt, coloured by outcome; hover a bar for its task, agent, times and exit. <span id="dom-counts" data-expected-bars="%d" data-expected-critical-bars="%d"></span></p>',
    #run.attempts, (function()
      local n = 0
      for _, a in ipairs(run.attempts) do if run.on_critical[a.task] then n = n + 1 end end
      return n
    end)())
  parts[#parts + 1] = '<div class="scroll">' .. gantt_svg(run, view) .. limits_svg(run) .. "</div>" .. legend() .. "</section>"
  parts[#parts + 1] = '<section id="plan"><h2>Plan</h2><p class="note">Tasks by phase, arrows from a dependency to its dependent, filled by status; the critical path in red.</p>'
  parts[#parts + 1] = '<div class="scroll">' .. plan_svg(run, view) .. "</div></section>"
  parts[#parts + 1] = '<section id="tasks"><h2>Tasks</h2><div class="scroll">' .. task_table(run, out_dir, view) .. "</div></section>"
  parts[#parts + 1] = spend_section(run)
  parts[#parts + 1] = controls_section(run)
  parts[#parts + 1] = changes_section(run)
  parts[#parts + 1] = string.format('<p class="note">Written by coral at %s.</p>', esc(when(fsutil.now())))
  parts[#parts + 1] = "</main>"
  parts[#parts + 1] = "<script>" .. SCRIPT .. "</script>"
  parts[#parts + 1] = "</body></html>"
  nums, escaped, ints = {}, {}, setmetatable({}, INTS)   -- kept for one page only
  return table.concat(parts, "\n") .. "\n"
end

--- Writes the report of run dir `run_dir` to `path` (default <run dir>/report.html), atomically.
-- opts: live (the run is going on in this process), refresh (seconds; default INTERVAL when live),
-- cache (a table kept from one write of the run to the next, as the live report does: what
-- cannot have changed since, the journal's earlier lines, the plan, the parts of the page
-- drawn from settled tasks, is not read or drawn again: see page_cache), sync (false: no fsync
-- before the file replaces the last one). Returns the path, or nil and an error.
function M.write(run_dir, path, opts)
  opts = opts or {}
  path = fsutil.absolute(path or (run_dir .. "/report.html"))
  local cache = opts.cache
  if cache and cache.run_dir ~= run_dir then   -- (begun anew for another run)
    for k in pairs(cache) do cache[k] = nil end
    cache.run_dir = run_dir
  end
  local run = timeline.load(run_dir, { live = opts.live, cache = cache })
  local refresh = opts.refresh or (run.live and M.INTERVAL or nil)
  local out_dir = path:match("^(.*)/[^/]*$")
  local html = M.html(run, out_dir ~= "" and out_dir or "/", { refresh = refresh, cache = cache })
  local ok, err = fsutil.write_atomic(path, html, tonumber("600", 8), opts.sync == false)
  if not ok then return nil, err end
  return path, run
end

-- }}}
-- {{{ live report

local Live = {}
Live.__index = Live

-- The outcome of a write: the report must never break a run, so a failure is a warning, once,
-- and the report is not rewritten after it.
local function written(self, cost, ok, path, err)
  self.last_cost = cost
  if not ok then err = path elseif not path then ok = false end
  if not ok then
    self.failed = true
    io.stderr:write("coral: warning: live report: ", tostring(err), "\n")
  end
end

--- Writes the report: the final one at once; a live one in slices (coral.slice), so that the
-- run's tasks that end meanwhile are recorded and followed without waiting for the page, and
-- `after()` is called when it is written. A final write stops a live one still going.
function Live:write(final, after)
  if not self.run_dir or self.failed then return end
  if self.job then self.job:cancel(); self.job = nil end
  -- no fsync: the report is rewritten in a few seconds, and `coral report` makes it again from
  -- the run's records (the fsync of a 200-task report took longer than drawing it)
  local opts = { live = not final, cache = self.cache, sync = false }
  if final then
    local started = uv.hrtime()
    local ok, path, err = pcall(M.write, self.run_dir, nil, opts)
    return written(self, (uv.hrtime() - started) / 1e9, ok, path, err)
  end
  local job = slice.run(function() return M.write(self.run_dir, nil, opts) end, function(job, ok, path, err)
    self.job = nil
    written(self, job.spent, ok, path, err)
    if after then after() end
  end)
  if not job.ended then self.job = job end
end

--- Stops rewriting the report (idempotent). Called at the run's end, or after a failed run.
function Live:close()
  if self.timer then
    if not self.timer:is_closing() then self.timer:close() end
    self.timer = nil
  end
  if self.job then self.job:cancel(); self.job = nil end
end

-- The next live write in `wait` seconds.
function Live:rearm(wait)
  self.timer:start(math.floor(wait * 1000), 0, function() self:write_live() end)
end

-- A live write now; the next one `interval` seconds after it, or later when the run is big
-- enough to make a write costly: at most 5% of the loop's time goes to it.
function Live:write_live()
  self:write(false, function()
    if self.timer then self:rearm(math.max(self.interval, 20 * (self.last_cost or 0))) end
  end)
end

function Live:on_event(e)
  local name = e.event
  if name == "run" then
    self.run_dir = self.project_dir .. "/.coral/runs/" .. e.run_id
    if self.announce then
      io.stderr:write("coral: live report: file://", self.run_dir, "/report.html\n")
    end
    self.tasks, self.reached = math.tointeger(e.tasks) or 0, 0
    self.workers = math.tointeger(e.max_workers) or 1
    if not self.timer then
      self.timer = uv.new_timer()
      self.timer:unref()   -- never what keeps a script's loop alive
      -- The first one at the loop's next turn, after the first tasks have started (tens of ms
      -- of drawing for a plan of hundreds of tasks, in slices between which the run goes on).
      self:rearm(0)
    end
  elseif (name == "start" and e.attempt == 1) or name == "skip" or name == "up_to_date" then
    -- All but the last two workers' worth of tasks reached: the page is drawn now, between
    -- the ends of the last ones, so that the final write after them draws little more than
    -- their part (the parts of settled tasks are kept, see page_cache). Any later, and a short
    -- run's last tasks end before this write does (sleep-random at W=8: the final write took a
    -- median 25 ms with "every task reached", 19 with this, 19-22 with four workers' worth).
    self.reached = (self.reached or 0) + 1
    if self.reached == self.tasks - 2 * self.workers and self.timer and not self.job then
      self.timer:stop()
      self:write_live()
    end
  elseif name == "add" then
    self.tasks = (self.tasks or 0) + 1
  elseif name == "done" then
    self:close()
    self:write(true)
  end
end

--- Plans with more tasks than this get no live report from `coral run` (see cli/commands.lua).
M.LIVE_MAX_TASKS = 1000

--- Keeps <run dir>/report.html up to date while `runner` runs: written as the run starts (after
-- its first tasks started), every opts.interval seconds (INTERVAL) and at the end, with a reload
-- tag while it runs.
-- Chains the runner's on_event. Returns an object whose close() stops the timer (call it if
-- execute_plan raises).
function M.attach(runner, opts)
  opts = opts or {}
  -- Say where the report is when the run shows its live view (a terminal), not in logs.
  local announce = opts.announce
  if announce == nil then
    announce = runner.output == "live" or (runner.output == "auto" and require("coral.host").isatty(2))
  end
  local live = setmetatable({
    project_dir = fsutil.absolute(runner.project_dir or "."),
    interval = opts.interval or M.INTERVAL, announce = announce, cache = {},
  }, Live)
  local previous = runner.on_event
  runner.on_event = function(e)
    live:on_event(e)
    if previous then previous(e) end
  end
  return live
end

-- }}}
return M
