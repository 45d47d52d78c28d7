-- Dynamic tasks: a task's on_success hook adds tasks to the run (coral.run.dynamic), as a
-- recipe author writes them; refused additions and failing hooks; resume rebuilds what was added.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local coral = require "coral"
local uv = require "luv"

-- The run dir of the project's only run.
local function run_dir_of(dir)
  local ids = require("coral.records").run_ids(dir)
  return ids[1] and (dir .. "/.coral/runs/" .. ids[1]) or nil
end

-- The journal's events (what is written so far).
local function events(dir)
  local list = {}
  local run_dir = run_dir_of(dir)
  for line in (run_dir and H.read_file(run_dir .. "/journal.jsonl") or ""):gmatch("[^\n]+") do
    local ok, e = pcall(cjson.decode, line)
    if ok then list[#list + 1] = e end
  end
  return list
end

local function of_kind(list, kind)
  local out = {}
  for _, e in ipairs(list) do if e.event == kind then out[#out + 1] = e end end
  return out
end

local function succeeded_ends(dir)
  local done = {}
  for _, e in ipairs(of_kind(events(dir), "end")) do
    if e.outcome == "succeeded" then done[e.task] = true end
  end
  return done
end

-- How many times each line appears in a file (what each task appended when it ran).
local function tally(path)
  local n = {}
  for line in (H.read_file(path) or ""):gmatch("[^\n]+") do n[line] = (n[line] or 0) + 1 end
  return n
end

local function quote(s) return (s:gsub("%p", "%%%0")) end

-- A pattern for "DIR/r.lua:N", N the first line of `text` that contains `marker`.
local function line_of(dir, text, marker)
  local n = 0
  for line in text:gmatch("([^\n]*)\n") do
    n = n + 1
    if line:find(marker, 1, true) then return quote(dir .. "/r.lua:" .. n) end
  end
  error("no line with " .. marker)
end

local function summary_of(dir)
  return cjson.decode((assert(H.read_file(run_dir_of(dir) .. "/summary.json"))))
end

-- count prints how many shards there are; its hook adds one task per shard and a gather.
local SHARDS = [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("count", "how many shards", { id = "count", cmd = "mkdir -p out; echo 3",
    on_success = function(result, run)
      local f = assert(io.open(result.output))
      local n = tonumber(f:read("l"))
      f:close()
      local shards = {}
      for i = 1, n do
        shards[i] = run:add(t("shard", "shard " .. i, { id = "shard" .. i, outputs = { "out/shard" .. i .. ".txt" },
          -- long enough that the measured critical path runs through a shard, not through other
          cmd = 'sleep 0.2; echo "shard ' .. i .. ' of $(cat "$CORAL_INPUT_COUNT")" > out/shard' .. i .. '.txt' }))
      end
      run:add { id = "gather", agent = "gather", cmd = "cat out/shard*.txt > out/all.txt", depends_on = shards }
    end }),
  t("other", "independent", { id = "other", cmd = "true" }),
}
]]

describe("a task's on_success hook", function()
  it("adds the shards its task counted and a gather after them: they run, and every record shows them", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", SHARDS)
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--no-report" }
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("shard 1 of 3\nshard 2 of 3\nshard 3 of 3\n", H.read_file(dir .. "/out/all.txt"))
    assert.matches("added     shard2 %(by count%)", r.stderr)

    -- the journal: an add event per task, with its definition, after count ended and before they start
    local list = events(dir)
    local adds = of_kind(list, "add")
    assert.are.equal(4, #adds)
    local position = {}
    for i, e in ipairs(list) do position[e.event .. " " .. tostring(e.task)] = position[e.event .. " " .. tostring(e.task)] or i end
    for i, e in ipairs(adds) do
      assert.are.equal(i < 4 and ("shard" .. i) or "gather", e.task)
      assert.are.equal("count", e.by)
      assert.matches("^" .. quote(dir) .. "/r%.lua:%d+$", e.where)
      assert.is_true(position["add " .. e.task] > position["end count"])
      assert.is_true(position["add " .. e.task] < position["start " .. e.task])
    end
    assert.are.same({ "count" }, adds[1].spec.depends_on)   -- a task a hook adds depends on the hook's task
    assert.are.same({ "out/shard1.txt" }, adds[1].spec.outputs)
    assert.are.same({ "shard1", "shard2", "shard3" }, adds[4].spec.depends_on)
    assert.are.equal("cat out/shard*.txt > out/all.txt", adds[4].spec.cmd)

    local s = summary_of(dir)
    assert.are.equal("succeeded", s.status)
    assert.are.equal(6, s.tasks)
    assert.are.equal(6, s.succeeded)
    assert.are.equal(3, s.phases)   -- count, the shards, gather
    assert.are.equal("succeeded", s.results.gather.status)
    assert.is_nil(s.hook_errors)

    local plan = cjson.decode(H.read_file(run_dir_of(dir) .. "/plan.json"))
    assert.are.equal(6, #plan.tasks)
    assert.are.same({ "count", "shard1", "gather" }, plan.critical_path)

    local st = H.run { "status", "--dir", dir, "--json" }
    assert.are.equal(0, st.code, st.stderr)
    local run = cjson.decode(st.stdout)
    assert.are.same({ "count", "other", "shard1", "shard2", "shard3", "gather" }, run.order)
    assert.are.equal("count", run.tasks.shard2.added_by)
    assert.are.equal("succeeded", run.tasks.gather.status)
    local gantt = H.run { "status", "--dir", dir, "--gantt" }
    assert.matches("gather", gantt.stdout)
    assert.matches("critical path: count → shard%d → gather", gantt.stdout)
    local why = H.run { "why", "shard2", "--dir", dir }
    assert.matches("shard2 will not run again: it finished successfully .*added by the on_success hook of 'count'",
                   why.stdout)
    local report = H.run { "report", "--dir", dir }
    assert.are.equal(0, report.code, report.stderr)
    assert.truthy(H.read_file(run_dir_of(dir) .. "/report.html"):find("shard3", 1, true))
  end)

  it("is given its task's result and the states of the run", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/flaky", "")
    local seen, other
    local s = coral.runner({ project_dir = dir, output = "quiet", backoff = { base = 0.01 } }):execute_plan {
      coral.task("w", "fails once", { id = "flaky", outputs = { "made.txt" },
        cmd = "if [ -e flaky ]; then rm flaky; exit 1; fi; echo done > made.txt; echo out",
        on_success = function(result, run)
          seen, other = result, run:task("gone")
          assert(run:task("nope") == nil)
        end }),
      coral.task("w", "fails", { id = "gone", cmd = "exit 3", retries = 0 }),
    }
    assert.are.equal("failed", s.status)
    assert.are.equal("flaky", seen.id)
    assert.are.equal("succeeded", seen.status)
    assert.are.equal(2, seen.attempts)
    assert.are.same({ dir .. "/made.txt" }, seen.outputs)
    assert.are.equal("out\n", H.read_file(seen.output))
    assert.are.equal(s.results.flaky.output_file, seen.output)
    assert.near(s.results.flaky.duration_seconds, seen.duration, 1e-9)
    assert.are.equal("gone", other.id)
    assert.truthy(other.status == "failed" or other.status == "running" or other.status == "pending")
  end)

  it("that adds an unknown dependency or a cycle adds nothing: a warning with the recipe's line, the run goes on", function()
    local dir = H.tmpdir()
    local recipe = [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("a", "first", { id = "a", cmd = "true",
    on_success = function(_, run)  -- hook of a
      run:add(t("b", "fine alone", { id = "b", cmd = "touch b-ran" }))
      run:add(t("c", "needs nope", { id = "c", cmd = "true", depends_on = { "nope" } }))  -- unknown
    end }),
  t("d", "second", { id = "d", cmd = "true",
    on_success = function(_, run)  -- hook of d
      run:add(t("e", "x", { id = "e", cmd = "touch e-ran", depends_on = { "f" } }),  -- cycle
              t("f", "y", { id = "f", cmd = "true", depends_on = { "e" } }))
    end }),
  t("later", "after a", { id = "later", cmd = "touch later-ran", depends_on = { "a" } }),
}
]]
    H.write_file(dir .. "/r.lua", recipe)
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report" }
    assert.are.equal(1, r.code, r.stderr)
    assert.matches("coral: warning: on_success of task 'a' %(" .. line_of(dir, recipe, "-- hook of a") .. "%) added " ..
      "tasks the run refused: " .. line_of(dir, recipe, "-- unknown") .. ": task 'c' depends on unknown task 'nope'",
      r.stderr)
    assert.matches("coral: warning: on_success of task 'd' %(" .. line_of(dir, recipe, "-- hook of d") .. "%) added " ..
      "tasks the run refused: " .. line_of(dir, recipe, "-- cycle") .. ": dependency cycle: e %-> f %-> e", r.stderr)
    -- nothing of either call was added; the rest of the run went on
    assert.is_nil(H.read_file(dir .. "/b-ran"))
    assert.is_nil(H.read_file(dir .. "/e-ran"))
    assert.truthy(H.read_file(dir .. "/later-ran"))
    assert.are.equal(0, #of_kind(events(dir), "add"))
    local errors = of_kind(events(dir), "hook_error")
    assert.are.equal(2, #errors)
    local s = summary_of(dir)
    assert.are.equal("failed", s.status)   -- the recipe's mistake: what it meant to run did not
    assert.are.equal(3, s.tasks)
    assert.are.equal(3, s.succeeded)
    assert.are.equal(0, s.failed)
    assert.are.equal(2, #s.hook_errors)
    assert.are.equal("succeeded", s.results.a.status)   -- the task itself succeeded
    assert.matches("hook error  on_success of task 'a'", r.stdout)
    local run = cjson.decode(H.run({ "status", "--dir", dir, "--json" }).stdout)
    assert.are.same({ "a", "d", "later" }, run.order)
  end)

  it("that raises adds nothing; once the recipe is fixed, coral resume calls it again and runs what it adds", function()
    local dir = H.tmpdir()
    local recipe = [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("a", "first", { id = "a", cmd = "echo a >> ran",
    on_success = function(_, run)
      run:add(t("x", "extra", { id = "x", cmd = "echo x >> ran" }))
      error("no extras today")
    end }),
}
]]
    H.write_file(dir .. "/r.lua", recipe)
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--no-report" }
    assert.are.equal(1, r.code, r.stderr)
    assert.matches("warning   on_success of task 'a' %(" .. line_of(dir, recipe, "on_success") .. "%) raised an error: " ..
      line_of(dir, recipe, "error(") .. ": no extras today", r.stderr)
    assert.are.same({ a = 1 }, tally(dir .. "/ran"))
    local s = summary_of(dir)
    assert.are.equal("failed", s.status)
    assert.are.equal(1, s.tasks)
    assert.are.equal("succeeded", s.results.a.status)

    H.write_file(dir .. "/r.lua", (recipe:gsub('error%("no extras today"%)', "")))
    local resumed = H.run { "resume", "--dir", dir, "--quiet" }
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    assert.are.same({ a = 1, x = 1 }, tally(dir .. "/ran"))   -- a is not run again
    -- x is journaled in the resumed session, after its run event (its time is this session's)
    local kinds = {}
    for _, e in ipairs(events(dir)) do kinds[#kinds + 1] = e.event .. (e.task and (" " .. e.task) or "") end
    assert.are.same({ "run", "spawn a", "start a", "end a", "hook_error a", "done", "run", "add x", "spawn x", "start x",
                      "end x", "done" }, kinds)
    s = summary_of(dir)
    assert.are.equal("succeeded", s.status)
    assert.are.equal(2, s.succeeded)
  end)
end)

describe("a resumed run", function()
  -- count's hook adds four slow shards, each with a condition that notes it was asked, and a
  -- gather; every task notes that it ran.
  local function recipe(dir, with_hook)
    return ([[
local coral = require "coral"
local t = coral.task
local function asked(id)
  return function()
    local f = assert(io.open("DIR/asked", "a"))
    f:write(id, "\n")
    f:close()
    return true
  end
end
return coral.plan {
  t("count", "how many", { id = "count", cmd = "echo 4; echo count >> ran", retries = 0,
    on_success = HOOK and function(result, run)
      local f = assert(io.open(result.output))
      local n = tonumber(f:read("l"))
      f:close()
      local shards = {}
      for i = 1, n do
        shards[i] = run:add(t("shard", "shard " .. i, { id = "shard" .. i, when = asked("shard" .. i), retries = 0,
          cmd = "test ! -e broken-" .. i .. " || exit 1; sleep 0.3; echo shard" .. i .. " >> ran" }))
      end
      run:add { id = "gather", agent = "gather", cmd = "echo gather >> ran", depends_on = shards }
    end or nil }),
}
]]):gsub("DIR", dir):gsub("HOOK", tostring(with_hook)), nil
  end

  it("after kill -9 rebuilds the added tasks with their functions, and does not run the succeeded ones again", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", recipe(dir, true))
    local r = H.start { dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report", "--max-workers", "1" }
    -- killed while shard3 runs: its start is journaled (a kill between its condition and its
    -- start would rightly ask the condition again, as nothing of it was recorded)
    H.wait_until(function()
      local done = succeeded_ends(dir)
      if not (done.shard1 and done.shard2) then return false end
      for _, e in ipairs(of_kind(events(dir), "start")) do
        if e.task == "shard3" then return true end
      end
      return false
    end)
    uv.kill(r.pid, "sigkill")
    H.wait_for(r)
    local done_before = succeeded_ends(dir)
    assert.is_nil(done_before.gather)
    local run = cjson.decode(H.run({ "status", "--dir", dir, "--json" }).stdout)
    assert.are.equal("killed", run.status)
    assert.are.equal("pending", run.tasks.gather.status)   -- a killed run's views know the added tasks

    local resumed = H.run { "resume", "--dir", dir, "--quiet" }
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    assert.is_nil(resumed.stderr:find("without their functions", 1, true), resumed.stderr)
    local ran = tally(dir .. "/ran")
    for _, id in ipairs { "count", "shard1", "shard2", "shard3", "shard4", "gather" } do
      assert.truthy(ran[id], id .. " never ran")
      if done_before[id] then assert.are.equal(1, ran[id], id .. " ran twice") end
    end
    -- each shard's condition was asked once: those that had not started were asked by this
    -- session, so their `when` came back with them
    assert.are.same({ shard1 = 1, shard2 = 1, shard3 = 1, shard4 = 1 }, tally(dir .. "/asked"))
    assert.are.equal(5, #of_kind(events(dir), "add"))   -- journaled once, not again by the resume
    local s = summary_of(dir)
    assert.are.equal("succeeded", s.status)
    assert.are.equal(6, s.tasks)
    assert.are.equal(6, s.succeeded)
  end)

  it("after a failure fixed (--retry-failed) runs the failed added task again, and only it", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", recipe(dir, true))
    H.write_file(dir .. "/broken-3", "")
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report" }
    assert.are.equal(1, r.code, r.stderr)
    local s = summary_of(dir)
    assert.are.equal("failed", s.results.shard3.status)
    assert.are.equal("skipped", s.results.gather.status)
    os.remove(dir .. "/broken-3")
    local resumed = H.run { "resume", "--retry-failed", "--dir", dir, "--quiet" }
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    assert.are.same({ count = 1, shard1 = 1, shard2 = 1, shard3 = 1, shard4 = 1, gather = 1 }, tally(dir .. "/ran"))
    s = summary_of(dir)
    assert.are.equal("succeeded", s.status)
    assert.are.equal(6, s.succeeded)
  end)

  it("rebuilds from the journal, without their functions, the added tasks no hook adds back", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", recipe(dir, true))
    H.write_file(dir .. "/broken-2", "")
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report" }
    assert.are.equal(1, r.code, r.stderr)
    os.remove(dir .. "/broken-2")
    H.write_file(dir .. "/r.lua", recipe(dir, false))   -- the hook is gone from the recipe
    local resumed = H.run { "resume", "--retry-failed", "--dir", dir, "--quiet" }
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    assert.matches("coral: warning: no hook added these tasks back, so they are rebuilt from the journal without " ..
      "their functions: shard2 %(when%)\n", resumed.stderr)
    assert.are.same({ count = 1, shard1 = 1, shard2 = 1, shard3 = 1, shard4 = 1, gather = 1 }, tally(dir .. "/ran"))
    -- shard2's condition did not come back: it was asked once, in the first session
    assert.are.same({ shard1 = 1, shard2 = 1, shard3 = 1, shard4 = 1 }, tally(dir .. "/asked"))
    assert.are.equal(6, summary_of(dir).succeeded)
  end)
end)

describe("the execution modes", function()
  local function shards_plan(mark)
    local t = coral.task
    return {
      t("count", "c", { id = "count", cmd = "true", on_success = function(_, run)
        local ids = {}
        for i = 1, 3 do ids[i] = run:add(t("shard", "s", { id = "shard" .. i, cmd = "true" })) end
        run:add(t("gather", "g", { id = "gather", cmd = "true", depends_on = ids }))
      end }),
      t("slow", "s", { id = "slow", cmd = "sleep " .. mark }),
    }
  end

  it("dependency, sequential, parallel and phased take added tasks; phased keeps its barrier", function()
    for _, mode in ipairs { "dependency", "sequential", "parallel", "phased" } do
      local dir = H.tmpdir()
      local plan = shards_plan(0.3)
      if mode == "phased" then plan = { plan, { coral.task("after", "a", { id = "after", cmd = "true" }) } } end
      local s = coral.runner({ project_dir = dir, output = "quiet", mode = mode }):execute_plan(plan)
      assert.are.equal("succeeded", s.status, mode)
      assert.are.equal(mode == "phased" and 7 or 6, s.succeeded, mode)
      if mode == "phased" then
        -- the shards joined phase 2, after count's: they waited for slow, the end of phase 1
        for i = 1, 3 do
          assert.is_true(s.results["shard" .. i].started >= s.results.slow.finished, "shard" .. i .. " crossed the barrier")
        end
        assert.are.equal(3, s.phases)
      end
    end
  end)

  it("pipeline refuses them: a hook error, the run goes on", function()
    local dir = H.tmpdir()
    local s = coral.runner({ project_dir = dir, output = "quiet", mode = "pipeline" }):execute_plan(shards_plan(0))
    assert.are.equal("failed", s.status)
    assert.are.equal(2, s.tasks)
    assert.are.equal(2, s.succeeded)
    assert.matches("pipeline mode cannot take tasks added while it runs", s.hook_errors[1].error)
  end)
end)

describe("Run:add", function()
  local Run = require("coral.run").Run

  -- Runs `plan`, calling fn(run) with the internal Run in the first on_success hook.
  local function with_run(dir, plan, fn, opts)
    local saved = Run.on_success
    local captured
    Run.on_success = function(self, st)
      if not captured then captured = self; fn(self) end
      return saved(self, st)
    end
    local ok, s = pcall(function()
      local ropts = { project_dir = dir, output = "quiet", retries = 0 }
      for k, v in pairs(opts or {}) do ropts[k] = v end
      return coral.runner(ropts):execute_plan(plan)
    end)
    Run.on_success = saved
    assert(ok, s)
    return s, captured
  end

  it("adds all or nothing, and says what is wrong with the line that declared it", function()
    local dir = H.tmpdir()
    local t = coral.task
    local results = {}
    local s, run = with_run(dir, {
      t("a", "first", { id = "a", cmd = "true", on_success = function() end }),
      t("r", "reads", { id = "r", cmd = "true", inputs = { "data.txt" }, depends_on = { "a" } }),
    }, function(run)
      results.bad = { run:add { t("x", "fine", { id = "x", cmd = "true" }),
                                t("y", "not", { id = "y", cmd = "true", depends_on = { "zz" } }) } }
      results.after_bad = run.plan.by_id.x == nil and run.state.x == nil
      results.dup = { run:add(t("a", "again", { id = "a", cmd = "true" })) }
      results.reader = { run:add(t("w", "writes", { id = "w", cmd = "true", outputs = { "data.txt" } })) }
      results.option = { run:add { agent = "q", cmd = "true", retries = "3" } }
      results.good = { run:add { t("x", "fine", { id = "x", cmd = "true" }), { agent = "y", cmd = "true" } } }
    end)
    assert.is_nil(results.bad[1])
    assert.matches("dynamic_spec%.lua:%d+: task 'y' depends on unknown task 'zz'$", results.bad[2])
    assert.is_true(results.after_bad)
    assert.matches("duplicate task id 'a' %(first declared at .*dynamic_spec%.lua:%d+%)", results.dup[2])
    assert.matches("task 'w' declares output 'data.txt', which task 'r' reads", results.reader[2])
    assert.matches("dynamic_spec%.lua:%d+: coral.task: option 'retries' must be integer, got string$",
                   results.option[2])
    assert.are.same({ { "x", "y" } }, results.good)
    assert.are.equal("succeeded", s.status)
    assert.are.equal(4, s.succeeded)
    assert.are.same({ "x", "y" }, (function()
      local ids = {}
      for _, e in ipairs(of_kind(events(dir), "add")) do ids[#ids + 1] = e.task end
      return ids
    end)())
    assert.are.same({ nil, "the run is over: no task can be added to it" },
                    { run:add(t("z", "late", { id = "z", cmd = "true" })) })
  end)

  it("skips at once a task behind a dependency that failed", function()
    local dir = H.tmpdir()
    local t = coral.task
    local s = coral.runner({ project_dir = dir, output = "quiet", retries = 0 }):execute_plan {
      t("bad", "fails", { id = "bad", cmd = "exit 1" }),
      t("late", "after a while", { id = "late", cmd = "sleep 0.3", on_success = function(_, run)
        run:add(t("z", "needs bad", { id = "z", cmd = "true", depends_on = { "bad" } }))
      end }),
    }
    assert.are.equal("skipped", s.results.z.status)
    assert.are.equal("dependency 'bad' failed", s.results.z.error)
  end)
end)
