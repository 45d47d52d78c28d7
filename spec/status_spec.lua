-- coral.view.status: `coral status` and `coral why`, a run read back through its records (the
-- journal, the plan it recorded, its summary), for a killed, a live and a finished run.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local uv = require "luv"

local coral = require "coral"
local fsutil = require "coral.fsutil"
local progress = require "coral.view.progress"
local status = require "coral.view.status"

local t = coral.task

-- 2026-01-02 03:04:05 local time.
local T = os.time { year = 2026, month = 1, day = 2, hour = 3, min = 4, sec = 5 }

local function when(ts) return os.date("%Y-%m-%d %H:%M:%S", ts) end

-- A run killed at T+6, one task in every state: a succeeded; b failed twice; c skipped after b;
-- d running (pid 4242); e waits for c and d; f waits for a alone; g waiting to retry after a
-- rate limit; h skipped when the run stopped.
local PLAN = {
  name = "hand", tasks = {
    { id = "a", agent = "arch", depends_on = {} }, { id = "b", agent = "dev", depends_on = { "a" } },
    { id = "c", agent = "qa", depends_on = { "b" } }, { id = "d", agent = "dev", depends_on = { "a" } },
    { id = "e", agent = "ops", depends_on = { "a", "c", "d" } }, { id = "f", agent = "ops", depends_on = { "a" } },
    { id = "g", agent = "qa", depends_on = {} }, { id = "h", agent = "writer", depends_on = { "a" } },
  },
}
local EVENTS = {
  { event = "run", t = T, run_id = "r1", plan = "journal-name", project = "build a thing", tasks = 8,
    mode = "dependency", max_workers = 4 },
  { event = "start", t = T, task = "a", agent = "arch", attempt = 1, pid = 11 },
  { event = "end", t = T + 2, task = "a", agent = "arch", attempt = 1, outcome = "succeeded", exit = 0, duration = 2 },
  { event = "start", t = T + 2, task = "b", agent = "dev", attempt = 1, pid = 12 },
  { event = "start", t = T + 3, task = "d", agent = "dev", attempt = 1, pid = 4242 },
  { event = "end", t = T + 3, task = "b", agent = "dev", attempt = 1, outcome = "failed", exit = 1,
    error = "exit code 1", duration = 1 },
  { event = "retry", t = T + 3, task = "b", attempt = 2, delay = 0.5, reason = "exit code 1" },
  { event = "start", t = T + 4, task = "b", agent = "dev", attempt = 2, pid = 13 },
  { event = "start", t = T + 4, task = "g", agent = "qa", attempt = 1, pid = 14 },
  { event = "end", t = T + 5, task = "g", agent = "qa", attempt = 1, outcome = "rate-limited", duration = 1 },
  { event = "retry", t = T + 5, task = "g", attempt = 2, delay = 30, reason = "rate-limited" },
  { event = "end", t = T + 6, task = "b", agent = "dev", attempt = 2, outcome = "failed", exit = 2,
    error = "exit code 2", duration = 2 },
  { event = "skip", t = T + 6, task = "c", agent = "qa", reason = "dependency 'b' failed" },
  { event = "skip", t = T + 6, task = "h", agent = "writer", reason = "the run stopped" },
}

-- Project dir holding run r1 (the journal and plan above); `live`: its coral is this process.
local function project(live)
  local dir = H.tmpdir()
  local run_dir = dir .. "/.coral/runs/r1"
  assert(fsutil.mkdirs(run_dir .. "/tasks"))
  local lines = {}
  for _, e in ipairs(EVENTS) do lines[#lines + 1] = cjson.encode(e) .. "\n" end
  H.write_file(run_dir .. "/journal.jsonl", table.concat(lines))
  H.write_file(run_dir .. "/plan.json", cjson.encode(PLAN))
  if live then
    H.write_file(dir .. "/.coral/run.owner", cjson.encode { pid = uv.os_getpid(), run_id = "r1", since = T })
  end
  return dir, run_dir
end

-- A real run of three tasks: a succeeds, b fails, c is skipped.
local function real_run()
  local dir = H.tmpdir()
  local s = coral.runner { project_dir = dir, output = "quiet", retries = 0 }:execute_plan(coral.plan({
    t("arch", "design", { id = "a", cmd = "true" }),
    t("dev", "build", { id = "b", cmd = "exit 1", depends_on = { "a" } }),
    t("qa", "test", { id = "c", cmd = "true", depends_on = { "b" } }),
  }, { name = "three", description = "three tasks" }))
  return dir, s
end

describe("status.load", function()
  it("says why there is no run to load", function()
    local dir = H.tmpdir()
    local run, err = status.load(dir)
    assert.is_nil(run)
    assert.are.equal("no runs in " .. dir .. "/.coral/runs", err)
    dir = project()
    run, err = status.load(dir, "nope")
    assert.is_nil(run)
    assert.are.equal("no run 'nope' in " .. dir, err)
  end)

  it("loads the newest run, a run by id and a run dir by path", function()
    local dir, run_dir = project()
    assert(fsutil.mkdirs(dir .. "/.coral/runs/r0"))
    local newest = assert(status.load(dir))
    assert.are.equal("r1", newest.id)
    assert.are.equal(run_dir, newest.dir)
    local r0 = assert(status.load(dir, "r0"))
    assert.are.equal("r0", r0.id)
    assert.are.same({}, r0.order)
    local by_path = assert(status.load(H.tmpdir(), run_dir))
    assert.are.equal("r1", by_path.id)
    assert.are.equal("hand", by_path.plan_name)
  end)
end)

describe("a run whose coral was killed", function()
  it("is killed, not running, while its process waits to be reaped (a zombie)", function()
    local dir = project()
    -- a child of this process that exits: a zombie until the loop reaps it
    local handle
    handle = uv.spawn("true", {}, function() handle:close() end)
    local pid = handle:get_pid()
    local zombie
    for _ = 1, 200 do
      local stat = fsutil.read("/proc/" .. pid .. "/stat")
      if stat and stat:match(".*%) (%a)") == "Z" then zombie = true; break end
      uv.sleep(10)
    end
    assert.is_true(zombie, "the child never became a zombie")
    H.write_file(dir .. "/.coral/run.owner", cjson.encode { pid = pid, run_id = "r1", since = T })
    assert.are.equal("killed", assert(status.load(dir)).status)
    uv.run()   -- reaps it
    -- and a live owner (this process) is running
    H.write_file(dir .. "/.coral/run.owner", cjson.encode { pid = uv.os_getpid(), run_id = "r1", since = T })
    assert.are.equal("running", assert(status.load(dir)).status)
  end)
end)

describe("status.why", function()
  it("says why each task of a killed run will or will not run on resume", function()
    local run = assert(status.load((project())))
    assert.are.equal("killed", run.status)
    local expected = {
      a = "a will not run again: it finished successfully at " .. when(T + 2) .. " (attempt 1)",
      b = "b will not run on resume unless --retry-failed is given: it failed at " .. when(T + 6) ..
          " with exit code 2 after 2 attempts",
      c = "c was skipped because dependency 'b' failed; on resume it runs once its dependencies succeed: " ..
          "waiting for b (failed)",
      d = "d will run again: it was running (pid 4242) when the run stopped; its old process group is killed first",
      e = "e will run on resume once these finish: c (not started), d (interrupted)",
      f = "f will run on resume: it has not started yet and nothing it needs is missing",
      -- waiting out a backoff when coral died: that attempt failed
      g = "g will not run on resume unless --retry-failed is given: it failed at " .. when(T + 5) ..
          " with rate-limited after 1 attempt",
      h = "h was skipped because the run stopped; on resume it runs once its dependencies succeed",
    }
    for id, text in pairs(expected) do
      assert.are.equal(text, status.why(run, id), id)
    end
    assert.are.equal("interrupted", run.tasks.d.status)
  end)

  it("says running and retrying for a run whose coral is alive", function()
    local run = assert(status.load((project(true))))
    assert.are.equal("running", run.status)
    assert.are.equal("running", run.tasks.d.status)
    assert.are.equal("d will run again: it was running (pid 4242) when the run stopped; its old process group is " ..
                     "killed first", status.why(run, "d"))
    assert.are.equal("retrying", run.tasks.g.status)
    assert.are.equal("g will run again: it was waiting to retry after attempt 1 failed", status.why(run, "g"))
    assert.are.equal("e will run on resume once these finish: c (not started), d (running)", status.why(run, "e"))
  end)

  it("says why not for a task the run does not have", function()
    local run = assert(status.load((project())))
    local text, err = status.why(run, "zz")
    assert.is_nil(text)
    assert.are.equal("no task 'zz' in run r1", err)
  end)

  it("reads a finished run's tasks", function()
    local dir, s = real_run()
    local run = assert(status.load(dir))
    local a = run.tasks.a
    assert.are.equal("a will not run again: it finished successfully at " .. when(math.floor(a.finish)) ..
                     " (attempt 1)", status.why(run, "a"))
    assert.are.equal("b will not run on resume unless --retry-failed is given: it failed at " ..
                     when(math.floor(run.tasks.b.finish)) .. " with exit code 1 after 1 attempt", status.why(run, "b"))
    assert.are.equal("c was skipped because dependency 'b' failed; on resume it runs once its dependencies succeed: " ..
                     "waiting for b (failed)", status.why(run, "c"))
    assert.are.equal(s.run_id, run.id)
  end)
end)

describe("status.json", function()
  it("gives the run and each task's state, attempts and time", function()
    local dir, run_dir = project()
    local run = assert(status.load(dir))
    local j = status.json(run)
    assert.are.same({
      id = "r1", dir = run_dir, status = "killed", plan = "hand", project = "build a thing", mode = "dependency",
      started = T, order = { "a", "b", "c", "d", "e", "f", "g", "h" },
      tasks = {
        a = { agent = "arch", status = "succeeded", attempts = 1, duration = 2, depends_on = {} },
        b = { agent = "dev", status = "failed", attempts = 2, duration = 3, error = "exit code 2", depends_on = { "a" } },
        c = { agent = "qa", status = "skipped", attempts = 0, error = "dependency 'b' failed", depends_on = { "b" } },
        -- interrupted at the last event
        d = { agent = "dev", status = "interrupted", attempts = 1, duration = 3, depends_on = { "a" } },
        e = { agent = "ops", status = "pending", attempts = 0, depends_on = { "a", "c", "d" } },
        f = { agent = "ops", status = "pending", attempts = 0, depends_on = { "a" } },
        g = { agent = "qa", status = "failed", attempts = 1, duration = 1, error = "rate-limited", depends_on = {} },
        h = { agent = "writer", status = "skipped", attempts = 0, error = "the run stopped", depends_on = { "a" } },
      },
    }, j)
  end)

  it("gives a finished run's summary and end", function()
    local dir, s = real_run()
    local j = status.json(assert(status.load(dir)))
    assert.are.same(cjson.decode(H.read_file(s.run_dir .. "/summary.json")), j.summary)
    assert.are.same({ s.run_id, "failed", "three", "three tasks", "dependency" },
                    { j.id, j.status, j.plan, j.project, j.mode })
    assert.is_true(j.started <= j.ended)
    assert.are.same({ "a", "b", "c" }, j.order)
    assert.are.same({ "succeeded", "failed", "skipped" }, { j.tasks.a.status, j.tasks.b.status, j.tasks.c.status })
    assert.are.equal("exit code 1", j.tasks.b.error)
  end)

  it("is printed by `coral status --json` with lists as lists", function()
    local dir = project()
    local r = H.run({ "status", "--json", "--dir", dir })
    assert.are.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find('"depends_on":["a"]', 1, true))
    assert.is_nil(r.stdout:find('"depends_on":{}', 1, true))
  end)
end)

describe("status.text", function()
  it("prints a line per task", function()
    local run = assert(status.load((project())))
    assert.are.equal(table.concat({
      "run r1  killed  plan hand",
      "project: build a thing",
      "  succeeded   a                            attempts 1  2.0s",
      "  failed      b                            attempts 2  3.0s  exit code 2",
      "  skipped     c                            attempts 0  -  dependency 'b' failed",
      "  interrupted d                            attempts 1  3.0s",
      "  pending     e                            attempts 0  -",
      "  pending     f                            attempts 0  -",
      "  failed      g                            attempts 1  1.0s  rate-limited",
      "  skipped     h                            attempts 0  -  the run stopped",
    }, "\n") .. "\n", status.text(run))
  end)

  it("ends with the summary of a finished run", function()
    local dir, s = real_run()
    local run = assert(status.load(dir))
    local text = status.text(run)
    local head = "run " .. s.run_id .. "  failed  plan three\nproject: three tasks\n"
    assert.are.equal(head, text:sub(1, #head))
    local tail = progress.summary_text(run.summary) .. "\n"
    assert.are.equal(tail, text:sub(-#tail))
    assert.truthy(text:find("\n  skipped     c                            attempts 0  -  dependency 'b' failed\n", 1, true))
    assert.truthy(text:find("\n  failed      b                            attempts 1  %d+%.%ds  exit code 1\n"))
  end)
end)
