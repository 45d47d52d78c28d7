-- coral.run.modes: the execution modes as one interface, one file each, found by name; a new
-- mode is one file (shown by adding one through a CORAL_LUA_PATH tree).
local H = require "spec.helper"
local coral = require "coral"
local journal = require "coral.records.journal"
local modes = require "coral.run.modes"
local t = coral.task

-- Runs `plan` in `mode` in a fresh project; returns the summary and the journal's events.
local function run(mode, plan, opts)
  local dir = H.tmpdir()
  local ropts = { project_dir = dir, output = "quiet", mode = mode, retries = 0 }
  for k, v in pairs(opts or {}) do ropts[k] = v end
  local s = coral.runner(ropts):execute_plan(plan)
  return s, journal.read(s.run_dir)
end

-- Task ids in the order their start events were recorded.
local function starts(events)
  local out = {}
  for _, e in ipairs(events) do if e.event == "start" then out[#out + 1] = e.task end end
  return out
end

-- The most tasks running at once, from the journal.
local function most_at_once(events)
  local now, most = 0, 0
  for _, e in ipairs(events) do
    if e.event == "start" then now = now + 1; most = math.max(most, now)
    elseif e.event == "end" then now = now - 1 end
  end
  return most
end

describe("execution modes", function()
  it("are the files of run/modes, the default first", function()
    assert.are.same({ "dependency", "parallel", "phased", "pipeline", "sequential" }, modes.names())
    for _, name in ipairs(modes.names()) do
      local m = assert(modes.get(name))
      assert.are.equal(name, m.name)
      assert.is_string(m.summary)
      assert.is_string(m.label)
    end
    local m, err = modes.get("warp")
    assert.is_nil(m)
    assert.are.equal("mode must be one of dependency, parallel, phased, pipeline, sequential, got 'warp'", err)
  end)

  it("name the mode in the run event, the summary and the line output", function()
    local s, events = run("phased", coral.plan { t("a", "x", { cmd = "true" }) })
    assert.are.equal("phased", s.mode)
    assert.are.equal("phased", events[1].mode)
    local r = H.run({ "run", "full_stack", "x", "--agent", "sim", "--sim-scale", "0.001", "--dir", H.tmpdir() })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("run [^:]+: 10 tasks, mode dependency, 4 workers", r.stderr)
  end)

  it("dependency: a task starts when its own dependencies succeed, not when its phase does", function()
    -- slow and quick have no dependencies; after_quick waits for quick alone
    local s, events = run("dependency", coral.plan {
      t("slow", "s", { id = "slow", cmd = "sleep 0.6" }),
      t("quick", "q", { id = "quick", cmd = "true" }),
      t("after_quick", "a", { id = "after_quick", cmd = "true", depends_on = { "quick" } }),
      t("after_slow", "b", { id = "after_slow", cmd = "true", depends_on = { "slow" } }),
    })
    assert.are.equal(4, s.succeeded)
    local order = starts(events)
    assert.are.equal("after_quick", order[3])
  end)

  it("phased: a barrier between phases", function()
    local s, events = run("phased", coral.plan {
      { t("slow", "s", { id = "slow", cmd = "sleep 0.6" }), t("quick", "q", { id = "quick", cmd = "true" }) },
      { t("after_quick", "a", { id = "after_quick", cmd = "true", depends_on = { "quick" } }) },
    })
    assert.are.equal(3, s.succeeded)
    local ended_slow
    for _, e in ipairs(events) do
      if e.event == "end" and e.task == "slow" then ended_slow = true end
      if e.event == "start" and e.task == "after_quick" then assert.is_true(ended_slow == true) end
    end
  end)

  it("sequential: one task at a time, whatever max_workers", function()
    local s, events = run("sequential", coral.plan {
      t("a", "x", { cmd = "sleep 0.1" }), t("b", "y", { cmd = "sleep 0.1" }), t("c", "z", { cmd = "sleep 0.1" }),
    }, { max_workers = 4 })
    assert.are.equal(3, s.succeeded)
    assert.are.equal(1, s.max_workers)
    assert.are.equal(1, most_at_once(events))
  end)

  it("parallel: every task at once, dependencies ignored", function()
    local s, events = run("parallel", coral.plan {
      t("a", "x", { id = "a", cmd = "sleep 0.3" }), t("b", "y", { id = "b", cmd = "sleep 0.3", depends_on = { "a" } }),
    })
    assert.are.equal(2, s.succeeded)
    assert.are.equal(2, most_at_once(events))
  end)

  it("pipeline: a dependent reads its upstream's output while it runs; refuses an executor that cannot stream", function()
    local s = run("pipeline", coral.plan {
      t("up", "u", { id = "up", cmd = "echo one; sleep 0.3; echo two" }),
      t("down", "d", { id = "down", cmd = "tr a-z A-Z", depends_on = { "up" } }),
    })
    assert.are.equal(2, s.succeeded)
    assert.are.equal("ONE\nTWO\n", H.read_file(s.results.down.output_file))
    -- the consumer ran beside its producer: the critical path is no longer than the run
    assert.is_true(s.critical_path_seconds <= s.total_time_seconds + 1e-3,
      string.format("critical path %.3f s, wall %.3f s", s.critical_path_seconds, s.total_time_seconds))
    local dir = H.tmpdir()
    local remote = { name = "remote", start = function() error("must not start") end }
    local ok, err = pcall(function()
      return coral.runner({ project_dir = dir, output = "quiet", mode = "pipeline", executor = remote })
        :execute_plan(coral.plan { t("a", "x", { cmd = "true" }) })
    end)
    assert.is_false(ok)
    assert.matches("pipeline mode streams output between processes on this machine; the remote executor cannot",
                   tostring(err))
    assert.is_nil(H.read_file(dir .. "/.coral/runs"), "nothing written")
  end)

  it("pipeline: a failed upstream skips the consumers it started, by the failure policy, fan-in too", function()
    local function plan()
      return coral.plan {
        t("up", "u", { id = "up", cmd = "echo a; sleep 0.3; exit 1" }),
        t("up2", "u", { id = "up2", cmd = "echo b; sleep 0.6" }),
        t("down", "d", { id = "down", cmd = "cat", depends_on = { "up", "up2" } }),
        t("after", "a", { id = "after", cmd = "cat", depends_on = { "down" } }),
      }
    end
    local s, events = run("pipeline", plan(), { on_failure = "skip" })
    assert.are.equal("failed", s.results.up.status)
    assert.are.equal("succeeded", s.results.up2.status)
    for _, id in ipairs { "down", "after" } do
      assert.are.equal("skipped", s.results[id].status)
      assert.are.equal("dependency 'up' failed", s.results[id].error)
    end
    -- the consumers did start (pipeline) and were cancelled, then skipped
    local ends = {}
    for _, e in ipairs(events) do if e.event == "end" then ends[e.task] = e.outcome end end
    assert.are.equal("cancelled", ends.down)
    assert.is_true(require("coral.fsutil").read(s.run_dir .. "/summary.json") ~= nil)

    s = run("pipeline", plan(), { on_failure = "stop" })
    assert.are.equal("skipped", s.results.down.status)
    assert.are.equal("failed", s.results.up2.status)
    assert.matches("on_failure = stop", s.results.up2.error)

    s = run("pipeline", plan(), { on_failure = "continue" })
    assert.are.equal("failed", s.results.down.status)
    assert.are.equal("upstream task 'up' failed", s.results.down.error)
  end)

  it("can be added as one file", function()
    local tree = H.tmpdir()
    assert(require("coral.fsutil").mkdirs(tree .. "/lua/coral/run/modes"))
    -- newest_first: one at a time, the last declared ready task first
    H.write_file(tree .. "/lua/coral/run/modes/newest_first.lua", [[
local NewestFirst = require("coral.run.modes").extend("dependency", {
  name = "newest_first", label = "NEWEST FIRST", summary = "one at a time, the last declared ready task first",
  workers = function() return 1 end,
})
function NewestFirst:pump(free)
  local run = self.run
  local ready = run.g:ready()
  for i = #ready, 1, -1 do
    local st = run.state[ready[i] ]
    if free > 0 then run:start(st); free = free - 1 else run.retry_queue[#run.retry_queue + 1] = st end
  end
end
return NewestFirst
]])
    local dir = H.tmpdir()
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
return coral.plan { coral.task("a", "1", { cmd = "true" }), coral.task("b", "2", { cmd = "true" }),
                    coral.task("c", "3", { cmd = "true" }) }
]])
    local r = H.run({ dir .. "/plan.lua", "x", "--mode", "newest_first", "--dir", dir, "--json" },
                    { env = H.env { CORAL_LUA_PATH = tree } })
    assert.are.equal(0, r.code, r.stderr)
    local order = {}
    for line in r.stdout:gmatch("[^\n]+") do
      local e = require("cjson").decode(line)
      if e.event == "start" then order[#order + 1] = e.task end
      if e.event == "run" then assert.are.equal("newest_first", e.mode) end
    end
    assert.are.same({ "c", "b", "a" }, order)
    local help = H.run({ "run", "--help" }, { env = H.env { CORAL_LUA_PATH = tree } })
    assert.matches("dependency, newest_first, parallel", help.stdout)
  end)
end)
