-- Seeing a run: plan graphs (DOT through Graphviz), the HTML report of a real run (a retry, a
-- failure, a timeout) and of a killed one, the live report, `status --gantt` and `history`.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local cjson = require "cjson"

local timeline = require "coral.view.timeline"

-- sim tasks (one fails its first attempt and is retried, one fails for good) and a cmd task
-- that times out; `after` is skipped, `deploy` waits for two branches.
local RECIPE = [[
local coral = require "coral"
local t = coral.task
return coral.recipe { summary = "report spec", plan = function(description)
  return coral.plan({
    { t("project-architect", "Design it", { id = "arch", estimate = 10 }) },
    { t("backend-developer", "Build the API", { id = "api", estimate = 10, context = { sim_fail = 1 } }),
      t("frontend-developer", "Build the UI", { id = "ui", estimate = 5 }),
      t("qa-testing", "Always fails", { id = "broken", estimate = 2, retries = 0, context = { sim_fail = 9 } }),
      t("qa-testing", "Too slow", { id = "slow", cmd = "sleep 5", timeout = 0.3, retries = 0 }) },
    { t("devops-deployment", "Deploy", { id = "deploy", estimate = 5, depends_on = { "api", "ui" } }),
      t("technical-writer", "Write up the failures", { id = "after", estimate = 1, depends_on = { "broken" } }) },
  }, { name = "report-spec", description = description })
end }
]]

local function run_recipe(dir, extra)
  H.write_file(dir .. "/plan.lua", RECIPE)
  local args = { dir .. "/plan.lua", "Report & <spec>", "--agent", "sim", "--sim-scale", "0.02", "--dir", dir, "--quiet" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return H.run(args)
end

local function only_run_dir(dir)
  local ids = require("coral.records").run_ids(dir)
  assert.are.equal(1, #ids)
  return dir .. "/.coral/runs/" .. ids[1]
end

local function joblog(run_dir)
  local rows = {}
  for line in io.lines(run_dir .. "/joblog.tsv") do
    local task, attempt, _, _, _, _, outcome = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
    if task ~= "task" then rows[#rows + 1] = { task = task, attempt = tonumber(attempt), outcome = outcome } end
  end
  return rows
end

-- The bars of an HTML report: { task, attempt, outcome, critical } per <rect class="bar ...">.
local function bars(html)
  local out = {}
  for tag in html:gmatch('<rect class="bar[^>]*>') do
    out[#out + 1] = {
      task = tag:match('data%-task="([^"]*)"'), attempt = tonumber(tag:match('data%-attempt="(%d+)"')),
      outcome = tag:match('data%-outcome="([^"]*)"'), critical = tag:find('data-critical="1"', 1, true) ~= nil,
      classes = tag:match('class="([^"]*)"'),
    }
  end
  return out
end

local function count(s, pattern)
  return select(2, s:gsub(pattern, ""))
end

-- The hrefs of links to task files, resolved from the report's directory.
local function check_links(html, report_dir)
  local n = 0
  for target in html:gmatch('<a href="([^"]+)"') do
    assert.is_nil(target:match("^%a+:"), "a link leaves the report's files: " .. target)
    local path = report_dir .. "/" .. target:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    assert.truthy(uv.fs_stat(path), "link to a missing file: " .. target)
    n = n + 1
  end
  return n
end

describe("plan graphs", function()
  it("every built-in recipe's DOT is accepted by Graphviz (dot -Tsvg)", function()
    if not require("coral.fsutil").which("dot") then
      local r = H.run({ "scripts/install-deps", "--test" }, { exe = "/bin/sh", timeout = 900 })
      assert.are.equal(0, r.code, "cannot install graphviz: " .. r.stdout .. r.stderr)
    end
    local dir = H.tmpdir()
    -- The example recipes that scan the project need something to find.
    H.write_file(dir .. "/a.lua", "return 1\n")
    H.write_file(dir .. "/Makefile", "test:\n\ttrue\n")
    local list = H.run({ "recipes" }, { cwd = dir })
    local names = {}
    for name in list.stdout:gmatch("([^\n ]+)[^\n]*\n") do names[#names + 1] = name end
    assert.is_true(#names >= 7, list.stdout)
    -- The description of those two is a pattern of what to find.
    local special = { ["examples/review_each_file"] = "%.lua$", ["examples/test_suites"] = "" }
    for _, name in ipairs(names) do
      local description = special[name] or 'A "quoted" <project> \\ with a backslash'
      local r = H.run({ "run", name, description, "--show-plan", "--format", "dot", "--dir", dir },
                      { cwd = dir })
      assert.are.equal(0, r.code, name .. ": " .. r.stderr)
      assert.truthy(r.stdout:find("newrank=true", 1, true))
      H.write_file(dir .. "/plan.dot", r.stdout)
      local svg = H.run({ "-Tsvg", dir .. "/plan.dot" }, { exe = "/usr/bin/dot" })
      assert.are.equal(0, svg.code, name .. ": dot -Tsvg: " .. svg.stderr)
      assert.truthy(svg.stdout:find("<svg", 1, true), name)
      -- the critical path is drawn in red
      assert.truthy(r.stdout:find('color="red"', 1, true), name)
    end
  end)

  it("marks the critical path in Mermaid (nodes and links) and JSON", function()
    local dir = H.tmpdir()
    local r = H.run({ "run", "full_stack", "x", "--show-plan", "--format", "mermaid" }, { cwd = dir })
    assert.are.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find("^flowchart LR\n"))
    assert.truthy(r.stdout:find("\n  linkStyle [%d,]+ stroke:#d00"))
    assert.truthy(r.stdout:find("\n  class [t%d,]+ critical\n"))
    r = H.run({ "run", "full_stack", "x", "--show-plan", "--format", "json" }, { cwd = dir })
    local plan = cjson.decode(r.stdout)
    assert.are.equal("project-architect", plan.critical_path[1])
    assert.are.equal(6, #plan.phases)
  end)
end)

describe("the run report", function()
  it("draws every attempt of a real run with its outcome, the critical path, the plan and the links", function()
    local dir = H.tmpdir()
    local r = run_recipe(dir)
    assert.are.equal(1, r.code, r.stderr)
    local run_dir = only_run_dir(dir)
    -- The live report's last rewrite is the final report; the plan was recorded for it.
    assert.truthy(uv.fs_stat(run_dir .. "/plan.json"))
    local html = assert(H.read_file(run_dir .. "/report.html"))
    assert.is_nil(html:find('http-equiv="refresh"', 1, true), "a finished run's report does not reload")

    -- Structure, and self-contained: no script, style, font or image from anywhere else.
    assert.truthy(html:find("^<!DOCTYPE html>\n<html lang=\"en\">"))
    assert.truthy(html:find("</html>\n$"))
    for _, id in ipairs { "summary", "timeline", "plan", "tasks" } do
      assert.truthy(html:find('<section id="' .. id .. '">', 1, true), id)
    end
    assert.truthy(html:find('<svg id="gantt"', 1, true))
    assert.truthy(html:find('<svg id="plan-graph"', 1, true))
    for _, tag in ipairs { "svg", "section", "g", "table", "tr", "script", "style" } do
      assert.are.equal(count(html, "<" .. tag .. "[ >]"), count(html, "</" .. tag .. ">"), "unbalanced <" .. tag .. ">")
    end
    local without_ns = html:gsub('xmlns="http://www.w3.org/2000/svg"', "")
    assert.is_nil(without_ns:find("https?://"), "the report refers to the network")
    assert.is_nil(html:find("<script src", 1, true))
    assert.is_nil(html:find("@import", 1, true))
    assert.is_nil(html:find("<link", 1, true))
    -- The description is escaped.
    assert.truthy(html:find("Report &amp; &lt;spec&gt;", 1, true))
    assert.is_nil(html:find("<spec>", 1, true))

    -- One bar per attempt, with the attempt's outcome, matching the joblog row for row.
    local rows = joblog(run_dir)
    local drawn = bars(html)
    assert.are.equal(#rows, #drawn)
    assert.are.equal(7, #rows)   -- arch, api x2, ui, broken, slow, deploy
    local by_key = {}
    for _, b in ipairs(drawn) do
      local key = b.task .. "#" .. b.attempt
      assert.is_nil(by_key[key], "two bars for " .. key)
      by_key[key] = b
    end
    for _, row in ipairs(rows) do
      local b = by_key[row.task .. "#" .. row.attempt]
      assert.truthy(b, "no bar for " .. row.task .. " attempt " .. row.attempt)
      assert.are.equal(row.outcome, b.outcome)
      assert.truthy(b.classes:find("outcome-" .. row.outcome, 1, true))
    end
    assert.are.equal("failed", by_key["api#1"].outcome)
    assert.are.equal("succeeded", by_key["api#2"].outcome)
    assert.truthy(by_key["api#2"].classes:find("retry", 1, true))
    assert.are.equal("failed", by_key["broken#1"].outcome)
    assert.are.equal("timeout", by_key["slow#1"].outcome)
    assert.is_nil(by_key["after#1"], "a skipped task has no bar")
    -- The retry is drawn as a link from the failed attempt to the next one.
    assert.truthy(html:find('<path class="retry%-link" data%-task="api"'))

    -- The critical path: arch -> api (with its retry) -> deploy, outlined, and red in the graph.
    for _, key in ipairs { "arch#1", "api#1", "api#2", "deploy#1" } do
      assert.is_true(by_key[key].critical, key .. " is on the critical path")
    end
    for _, key in ipairs { "ui#1", "broken#1", "slow#1" } do
      assert.is_false(by_key[key].critical, key .. " is not on the critical path")
    end
    assert.truthy(html:find('<g class="node critical" data-task="api"', 1, true))
    assert.truthy(html:find('<path class="edge critical" data-from="api" data-to="deploy"', 1, true))
    assert.truthy(html:find('<g class="node" data-task="after" data-status="skipped"', 1, true))
    -- Hover text: task, agent, times, exit.
    assert.truthy(html:find("<title>api — attempt 1 %(failed%)\nagent: backend%-developer\nstart %d"))
    assert.truthy(html:find("exit 1\n", 1, true))

    -- Summary: measured speedup against the sequential sum, from summary.json.
    local summary = cjson.decode(H.read_file(run_dir .. "/summary.json"))
    assert.truthy(html:find(string.format('<span id="speedup">%.2f×</span>', summary.speedup), 1, true))
    assert.truthy(html:find("Sequential sum", 1, true))

    -- Links to each task's prompt and output, relative to the report.
    local n = check_links(html, run_dir)
    assert.is_true(n >= 6 * 2)
    assert.truthy(html:find('<a href="tasks/api/prompt.md">prompt</a>', 1, true))
    assert.truthy(html:find('<a href="tasks/api/attempt-2.out">output</a>', 1, true))

    -- `coral report -o` elsewhere: links go back to the run dir.
    local out = dir .. "/site/reports/run.html"
    require("coral.fsutil").mkdirs(dir .. "/site/reports")
    local rep = H.run({ "report", "-o", out, "--dir", dir })
    assert.are.equal(0, rep.code, rep.stderr)
    assert.are.equal(out .. "\n", rep.stdout)
    local html2 = H.read_file(out)
    assert.truthy(html2:find('<a href="../../.coral/runs/[^"]+/tasks/api/prompt.md">prompt</a>'))
    assert.are.equal(n, check_links(html2, dir .. "/site/reports"))
    assert.are.equal(#rows, #bars(html2))
  end)

  it("draws the timeline in the terminal (status --gantt) and lists the history", function()
    local dir = H.tmpdir()
    local r = run_recipe(dir, { "--no-report" })
    assert.are.equal(1, r.code, r.stderr)
    local run_dir = only_run_dir(dir)
    assert.is_nil(uv.fs_stat(run_dir .. "/report.html"), "--no-report writes no report")
    local g = H.run({ "status", "--gantt", "--dir", dir }, { env = { "COLUMNS=100", "PATH=/usr/bin:/bin" } })
    assert.are.equal(0, g.code, g.stderr)
    local lines = {}
    for l in g.stdout:gmatch("[^\n]*") do lines[#lines + 1] = l end
    assert.truthy(lines[1]:find("^run %S+  failed  plan report%-spec$"))
    assert.truthy(lines[2]:find("^  wall %d+%.%ds, 7 attempts on %d workers?, speedup %d%.%d%dx$"), lines[2])
    local function row(id) for _, l in ipairs(lines) do if l:find("^[* ] " .. id .. " ") then return l end end end
    assert.truthy(row("api"):find("^%* api"), "api is on the critical path")
    assert.truthy(row("api"):find("▓"), "api's failed attempt")
    assert.truthy(row("api"):find("█"), "api's successful retry")
    assert.truthy(row("api"):find("succeeded ×2", 1, true))
    assert.truthy(row("slow"):find("▒"), "the timeout")
    assert.truthy(row("ui"):find("^  ui"))
    assert.truthy(row("after"):find("skipped", 1, true))
    assert.truthy(g.stdout:find("critical path: arch → api → deploy", 1, true))
    assert.is_nil(g.stdout:find("\27[", 1, true), "no colours when not on a terminal")
    for _, l in ipairs(lines) do assert.is_true(utf8.len(l) <= 100, "too wide: " .. l) end

    -- A second run: history lists both, and each agent's median duration across the runs.
    r = run_recipe(dir)
    assert.are.equal(1, r.code, r.stderr)
    local h = H.run({ "history", "--dir", dir, "--json" })
    assert.are.equal(0, h.code, h.stderr)
    local hist = cjson.decode(h.stdout)
    assert.are.equal(2, #hist.runs)
    for _, run in ipairs(hist.runs) do
      assert.are.equal("report-spec", run.plan)
      assert.are.equal("failed", run.status)
      assert.is_true(run.speedup > 0)
      assert.are.equal(7, run.tasks)
    end
    local state = require("coral.records").read_state(dir .. "/.coral/project_state.yaml")
    local durations = {}
    for _, e in ipairs(state.agents["backend-developer"].history) do durations[#durations + 1] = e.duration end
    local agents = {}
    for _, a in ipairs(hist.agents) do agents[a.agent] = a end
    assert.are.equal(2, agents["backend-developer"].runs)
    assert.near(require("coral.run.project_state").median(durations), agents["backend-developer"].median, 1e-9)
    assert.are.equal(0, agents["devops-deployment"].failed)
    assert.are.equal(4, agents["qa-testing"].failed)   -- broken and slow, twice
    local text = H.run({ "history", "--dir", dir })
    assert.truthy(text.stdout:find("\nagent %(succeeded tasks%)"))
    assert.truthy(text.stdout:find("\nbackend%-developer +2 "))
  end)

  it("shows a running run live, and a killed run from its journal alone", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan({
  t("worker", "quick", { id = "quick", cmd = "true" }),
  t("worker", "hangs", { id = "hang", cmd = "sleep 30", depends_on = { "quick" } }),
  t("worker", "never", { id = "never", cmd = "true", depends_on = { "hang" } }),
}, { name = "killed" })
]])
    local exited
    local proc, pid = uv.spawn(H.coral, { args = { dir .. "/plan.lua", "x", "--dir", dir, "--quiet" },
                                          stdio = { nil, nil, nil } },
                               function(code, signal) exited = { code, signal } end)
    assert(proc, pid)
    -- Wait for `hang` to start and the live report to show it running.
    local deadline = uv.hrtime() + 10e9
    local run_dir, hang
    while uv.hrtime() < deadline and not hang do
      uv.run("nowait")
      uv.sleep(50)
      local ids = require("coral.records").run_ids(dir)
      if ids[1] then
        run_dir = dir .. "/.coral/runs/" .. ids[1]
        for _, e in ipairs(require("coral.records.journal").read(run_dir)) do
          if e.event == "start" and e.task == "hang" then hang = e end
        end
      end
    end
    assert.truthy(hang, "the hanging task did not start")
    -- coral's own live report (written when the run started, rewritten every 2 s) reloads itself.
    local own = assert(H.read_file(run_dir .. "/report.html"))
    assert.truthy(own:find('<meta http-equiv="refresh" content="2">', 1, true))
    local live = timeline.load(run_dir)
    assert.are.equal("running", live.status)
    local report = require("coral.view.report")
    local path = assert(report.write(run_dir, dir .. "/live.html"))
    local html = H.read_file(path)
    assert.truthy(html:find('<meta http-equiv="refresh" content="2">', 1, true))
    assert.truthy(html:find('data-task="hang" data-attempt="1" data-outcome="running"', 1, true))
    assert.truthy(html:find('<line class="now"', 1, true))

    -- Kill coral outright: no end, no summary; then its orphaned task's process group.
    uv.kill(pid, "sigkill")
    while not exited do uv.run("once") end
    proc:close()
    uv.kill(-math.tointeger(hang.pgid), "sigkill")
    assert.is_nil(uv.fs_stat(run_dir .. "/summary.json"))

    local r = H.run({ "report", "--dir", dir })
    assert.are.equal(0, r.code, r.stderr)
    html = H.read_file(run_dir .. "/report.html")
    assert.truthy(html:find('data-status="killed"', 1, true))
    assert.is_nil(html:find('http-equiv="refresh"', 1, true))
    local drawn = bars(html)
    assert.are.equal(2, #drawn)
    local outcome = {}
    for _, b in ipairs(drawn) do outcome[b.task] = b.outcome end
    assert.are.equal("succeeded", outcome.quick)
    assert.are.equal("interrupted", outcome.hang)
    assert.truthy(html:find('<g class="node" data-task="never" data-status="pending"', 1, true))
    local g = H.run({ "status", "--gantt", "--dir", dir })
    assert.truthy(g.stdout:find("killed", 1, true))
    assert.truthy(g.stdout:find("hang +│[^\n]*▚"))
  end)
end)

describe("the timeline model", function()
  -- A journal written by hand: exact times make lanes and the critical path checkable.
  local function journal(dir, events)
    local run_dir = dir .. "/.coral/runs/r1"
    require("coral.fsutil").mkdirs(run_dir .. "/tasks")
    local lines = {}
    for _, e in ipairs(events) do lines[#lines + 1] = cjson.encode(e) end
    H.write_file(run_dir .. "/journal.jsonl", table.concat(lines, "\n") .. "\n")
    H.write_file(run_dir .. "/plan.json", cjson.encode {
      tasks = {
        { id = "a", agent = "x", depends_on = {} }, { id = "b", agent = "x", depends_on = {} },
        { id = "c", agent = "x", depends_on = { "a" } }, { id = "d", agent = "x", depends_on = { "a", "b" } },
      },
      phases = { { "a", "b" }, { "c", "d" } },
    })
    return run_dir
  end

  it("puts attempts on the first free worker lane and finds the measured critical path", function()
    local dir = H.tmpdir()
    local run_dir = journal(dir, {
      { event = "run", t = 100, run_id = "r1", tasks = 4, mode = "dependency", max_workers = 2 },
      { event = "start", t = 100, task = "a", agent = "x", attempt = 1 },
      { event = "start", t = 100, task = "b", agent = "x", attempt = 1 },
      { event = "end", t = 101, task = "a", agent = "x", attempt = 1, outcome = "succeeded", exit = 0, duration = 1 },
      { event = "start", t = 101, task = "c", agent = "x", attempt = 1 },
      { event = "end", t = 102, task = "c", agent = "x", attempt = 1, outcome = "failed", exit = 1, duration = 1 },
      { event = "retry", t = 102, task = "c", attempt = 2, delay = 0.5 },
      { event = "end", t = 103, task = "b", agent = "x", attempt = 1, outcome = "succeeded", exit = 0, duration = 3 },
      { event = "start", t = 103, task = "d", agent = "x", attempt = 1 },
      { event = "start", t = 103, task = "c", agent = "x", attempt = 2 },
      { event = "end", t = 104, task = "c", agent = "x", attempt = 2, outcome = "succeeded", exit = 0, duration = 1 },
      { event = "end", t = 106, task = "d", agent = "x", attempt = 1, outcome = "timeout", exit = 143, duration = 3 },
      { event = "done", t = 106, status = "failed" },
    })
    local run = timeline.load(run_dir)
    assert.are.equal("failed", run.status)
    assert.are.equal(2, run.lanes)
    local lane = {}
    for _, a in ipairs(run.attempts) do lane[a.task .. a.n] = a.lane end
    -- d and c's retry start together: d (started first) takes lane 1, free since c1 ended.
    assert.are.same({ a1 = 1, b1 = 2, c1 = 1, d1 = 1, c2 = 2 }, lane)
    -- b (3 s) then d (3 s) is longer than a (1) then c (1 + backoff + 1 = 3).
    assert.are.same({ "b", "d" }, run.critical)
    assert.are.equal(6, run.critical_seconds)
    assert.are.equal(6, run.figures.wall)
    assert.are.equal(9, run.figures.sequential)
    assert.are.equal(1.5, run.figures.speedup)
    assert.are.equal(1, #run.retries)
    local text = timeline.text(run, { width = 60 })
    assert.truthy(text:find("\n%* d +│[^\n]*▒"))
  end)

  it("reports a run without records, and a run id that does not exist", function()
    local dir = H.tmpdir()
    local r = H.run({ "report", "--dir", dir })
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find("^coral: no runs in "))
    journal(dir, { { event = "run", t = 100, run_id = "r1", tasks = 4, max_workers = 2 } })
    r = H.run({ "report", "nope", "--dir", dir })
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find("no run 'nope'", 1, true))
    r = H.run({ "report", "r1", "--dir", dir, "-o" })
    assert.are.equal(2, r.code)
    r = H.run({ "report", "r1", "--dir", dir })
    assert.are.equal(0, r.code, r.stderr)
    local html = H.read_file(dir .. "/.coral/runs/r1/report.html")
    assert.are.equal(0, #bars(html))
    assert.truthy(html:find('data-status="killed"', 1, true))
    local h = H.run({ "history", "--dir", dir })
    assert.truthy(h.stdout:find("\nr1 ", 1, true))
  end)
end)
