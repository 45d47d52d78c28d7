-- Budgets and limits (run/budget.lua, run/limits.lua, run/admission.lua) through the binary:
-- a spend ceiling planned with before tasks start, named limits and resources measured from
-- the tasks' own clocks, and a driver whose API refuses more than two requests at once.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local uv = require "luv"

local function run_dir_of(dir)
  local ids = require("coral.records").run_ids(dir)
  return ids[#ids] and (dir .. "/.coral/runs/" .. ids[#ids]) or nil
end

local function summary_of(dir)
  return cjson.decode((assert(H.read_file(run_dir_of(dir) .. "/summary.json"))))
end

local function events(dir, kind)
  local list = {}
  for line in (H.read_file(run_dir_of(dir) .. "/journal.jsonl") or ""):gmatch("[^\n]+") do
    local e = cjson.decode(line)
    if not kind or e.event == kind then list[#list + 1] = e end
  end
  return list
end

-- A project driver that reports a dollar and 150 tokens a task, as an agent CLI would.
local PAID = [[
return {
  name = "paid",
  prepare = function() return { cmd = "sleep 0.05; echo done" } end,
  finish = function(_, info)
    return { ok = info.code == 0, text = "done", cost_usd = 1, usage = { input_tokens = 100, output_tokens = 50 } }
  end,
}
]]

local SIX = [[
local coral = require "coral"
local tasks = {}
for i = 1, 6 do tasks[i] = coral.task { id = "t" .. i, agent = "worker", task = "job " .. i, driver = "paid" } end
tasks[7] = coral.task { id = "after", agent = "worker", task = "after them", driver = "paid",
                        depends_on = { "t1", "t2", "t3", "t4", "t5", "t6" } }
return coral.plan(tasks)
]]

-- The most intervals open at once, from "start end" lines (nanoseconds).
local function max_overlap(lines)
  local points = {}
  for s, e in lines:gmatch("(%d+) (%d+)") do
    points[#points + 1] = { tonumber(s), 1 }
    points[#points + 1] = { tonumber(e), -1 }
  end
  table.sort(points, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  local open, most = 0, 0
  for _, p in ipairs(points) do
    open = open + p[2]
    most = math.max(most, open)
  end
  return most, #points // 2
end

describe("a run budget", function()
  it("starts only what fits, parks the rest budget_exhausted, and a resume with a new ceiling goes on", function()
    local dir = H.tmpdir()
    uv.fs_mkdir(dir .. "/.coral", 448); uv.fs_mkdir(dir .. "/.coral/drivers", 448)
    H.write_file(dir .. "/.coral/drivers/paid.lua", PAID)
    H.write_file(dir .. "/r.lua", SIX)
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--budget-usd", "3.5", "--max-workers", "1" }
    assert.are.equal(1, r.code, r.stderr)
    -- the first has no figure to go by (0), the next ones the median of the run's: $1 each
    local s = summary_of(dir)
    assert.are.equal(3, s.succeeded)
    assert.are.equal(4, s.budget_exhausted)   -- three of t1..t6, and `after`, which waits for them
    assert.are.equal("failed", s.status)
    local parked = {}
    for i = 1, 6 do
      local res = s.results["t" .. i]
      if res.status == "budget_exhausted" then parked[#parked + 1] = res.error end
    end
    assert.are.equal(3, #parked)
    assert.matches("its expected %$1%.00 would take the run past its budget of %$3%.50", table.concat(parked, "\n"))
    assert.matches("waits for 't%d' %(budget%)", s.results.after.error)
    assert.are.equal(3.5, s.budget.usd)
    assert.are.equal(3, s.budget.spent_usd)
    assert.are.equal(2, s.budget.reserved_usd)   -- 0 + 1 + 1 reserved before the three starts
    assert.are.same({ usd = 3, tokens = 450, tasks = 3 }, s.spend.by_role.worker)
    assert.are.same({ usd = 3, tokens = 450, tasks = 3 }, s.spend.by_driver.paid)
    assert.are.equal(450, s.total_tokens)
    assert.matches("Budget Exhausted%s+4 %(not started", r.stdout)
    assert.matches("Budget%s+%$3%.00 of %$3%.50 spent", r.stdout)
    -- the soft threshold (80 %): one warning, and one event
    local warnings = events(dir, "budget_warning")
    assert.are.equal(1, #warnings)
    -- the report: the budget, what it held, and the spend per role and driver
    local html = H.read_file(run_dir_of(dir) .. "/report.html")
    assert.matches("Budget: %$3%.00 of %$3%.50 spent", html)
    assert.matches("Not started %(budget_exhausted%): t%d, t%d, t%d, after", html)
    assert.matches('<table id="spend%-by%-role">.-<td>worker</td><td>3</td><td>%$3%.0000</td><td>450</td>', html)
    assert.matches("warning   the run has spent %$3%.00 of its %$3%.50 budget %(86%%%)", r.stderr)

    -- status and why say it
    r = H.run { "status", "--dir", dir }
    assert.matches("\n  budget_exhausted after%s+attempts 0", r.stdout)
    r = H.run { "why", "after", "--dir", dir }
    assert.matches("after will run on resume if the budget allows it: it was not started because waits for", r.stdout)

    r = H.run { "resume", "--dir", dir, "--budget-usd", "10" }
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    s = summary_of(dir)
    assert.are.equal(7, s.succeeded)
    assert.are.equal(0, s.budget_exhausted)
    assert.are.equal(7, s.budget.spent_usd)   -- the first session's spend counts against the ceiling
    assert.are.equal(7, s.total_cost_usd)
    -- each task ran once
    local starts = {}
    for _, e in ipairs(events(dir, "start")) do starts[e.task] = (starts[e.task] or 0) + 1 end
    for id, n in pairs(starts) do assert.are.equal(1, n, id) end
  end)

  it("in tokens: the ceiling counts input plus output tokens", function()
    local dir = H.tmpdir()
    uv.fs_mkdir(dir .. "/.coral", 448); uv.fs_mkdir(dir .. "/.coral/drivers", 448)
    H.write_file(dir .. "/.coral/drivers/paid.lua", PAID)
    H.write_file(dir .. "/r.lua", SIX)
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--budget-tokens", "320", "--max-workers", "1", "--no-report" }
    assert.are.equal(1, r.code, r.stderr)
    local s = summary_of(dir)
    assert.are.equal(2, s.succeeded)   -- 150 + 150 = 300; a third would take 450
    assert.are.equal(300, s.budget.spent_tokens)
  end)

  it("is refused when it is not a budget", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
return coral.plan { coral.task { id = "a", cmd = "true", budget = { dollars = 1 } } }
]])
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir }
    assert.are.equal(2, r.code)
    assert.matches("r%.lua:2: coral%.task: budget: unknown field 'dollars'", r.stderr)
    r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--budget-usd", "-1" }
    assert.are.equal(2, r.code)
    assert.is_nil(run_dir_of(dir))   -- nothing written
  end)
end)

describe("limits", function()
  local TIMED = [[
local coral = require "coral"
local tasks = {}
-- each task notes its own start and end, in nanoseconds, in a file of its kind
local function timed(kind) return 's=$(date +%%s%%N); sleep 0.3; echo "$s $(date +%%s%%N)" >> ]] .. "%s/" .. [[' .. kind end
for i = 1, 8 do tasks[#tasks + 1] = coral.task { id = "c" .. i, cmd = timed("cmd") } end
for i = 1, 3 do
  tasks[#tasks + 1] = coral.task { id = "g" .. i, cmd = timed("gpu"), resources = { gpu = 1 }, priority = 10 }
end
return coral.plan(tasks)
]]

  it("a driver's limit and a resource's: never more at once, while other tasks fill the free workers", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", TIMED:format(dir))
    -- 11 command tasks: at most 4 at once (cmd = 4); the gpu ones one at a time among them
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--max-workers", "8", "--limit", "cmd=4", "--limit", "gpu=1",
                      "--no-report" }
    assert.are.equal(0, r.code, r.stderr)
    local gpu_most, gpu_n = max_overlap(H.read_file(dir .. "/gpu"))
    assert.are.equal(3, gpu_n)
    assert.are.equal(1, gpu_most)
    local all = H.read_file(dir .. "/gpu") .. H.read_file(dir .. "/cmd")
    local most, n = max_overlap(all)
    assert.are.equal(11, n)
    assert.are.equal(4, most)   -- the cmd limit is reached: the gpu tasks did not hold the others back
    assert.are.equal(4, summary_of(dir).max_parallel)
  end)

  it("limits = { cmd = 2 } at max_workers 8: two at once", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", ([[
local coral = require "coral"
local tasks = {}
for i = 1, 8 do
  tasks[i] = coral.task { id = "c" .. i, cmd = 's=$(date +%%s%%N); sleep 0.2; echo "$s $(date +%%s%%N)" >> %s/t' }
end
local runner = coral.runner { max_workers = 8, limits = { cmd = 2 }, project_dir = %q, output = "quiet" }
local s = runner:execute_plan(coral.plan(tasks))
assert(s.status == "succeeded", s.status)
]]):format(dir, dir))
    local r = H.run { dir .. "/r.lua" }
    assert.are.equal(0, r.code, r.stderr)
    local most, n = max_overlap(H.read_file(dir .. "/t"))
    assert.are.equal(8, n)
    assert.are.equal(2, most)
  end)

  it("a task asking for a resource nobody limits, or more than a limit's total, is exit 2 before the run", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
return coral.plan { coral.task { id = "a", cmd = "true", resources = { gpu = 2 } } }
]])
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--limit", "gpus=4" }
    assert.are.equal(2, r.code)
    assert.matches("r%.lua:2: task 'a' asks for resource 'gpu', which has no limit %(did you mean 'gpus'%?%)", r.stderr)
    r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--limit", "gpu=1" }
    assert.are.equal(2, r.code)
    assert.matches("task 'a' asks for 2 gpu, more than the limit's total of 1", r.stderr)
    r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--limit", "gpu" }
    assert.are.equal(2, r.code)
    assert.matches("option '%-%-limit': expected NAME=N", r.stderr)
    assert.is_nil(run_dir_of(dir))
    -- mem_gb and cpus are the machine's unless given
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
return coral.plan { coral.task { id = "a", cmd = "true", resources = { mem_gb = 1e9 } } }
]])
    r = H.run { dir .. "/r.lua", "x", "--dir", dir }
    assert.are.equal(2, r.code)
    assert.matches("more than the limit's total of %d+", r.stderr)
  end)
end)

describe("a rate-limited driver", function()
  -- An API that takes two requests at once and refuses a third (429, retry after 0 s): the
  -- command takes one of two slots (mkdir is atomic) or says so, as a CLI does.
  local API = [[
return {
  name = "api",
  prepare = function(task)
    local d = os.getenv("SLOTS")
    return { cmd = 'if mkdir ' .. d .. '/1 2>/dev/null; then s=1; elif mkdir ' .. d .. '/2 2>/dev/null; then s=2; ' ..
      'else echo "API error 429: rate limit exceeded" >&2; exit 1; fi; sleep 0.3; rmdir ' .. d .. '/$s; echo ok' }
  end,
  finish = function(_, info, ctx)
    if info.code == 0 then return { ok = true, text = "ok" } end
    local f = io.open(ctx.stderr_path)
    local err = f and f:read("a") or ""
    if f then f:close() end
    local limited = err:find("429") ~= nil
    return { ok = false, error = err, rate_limited = limited, retry_after = limited and 0 or nil }
  end,
}
]]

  it("has its limit halved and settles at what the API takes; every task succeeds", function()
    local dir = H.tmpdir()
    uv.fs_mkdir(dir .. "/.coral", 448); uv.fs_mkdir(dir .. "/.coral/drivers", 448)
    H.write_file(dir .. "/.coral/drivers/api.lua", API)
    uv.fs_mkdir(dir .. "/slots", 448)
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
local tasks = {}
for i = 1, 12 do tasks[i] = coral.task { id = "a" .. i, agent = "worker", driver = "api" } end
return coral.plan(tasks)
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--max-workers", "8" },
                    { env = H.env { SLOTS = dir .. "/slots" } })
    assert.are.equal(0, r.code, r.stderr)
    local s = summary_of(dir)
    assert.are.equal(12, s.succeeded)
    local changes = events(dir, "limit")
    assert.is_true(#changes >= 1)
    assert.are.equal("api", changes[1].name)
    assert.are.equal(4, changes[1].limit)   -- half of the 8 running when the first refusal came
    -- it ends at what the API takes: two
    assert.are.equal(2, changes[#changes].limit)
    local refused = 0
    for _, e in ipairs(events(dir, "end")) do if e.outcome == "rate-limited" then refused = refused + 1 end end
    -- the first wave's six, then a few while the limit comes down
    assert.is_true(refused >= 6 and refused <= 12, "rate-limited attempts: " .. refused)
    assert.are.equal(#changes, #s.limits)   -- summary.json keeps the changes
    -- the report draws each change under the Gantt chart
    local html = H.read_file(run_dir_of(dir) .. "/report.html")
    local drawn = 0
    for _ in html:gmatch('<circle class="limit%-change" data%-limit="api"') do drawn = drawn + 1 end
    assert.are.equal(#changes, drawn)
  end)
end)

describe("the live view", function()
  it("shows each limit in use, a throttled driver's as rate-limited, and how many tasks wait", function()
    local limits = require "coral.run.limits"
    local progress = require "coral.view.progress"
    local emitted = {}
    local run = { executor = { on_this_machine = false }, runner = { limits = { gpu = 1 } }, max_workers = 8,
                  held = { {}, {} }, emit = function(_, name, e) emitted[#emitted + 1] = { name, e } end }
    run.limits = limits.new(run, function() return "claude" end)
    local st = { task = { id = "a", resources = { gpu = 1 } } }
    assert.is_true(run.limits:admit(st))
    run.limits:take(st)
    run.limits:throttle("claude", 6, nil, nil)
    assert.are.equal("  limits: claude 1/3 (rate-limited), gpu 1/1, 2 waiting", progress.limits_line(run))
    assert.are.same({ "limit", { name = "claude", limit = 3, reason = "rate-limited with 6 running" } }, emitted[1])
    -- another of its kind waits for the gpu
    local other = { task = { id = "b", resources = { gpu = 1 } } }
    assert.are.same({ "wait", "limit gpu: 1 of 1 in use" }, { run.limits:admit(other) })
  end)
end)
