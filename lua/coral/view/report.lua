--- The HTML run report: one self-contained file (no network, no external script or font) with
-- the summary, an SVG Gantt timeline (a lane per worker slot, a bar per attempt coloured by its
-- outcome, the critical path outlined), the plan graph drawn here in SVG (layered by phase, so
-- Graphviz is not needed), and per task its figures and links to its files. While a run is
-- going, `attach` rewrites the report every few seconds and the page reloads itself.
local fsutil = require "coral.fsutil"
local records = require "coral.records"
local timeline = require "coral.view.timeline"
local uv = require "luv"

local M = {}

--- Seconds between two rewrites of a live report (and the page's reload interval).
M.INTERVAL = 2

local fmt = timeline.fmt_seconds

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }
local function esc(s)
  return (tostring(s == nil and "" or s):gsub("[&<>\"']", ESC))
end
M.escape = esc

local function num(x) return string.format("%.1f", x) end

local function clock(t)
  if not t then return "-" end
  return os.date("%H:%M:%S", math.floor(t)) .. string.format(".%d", math.floor((t % 1) * 10))
end

local function when(t)
  return t and os.date("%Y-%m-%d %H:%M:%S", math.floor(t)) or "-"
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

local function attempt_title(run, a)
  local t = run.tasks[a.task]
  local lines = {
    string.format("%s — attempt %d (%s)", a.task, a.n, a.outcome),
    "agent: " .. (a.agent or t.agent),
    string.format("start %s, end %s%s, %s", clock(a.start), a.running and "now " or "", clock(a.finish), fmt(a.duration)),
    string.format("+%s → +%s from the run's start", fmt(a.start - run.started), fmt(a.finish - run.started)),
  }
  if a.exit or a.signal then
    lines[#lines + 1] = "exit " .. tostring(a.exit == nil and "-" or a.exit)
      .. ((a.signal and a.signal ~= 0) and (", signal " .. tostring(a.signal)) or "")
  end
  if a.error then lines[#lines + 1] = "error: " .. a.error end
  if run.on_critical[a.task] then lines[#lines + 1] = "on the critical path" end
  return table.concat(lines, "\n")
end

local function gantt_svg(run)
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
  local by_key = {}
  for _, a in ipairs(run.attempts) do by_key[a.task .. "\0" .. a.n] = a end
  add('<g class="retry-links">')
  for _, a in ipairs(run.attempts) do
    local prev = a.n > 1 and by_key[a.task .. "\0" .. (a.n - 1)]
    if prev then
      local y1 = top + (prev.lane - 1) * lane_h + lane_h / 2
      local y2 = top + (a.lane - 1) * lane_h + lane_h / 2
      add(string.format('<path class="retry-link" data-task="%s" d="M%s,%s C%s,%s %s,%s %s,%s" fill="none" stroke="#555" stroke-dasharray="3,3" marker-end="url(#retry-arrow)"><title>%s</title></path>',
        esc(a.task), num(x(prev.finish)), num(y1), num(x(prev.finish) + 12), num(y1), num(x(a.start) - 12), num(y2),
        num(x(a.start)), num(y2), esc(string.format("%s: retry, attempt %d after %s", a.task, a.n, fmt(a.start - prev.finish)))))
    end
  end
  add("</g>")
  add('<g class="bars">')
  for _, a in ipairs(run.attempts) do
    local bx = x(a.start)
    local bw = math.max(x(a.finish) - bx, 2)
    local y = top + (a.lane - 1) * lane_h + (lane_h - bar_h) / 2
    local critical = run.on_critical[a.task] ~= nil
    local classes = "bar outcome-" .. a.outcome .. (critical and " critical" or "") .. (a.n > 1 and " retry" or "")
    add(string.format('<g class="attempt" data-task="%s">', esc(a.task)))
    add(string.format('<rect class="%s" data-task="%s" data-attempt="%d" data-outcome="%s" data-lane="%d"%s x="%s" y="%s" width="%s" height="%d" rx="3" fill="%s"%s><title>%s</title></rect>',
      classes, esc(a.task), a.n, esc(a.outcome), a.lane, critical and ' data-critical="1"' or "", num(bx), num(y), num(bw),
      bar_h, FILL[a.outcome] or COLORS[a.outcome] or "#d64541",
      critical and ' stroke="#111" stroke-width="2.5"' or ' stroke="#ffffff" stroke-width="0.5"',
      esc(attempt_title(run, a))))
    local label = a.task .. (a.n > 1 and (" #" .. a.n) or "")
    local fits = math.floor((bw - 6) / 6.6)
    if fits >= 3 then
      if #label > fits then label = label:sub(1, fits - 1) .. "…" end
      add(string.format('<text class="bar-label" x="%s" y="%s">%s</text>', num(bx + 4), num(y + bar_h / 2 + 4), esc(label)))
    end
    add("</g>")
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

local function plan_svg(run)
  if #run.order == 0 then return '<p class="note">No tasks recorded yet.</p>' end
  local L = graph_layout(run)
  local node_w, node_h, col_w, row_h, pad_top, pad_left = 176, 46, 232, 62, 34, 16
  local rows = 0
  for c = 1, L.columns do rows = math.max(rows, #L.by_col[c]) end
  local width = pad_left * 2 + (L.columns - 1) * col_w + node_w
  local height = pad_top + rows * row_h + 10
  local function pos(id) return pad_left + (L.col[id] - 1) * col_w, pad_top + L.row[id] * row_h end
  local critical_edge = {}
  for i = 2, #run.critical do critical_edge[run.critical[i - 1] .. "\0" .. run.critical[i]] = true end
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
  for _, id in ipairs(run.order) do
    local t = run.tasks[id]
    for _, d in ipairs(t.depends_on) do
      if run.tasks[d] then
        local sx, sy = pos(d)
        local tx, ty = pos(id)
        sx, sy, ty = sx + node_w, sy + node_h / 2, ty + node_h / 2
        local dx = math.max(40, (tx - sx) / 2)
        local crit = critical_edge[d .. "\0" .. id]
        add(string.format('<path class="edge%s" data-from="%s" data-to="%s" d="M%s,%s C%s,%s %s,%s %s,%s" fill="none" stroke="%s" stroke-width="%s" marker-end="url(#%s)"/>',
          crit and " critical" or "", esc(d), esc(id), num(sx), num(sy), num(sx + dx), num(sy), num(tx - dx), num(ty),
          num(tx - 2), num(ty), crit and "#c0392b" or "#9a9a9a", crit and "2.5" or "1.2", crit and "arrow-critical" or "arrow"))
      end
    end
  end
  for _, id in ipairs(run.order) do
    local t = run.tasks[id]
    local x, y = pos(id)
    local crit = run.on_critical[id] ~= nil
    local title = string.format("%s (%s)\n%s\nstatus: %s, %d attempt(s)%s", id, t.agent, t.text ~= "" and t.text or "",
      t.status, #t.attempts, t.first_start and t.finish and (", " .. fmt(t.finish - t.first_start)) or "")
    add(string.format('<g class="node%s" data-task="%s" data-status="%s"><title>%s</title>', crit and " critical" or "",
      esc(id), esc(t.status), esc(title)))
    add(string.format('<rect x="%d" y="%d" width="%d" height="%d" rx="6" fill="%s" stroke="%s" stroke-width="%s"/>', x, y,
      node_w, node_h, STATUS_FILL[t.status] or "#fff", crit and "#c0392b" or "#888", crit and "2.5" or "1"))
    local function clip(s, n) s = s:gsub("%s+", " "); if #s > n then s = s:sub(1, n - 1) .. "…" end; return s end
    add(string.format('<text x="%d" y="%d" class="node-title">%s</text>', x + 8, y + 18, esc(clip(id, 25))))
    add(string.format('<text x="%d" y="%d" class="node-sub">%s</text>', x + 8, y + 35,
      esc(clip(t.text ~= "" and t.text or t.agent, 30))))
    add("</g>")
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

local function task_table(run, out_dir)
  local rows = { "<thead><tr><th>Task</th><th>Agent</th><th>Status</th><th>Attempts</th><th>Time</th><th>Exit</th><th>Files</th><th>Error</th></tr></thead><tbody>" }
  for _, id in ipairs(run.order) do
    local t = run.tasks[id]
    local dir = records.task_dir(run.dir, id)
    local links = {}
    local present = files_in(dir)   -- one read of the task's dir, not a stat per file
    local function link(file, label)
      if present[file] then
        links[#links + 1] = string.format('<a href="%s">%s</a>', esc(href(M.relative(out_dir, dir .. "/" .. file))), esc(label))
      end
    end
    link("prompt.md", "prompt")
    if present["output.md"] then
      link("output.md", "output")
    else
      -- A command's output is the stdout of its successful attempt (not copied to output.md).
      for _, a in ipairs(t.attempts) do
        if a.outcome == "succeeded" then link(string.format("attempt-%d.out", a.n), "output") end
      end
    end
    for _, a in ipairs(t.attempts) do
      link(string.format("attempt-%d.out", a.n), "out" .. a.n)
      link(string.format("attempt-%d.err", a.n), "err" .. a.n)
    end
    local last = t.attempts[#t.attempts]
    local outcomes = {}
    for _, a in ipairs(t.attempts) do outcomes[#outcomes + 1] = a.outcome end
    rows[#rows + 1] = string.format(
      '<tr data-task="%s"%s><td>%s<code>%s</code></td><td>%s</td><td>%s</td><td title="%s">%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>',
      esc(id), run.on_critical[id] and ' class="critical"' or "", run.on_critical[id] and "★ " or "", esc(id), esc(t.agent),
      status_badge(t.status), esc(table.concat(outcomes, ", ")), #t.attempts,
      t.first_start and t.finish and esc(fmt(t.finish - t.first_start)) or "-",
      last and esc(last.exit == nil and "-" or last.exit) or "-", table.concat(links, " "), esc(t.error or ""))
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

--- The report of a loaded run (coral.timeline) as HTML; `out_dir` is where the file goes (links
-- to task files are relative to it). opts.refresh: seconds between reloads (a live run).
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

function M.html(run, out_dir, opts)
  opts = opts or {}
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
  parts[#parts + 1] = '<div class="scroll">' .. gantt_svg(run) .. limits_svg(run) .. "</div>" .. legend() .. "</section>"
  parts[#parts + 1] = '<section id="plan"><h2>Plan</h2><p class="note">Tasks by phase, arrows from a dependency to its dependent, filled by status; the critical path in red.</p>'
  parts[#parts + 1] = '<div class="scroll">' .. plan_svg(run) .. "</div></section>"
  parts[#parts + 1] = '<section id="tasks"><h2>Tasks</h2><div class="scroll">' .. task_table(run, out_dir) .. "</div></section>"
  parts[#parts + 1] = spend_section(run)
  parts[#parts + 1] = controls_section(run)
  parts[#parts + 1] = changes_section(run)
  parts[#parts + 1] = string.format('<p class="note">Written by coral at %s.</p>', esc(when(fsutil.now())))
  parts[#parts + 1] = "</main>"
  parts[#parts + 1] = "<script>" .. SCRIPT .. "</script>"
  parts[#parts + 1] = "</body></html>"
  return table.concat(parts, "\n") .. "\n"
end

--- Writes the report of run dir `run_dir` to `path` (default <run dir>/report.html), atomically.
-- opts: live (the run is going on in this process), refresh (seconds; default INTERVAL when live).
-- Returns the path, or nil and an error.
function M.write(run_dir, path, opts)
  opts = opts or {}
  path = fsutil.absolute(path or (run_dir .. "/report.html"))
  local run = timeline.load(run_dir, { live = opts.live })
  local refresh = opts.refresh or (run.live and M.INTERVAL or nil)
  local out_dir = path:match("^(.*)/[^/]*$")
  local ok, err = fsutil.write_atomic(path, M.html(run, out_dir ~= "" and out_dir or "/", { refresh = refresh }),
                                      tonumber("600", 8))
  if not ok then return nil, err end
  return path, run
end

-- }}}
-- {{{ live report

local Live = {}
Live.__index = Live

function Live:write(final)
  if not self.run_dir or self.failed then return end
  local started = uv.hrtime()
  local ok, path, err = pcall(M.write, self.run_dir, nil, { live = not final })
  self.last_cost = (uv.hrtime() - started) / 1e9
  if not ok then err = path elseif not path then ok = false end
  if not ok then
    -- The report must never break a run: warn once and stop rewriting it.
    self.failed = true
    io.stderr:write("coral: warning: live report: ", tostring(err), "\n")
  end
end

--- Stops rewriting the report (idempotent). Called at the run's end, or after a failed run.
function Live:close()
  if self.timer then
    if not self.timer:is_closing() then self.timer:close() end
    self.timer = nil
  end
end

function Live:on_event(e)
  if e.event == "run" then
    self.run_dir = self.project_dir .. "/.coral/runs/" .. e.run_id
    if self.announce then
      io.stderr:write("coral: live report: file://", self.run_dir, "/report.html\n")
    end
    if not self.timer then
      self.timer = uv.new_timer()
      self.timer:unref()   -- never what keeps a script's loop alive
      -- Rewritten every `interval` seconds, or less often when a big run makes a report costly:
      -- at most 5% of the loop's time goes to it.
      local function rearm(wait)
        self.timer:start(math.floor(wait * 1000), 0, function()
          self:write(false)
          if self.timer then rearm(math.max(self.interval, 20 * (self.last_cost or 0))) end
        end)
      end
      -- The first one at the loop's next turn: after the first tasks have started, which
      -- would otherwise wait for it (tens of ms for a plan of hundreds of tasks).
      rearm(0)
    end
  elseif e.event == "done" then
    self:close()
    self:write(true)
  end
end

--- Plans with more tasks than this get no live report from `coral run` (see cli/commands.lua).
M.LIVE_MAX_TASKS = 1000

--- Keeps <run dir>/report.html up to date while `runner` runs: written when the run starts,
-- every opts.interval seconds (INTERVAL) and at the end, with a reload tag while it runs.
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
    interval = opts.interval or M.INTERVAL, announce = announce,
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
