-- coral.view.progress: the progress reporters (lines, json, quiet) written to a captured
-- stream, durations as text, and the summary `coral run` prints.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"

local host = require "coral.host"
local progress = require "coral.view.progress"

-- A stream that keeps what is written to it.
local function capture()
  local s = { chunks = {}, flushes = 0 }
  function s.write(self, ...)
    for _, v in ipairs { ... } do self.chunks[#self.chunks + 1] = v end
    return self
  end
  function s.flush(self) self.flushes = self.flushes + 1 end
  function s.text(self) return table.concat(self.chunks) end
  return s
end

-- A reporter of `mode` writing to a captured stream.
local function reporter(mode)
  local r = progress.new(mode)
  local out = capture()
  r.out = out
  return r, out
end

-- 03:04:05 local time (clock() prints local time), and a quarter second into it.
local T = os.time { year = 2026, month = 1, day = 2, hour = 3, min = 4, sec = 5 } + 0.25

-- Runs `code` in a coral process (a plan with a failure and a skip), in a fresh project dir.
local function run_script(output)
  local dir = H.tmpdir()
  local code = string.format([[
    local coral = require "coral"
    local t = coral.task
    coral.runner { project_dir = %q, output = %q, retries = 0 }:execute_plan(coral.plan {
      t("a", "x", { cmd = "true" }),
      t("b", "y", { cmd = "exit 3", depends_on = { "a" } }),
      t("c", "z", { cmd = "true", depends_on = { "b" } }),
    })
  ]], dir, output)
  local r = H.run({ "-e", code })
  assert.are.equal(0, r.code, r.stderr)
  return r
end

local function lines_of(text)
  local out = {}
  for l in text:gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

describe("progress.new", function()
  it("makes a reporter per mode: lines on stderr, json on stdout, quiet", function()
    local lines, json, quiet = progress.new("lines"), progress.new("json"), progress.new("quiet")
    assert.are.equal(io.stderr, lines.out)
    assert.are.equal(io.stdout, json.out)
    assert.are.equal(io.stderr, quiet.out)
    assert.are_not.equal(getmetatable(lines), getmetatable(json))
    assert.are_not.equal(getmetatable(lines), getmetatable(quiet))
    for _, r in ipairs { lines, json, quiet } do
      assert.is_function(r.event)
      assert.is_function(r.finish)
    end
    -- auto: the live view on a terminal, lines otherwise
    local auto = progress.new("auto")
    assert.are.equal(getmetatable(progress.new(host.isatty(2) and "live" or "lines")), getmetatable(auto))
  end)
end)

describe("the lines reporter", function()
  it("writes one timestamped line per event", function()
    local r, out = reporter("lines")
    local events = {
      { event = "run", t = T, run_id = "r1", tasks = 3, mode = "dependency", max_workers = 4 },
      { event = "run", t = T, run_id = "r2", tasks = 3.0, mode = "phased", max_workers = 2.0, plan = "full_stack" },
      { event = "start", t = T, task = "a", attempt = 1, pid = 4242 },
      { event = "start", t = T, task = "a", attempt = 2 },
      { event = "submit", t = T, task = "a", attempt = 1, job_id = "42" },
      { event = "adopt", t = T, task = "a", attempt = 1, job_id = 43 },
      { event = "end", t = T, task = "a", attempt = 1, outcome = "succeeded", duration = 2.5 },
      { event = "end", t = T, task = "b", attempt = 2, outcome = "failed", duration = 65, error = "exit code 1" },
      { event = "end", t = T, task = "b", attempt = 3, outcome = "timeout" },
      { event = "retry", t = T, task = "b", attempt = 2, delay = 0.5 },
      { event = "skip", t = T, task = "c", reason = "dependency 'b' failed" },
      { event = "stopping", t = T, reason = "interrupted by SIGINT" },
      { event = "done", t = T, status = "failed" },
    }
    for _, e in ipairs(events) do r:event(e) end
    r:finish({})
    assert.are.same({
      "[03:04:05] run r1: 3 tasks, mode dependency, 4 workers",
      "[03:04:05] run r2: 3 tasks, mode phased, 2 workers, plan full_stack",
      "[03:04:05] start     a (attempt 1, pid 4242)",
      "[03:04:05] start     a (attempt 2)",
      "[03:04:05] submit    a (attempt 1, job 42)",
      "[03:04:05] adopt     a (attempt 1, job 43)",
      "[03:04:05] succeeded a (attempt 1, 2.5s)",
      "[03:04:05] failed    b (attempt 2, 1m05s: exit code 1)",
      "[03:04:05] timeout   b (attempt 3, -)",
      "[03:04:05] retry     b in 0.5s (attempt 2)",
      "[03:04:05] skipped   c: dependency 'b' failed",
      "[03:04:05] stopping: interrupted by SIGINT",
    }, lines_of(out:text()))
    -- start and end lines wait for the next other line (or 100 ms, or the end): 7 writes of
    -- 13 events (the done event writes nothing)
    assert.are.equal(7, out.flushes)
  end)

  it("writes start and end lines together, with the next other line or when the run ends", function()
    local r, out = reporter("lines")
    r:event { event = "start", t = T, task = "a", attempt = 1, pid = 1 }
    r:event { event = "end", t = T, task = "a", attempt = 1, outcome = "succeeded", duration = 0 }
    assert.are.equal("", out:text())   -- waiting: a noop task costs no write of its own
    r:event { event = "skip", t = T, task = "c", reason = "condition" }
    assert.are.same({ "[03:04:05] start     a (attempt 1, pid 1)", "[03:04:05] succeeded a (attempt 1, 0.0s)",
                      "[03:04:05] skipped   c: condition" }, lines_of(out:text()))
    assert.are.equal(1, out.flushes)
    r:event { event = "start", t = T, task = "d", attempt = 1 }
    r:finish({})
    assert.matches("start     d", out:text())
    assert.are.equal(2, out.flushes)
    assert.is_nil(r.timer)   -- no handle left behind
  end)

  it("stamps an event without a time with the time now", function()
    local r, out = reporter("lines")
    local before = os.time()
    r:event({ event = "stopping", reason = "x" })
    local stamp = out:text():match("^%[(%d%d:%d%d:%d%d)%] stopping: x\n$")
    assert.is_string(stamp)
    local ok = false
    for s = before, os.time() do ok = ok or stamp == os.date("%H:%M:%S", s) end
    assert.is_true(ok, stamp)
  end)

  it("is what a run prints on stderr", function()
    local r = run_script("lines")
    assert.are.equal("", r.stdout)
    local got = lines_of(r.stderr)
    assert.are.equal(6, #got, r.stderr)
    assert.matches("^%[%d%d:%d%d:%d%d%] run [%d-]+%-%x+: 3 tasks, mode dependency, 4 workers$", got[1])
    assert.matches("^%[%d%d:%d%d:%d%d%] start     a %(attempt 1, pid %d+%)$", got[2])
    assert.matches("^%[%d%d:%d%d:%d%d%] succeeded a %(attempt 1, %d+%.%ds%)$", got[3])
    assert.matches("^%[%d%d:%d%d:%d%d%] start     b %(attempt 1, pid %d+%)$", got[4])
    assert.matches("^%[%d%d:%d%d:%d%d%] failed    b %(attempt 1, %d+%.%ds: exit code 3%)$", got[5])
    assert.matches("^%[%d%d:%d%d:%d%d%] skipped   c: dependency 'b' failed$", got[6])
  end)
end)

describe("the json reporter", function()
  it("writes each event as one JSON object per line, with its time", function()
    local r, out = reporter("json")
    local before = os.time()
    r:event({ event = "start", t = T, task = "a", attempt = 1, pid = 7 })
    r:event({ event = "stopping", reason = "a task failed" })
    r:finish({})
    local got = lines_of(out:text())
    assert.are.equal(2, #got)
    assert.are.same({ event = "start", t = T, task = "a", attempt = 1, pid = 7 }, cjson.decode(got[1]))
    local e = cjson.decode(got[2])
    assert.are.equal("stopping", e.event)
    assert.are.equal("a task failed", e.reason)
    assert.is_true(e.t >= before and e.t <= os.time(), tostring(e.t))
    assert.are.equal(2, out.flushes)
  end)

  it("is what a run prints on stdout, from run to done", function()
    local r = run_script("json")
    local names = {}
    for _, l in ipairs(lines_of(r.stdout)) do
      local e = cjson.decode(l)
      names[#names + 1] = e.event .. (e.task and (" " .. e.task) or "")
      if e.event == "done" then
        assert.are.same({ "failed", 1, 1, 1 }, { e.status, e.succeeded, e.failed, e.skipped })
      end
    end
    assert.are.same({ "run", "start a", "end a", "start b", "end b", "skip c", "done" }, names)
    assert.are.equal("", r.stderr)
  end)
end)

describe("the quiet reporter", function()
  it("writes nothing", function()
    local r, out = reporter("quiet")
    r:event({ event = "run", t = T, run_id = "r1", tasks = 1, mode = "dependency", max_workers = 1 })
    r:event({ event = "end", t = T, task = "a", attempt = 1, outcome = "failed", error = "x" })
    r:finish({})
    assert.are.same({}, out.chunks)
    assert.are.equal(0, out.flushes)
    local run = run_script("quiet")
    assert.are.equal("", run.stdout)
    assert.are.equal("", run.stderr)
  end)
end)

describe("the live view", function()
  it("shows each running task's spend as its agent streams it, and the run's in total", function()
    local uv = require "luv"
    local function task(id) return { id = id } end
    local tasks = { task("done"), task("streaming"), task("quiet") }
    local state = {
      done = { status = "succeeded", attempts = { { n = 1, outcome = "succeeded", cost_usd = 0.25,
               usage = { input_tokens = 1000, output_tokens = 200 } } } },
      -- a running attempt: its live report (tokens so far, no cost yet)
      streaming = { status = "running", attempts = { { n = 1, mono_start = uv.hrtime(),
                    live = { usage = { input_tokens = 300, output_tokens = 45 } } } } },
      quiet = { status = "running", attempts = { { n = 1, mono_start = uv.hrtime() } } },
    }
    local run = { plan = { tasks = tasks, estimate = function() return 1 end }, state = state,
                  mode = { name = "dependency" }, phases = { 1 }, max_workers = 2,
                  current_phase = function() return 1 end }
    local r = progress.new("live", run)
    local out = capture()
    r.out = out
    r:draw()
    local text = out:text()
    assert.matches("spent %$0%.2500  1%.5k tokens", text)
    assert.matches("▶ streaming%s+%d+%.%ds  345 tokens\n", text)
    assert.matches("▶ quiet%s+%d+%.%ds\n", text)
  end)
end)

describe("progress.fmt_duration", function()
  it("prints seconds with a tenth, then minutes and seconds, then hours and minutes", function()
    local cases = {
      { nil, "-" }, { 0, "0.0s" }, { 0.04, "0.0s" }, { 2.5, "2.5s" }, { 59.94, "59.9s" },
      { 60, "1m00s" }, { 65, "1m05s" }, { 125.9, "2m05s" }, { 3599.99, "59m59s" },
      { 3600, "1h00m" }, { 3725, "1h02m" }, { 7199.9, "1h59m" }, { 90000, "25h00m" },
      { 120.0, "2m00s" }, { 10, "10.0s" },
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[2], progress.fmt_duration(c[1]), tostring(c[1]))
    end
  end)
end)

describe("progress.summary_text", function()
  local function summary()
    return {
      run_id = "r1", plan = "full_stack", tasks = 10, succeeded = 7, failed = 2, skipped = 1, success_rate = 70,
      total_time_seconds = 90, sequential_estimate_seconds = 300, time_saved_seconds = 210,
      efficiency_gain_percent = 70, speedup = 10 / 3, phases = 3, max_parallel = 4, critical_path_seconds = 75.5,
      worker_utilisation_percent = 83.4, run_dir = "/p/.coral/runs/r1", interrupted = false,
      results = {
        a = { status = "succeeded" }, b = { status = "failed", error = "exit code 1" },
        c = { status = "skipped", error = "dependency 'b' failed" }, d = { status = "failed" },
      },
    }
  end

  local EXPECTED = table.concat({
    "",
    "Summary of run r1 (full_stack)",
    "  Tasks                  10",
    "  Succeeded              7",
    "  Failed                 2",
    "  Skipped                1",
    "  Success Rate           70.0%",
    "  Total Time             1m30s",
    "  Sequential Estimate    5m00s (measured sum of task times)",
    "  Time Saved             3m30s",
    "  Efficiency Gain        70.0% (3.33x speedup)",
    "  Phases                 3",
    "  Max Parallel           4",
    "  Critical Path          1m15s",
    "  Worker Utilisation     83.4%",
    "  Run Dir                /p/.coral/runs/r1",
    "",
    "  failed      b: exit code 1",
    "  failed      d: ",
    "  skipped     c: dependency 'b' failed",
  }, "\n") .. "\n"

  it("prints the figures and lists the tasks that did not succeed, sorted", function()
    assert.are.equal(EXPECTED, progress.summary_text(summary()))
  end)

  it("prints counts as integers when the summary came back from JSON as floats", function()
    local s = cjson.decode(cjson.encode(summary()))
    assert.are.equal("float", math.type(s.tasks))
    assert.are.equal(EXPECTED, progress.summary_text(s))
    s.tasks, s.max_parallel = 10.0, 4.0
    local text = progress.summary_text(s)
    assert.truthy(text:find("\n  Tasks                  10\n", 1, true))
    assert.truthy(text:find("\n  Max Parallel           4\n", 1, true))
    assert.is_nil(text:find("10.0", 1, true))
  end)

  it("says when the run was interrupted and how much slower it was than one at a time", function()
    local s = summary()
    s.plan, s.interrupted = nil, "SIGINT"
    s.time_saved_seconds, s.efficiency_gain_percent, s.speedup = -1.5, -5, 0.95
    s.results = { a = { status = "succeeded" } }
    local got = lines_of(progress.summary_text(s))
    assert.are.equal("Summary of run r1", got[2])
    assert.are.equal("  Time Saved             0.0s (parallel run was 1.5s slower)", got[10])
    assert.are.equal("  Efficiency Gain        -5.0% (0.95x speedup)", got[11])
    assert.are.equal("  Interrupted            yes (SIGINT)", got[17])
    assert.are.equal(17, #got)
  end)

  it("gives the cost the agent CLIs reported, and the tasks left unfinished", function()
    local s = summary()
    s.total_cost_usd, s.interrupted, s.interrupted_tasks = 0.01234, "sigint", 2.0
    s.results = { a = { status = "interrupted", error = "cancelled: interrupted by SIGINT" } }
    local got = lines_of(progress.summary_text(s))
    assert.are.equal("  Cost                   $0.0123 (as the agent CLIs reported it)", got[17])
    assert.are.equal("  Interrupted            yes (sigint)", got[18])
    assert.are.equal("  Unfinished             2 (interrupted; coral resume runs them)", got[19])
    assert.are.equal("  interrupted a: cancelled: interrupted by SIGINT", got[21])
  end)

  it("prints a real run's summary the same from the table and from summary.json", function()
    local coral = require "coral"
    local t = coral.task
    local dir = H.tmpdir()
    local s = coral.runner { project_dir = dir, output = "quiet", retries = 0 }:execute_plan(coral.plan {
      t("a", "x", { cmd = "true" }),
      t("b", "y", { cmd = "exit 3", depends_on = { "a" } }),
      t("c", "z", { cmd = "true", depends_on = { "b" } }),
    })
    local text = progress.summary_text(s)
    assert.are.equal(text, progress.summary_text(cjson.decode(H.read_file(s.run_dir .. "/summary.json"))))
    local got = lines_of(text)
    assert.are.equal("Summary of run " .. s.run_id, got[2])
    assert.are.equal("  Tasks                  3", got[3])
    assert.are.equal("  Succeeded              1", got[4])
    assert.are.equal("  Failed                 1", got[5])
    assert.are.equal("  Skipped                1", got[6])
    assert.are.equal("  Success Rate           33.3%", got[7])
    assert.are.equal("  Phases                 3", got[12])
    assert.are.equal("  Max Parallel           1", got[13])
    assert.are.equal("  Run Dir                " .. s.run_dir, got[16])
    assert.are.same({ "", "  failed      b: exit code 3", "  skipped     c: dependency 'b' failed" },
                    { got[17], got[18], got[19] })
    assert.are.equal(19, #got)
  end)
end)
