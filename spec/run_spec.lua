-- coral.run as a whole: what a run records whatever the views (plan.json, the mode), and the
-- paths over the plan that must not recurse (a 100,000-task chain declared dependents-first).
local H = require "spec.helper"
local cjson = require "cjson"
local coral = require "coral"
local journal = require "coral.records.journal"
local summary_mod = require "coral.run.summary"

-- A chain of n tasks declared dependents-first: t1 depends on t2, ..., t(n-1) on tn.
local function chain(n)
  local tasks = {}
  for i = 1, n do
    tasks[i] = { id = "t" .. i, agent = "a", cmd = "true", estimate = 1, depends_on = i < n and { "t" .. (i + 1) } or {} }
  end
  return tasks
end

describe("a run", function()
  it("records its plan and its mode whatever the report options", function()
    local dir = H.tmpdir()
    local r = H.run({ "run", "full_stack", "x", "--agent", "sim", "--sim-scale", "0.001", "--no-report", "--dir", dir })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("mode dependency", r.stderr)
    local ids = require("coral.records").run_ids(dir)
    local run_dir = dir .. "/.coral/runs/" .. ids[1]
    assert.is_nil(H.read_file(run_dir .. "/report.html"), "--no-report writes no report")
    local plan = cjson.decode((assert(H.read_file(run_dir .. "/plan.json"))))
    assert.are.equal(10, #plan.tasks)
    assert.are.equal("full_stack", plan.name)
    assert.are.equal("dependency", journal.read(run_dir)[1].mode)
    -- a later report draws the recorded plan and names the mode
    local rep = H.run({ "report", "--dir", dir })
    assert.are.equal(0, rep.code, rep.stderr)
    local html = assert(H.read_file(run_dir .. "/report.html"))
    assert.truthy(html:find("<tr><th>Mode</th><td>dependency</td></tr>", 1, true))
  end)

  it("draws the plan it ran, not the recipe as it is today", function()
    local dir = H.tmpdir()
    local recipe = dir .. "/r.lua"
    H.write_file(recipe, 'local coral = require "coral"\nreturn coral.plan { coral.task("first", "x", { cmd = "true" }) }\n')
    local r = H.run({ recipe, "x", "--dir", dir, "--quiet", "--no-report" })
    assert.are.equal(0, r.code, r.stderr)
    H.write_file(recipe, 'local coral = require "coral"\nreturn coral.plan { coral.task("second", "y", { cmd = "true" }) }\n')
    local st = H.run({ "status", "--dir", dir, "--json" })
    local run = cjson.decode(st.stdout)
    assert.are.same({ "first" }, run.order)
  end)

  it("blames the recipe file for a plan it returned by a tail call", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", 'local coral = require "coral"\n' ..
      'return coral.plan { { agent = "a", cmd = "true", depends_on = { "zz" } } }\n')
    for _, args in ipairs { { "run", dir .. "/r.lua" }, { dir .. "/r.lua" } } do
      local argv = { table.unpack(args) }
      for _, a in ipairs { "x", "--dir", dir } do argv[#argv + 1] = a end
      local r = H.run(argv)
      assert.are.equal(2, r.code)
      assert.matches(dir:gsub("%p", "%%%0") .. "/r.lua: task 'a' depends on unknown task 'zz'\n$", r.stderr)
      assert.is_nil(r.stderr:find("traceback", 1, true))
    end
    assert.is_nil(H.read_file(dir .. "/.coral/runs"), "nothing written")
  end)

  it("refuses bad input before anything is written: exit 2, one line naming the culprit", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", 'local coral = require "coral"\nreturn { coral.task("a", "x", { cmd = "true" }) }\n')
    local cases = {
      { { "--timeout", "-1" }, "^coral: option '%-%-timeout' must be at least 0, got %-1\n$" },
      { { "--retries", "-1" }, "^coral: option '%-%-retries' must be at least 0, got %-1\n$" },
      { { "--idle-timeout", "-1" }, "^coral: option '%-%-idle%-timeout' must be at least 0, got %-1\n$" },
      { { "--executor", "bogus" }, "^coral: unknown executor 'bogus' %(executors: local, slurm%)\n$" },
      { { "--max-worker", "2" }, "did you mean '%-%-max%-workers'%?" },
    }
    for _, case in ipairs(cases) do
      local args = { dir .. "/r.lua", "x", "--dir", dir, table.unpack(case[1]) }
      local r = H.run(args)
      assert.are.equal(2, r.code, table.concat(case[1], " "))
      assert.matches(case[2], r.stderr)
    end
    assert.is_nil(H.read_file(dir .. "/.coral/runs"), "nothing written")
    -- an empty plan, and a typo in execute_plan's options
    local runner = coral.runner { project_dir = dir, output = "quiet" }
    local ok, err = pcall(runner.execute_plan, runner, coral.plan {})
    assert.is_false(ok)
    assert.matches("the plan has no tasks: nothing to run$", tostring(err))
    ok, err = pcall(runner.execute_plan, runner, coral.plan { coral.task("a", "x", { cmd = "true" }) }, { resme = "x" })
    assert.is_false(ok)
    assert.matches("execute_plan: unknown option 'resme' %(did you mean 'resume'%?", tostring(err))
    assert.is_nil(H.read_file(dir .. "/.coral/runs"), "nothing written")
    -- a script returning a bare list of tasks runs it
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet" }
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("Succeeded%s+1\n", r.stdout)
  end)

  it("gives a task its dependencies' outputs: CORAL_INPUT_<ID>, CORAL_INPUTS, CORAL_TASK_DIR", function()
    local dir = H.tmpdir()
    local plan = coral.plan {
      -- fails once, then succeeds: its output is its second attempt's stdout
      coral.task("gen", "g", { id = "gen-data", retries = 1,
        cmd = "if [ -e once ]; then mkdir -p out; echo 42 > out/data.txt; echo second; else touch once; echo first; exit 1; fi",
        outputs = { "out/data.txt" } }),
      coral.task("use", "u", { id = "use", inputs = { "./out/data.txt" }, cmd =
        'echo "$CORAL_INPUT_GEN_DATA"; cat "$CORAL_INPUT_GEN_DATA"; cat "$CORAL_INPUTS"; echo "$CORAL_TASK_DIR"' }),
      coral.task("liar", "l", { id = "liar", cmd = "true", outputs = { "never.txt" }, retries = 0 }),
    }
    assert.are.same({ "gen-data" }, plan.by_id.use.depends_on)   -- found from the files it reads
    assert.matches("use +u  <%- gen%-data %(reads its out/data.txt%)", plan:to_text())
    local s = coral.runner({ project_dir = dir, output = "quiet", backoff = { base = 0.01 } }):execute_plan(plan)
    assert.are.equal("succeeded", s.results.use.status)
    local out = H.read_file(s.results.use.output_file)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    local task_dir = s.run_dir .. "/tasks/use"
    assert.are.equal(s.run_dir .. "/tasks/gen-data/attempt-2.out", lines[1])
    assert.are.equal("second", lines[2])
    local inputs = cjson.decode(lines[3])
    assert.are.same({ ["gen-data"] = { status = "succeeded", output = s.run_dir .. "/tasks/gen-data/attempt-2.out",
                                       outputs = { dir .. "/out/data.txt" } } }, inputs)
    assert.are.equal(task_dir, lines[4])
    assert.are.equal("failed", s.results.liar.status)
    assert.are.equal("declared outputs missing: never.txt", s.results.liar.error)
    -- declarations are checked when the task is made
    local ok, err = pcall(coral.task, "x", "y", { outputs = { "../outside" } })
    assert.is_false(ok)
    assert.matches("coral.task: outputs%[1%] '%.%./outside' must be a path inside the project", tostring(err))
  end)

  it("refuses a task an agent CLI would run under a role that does not exist, naming the nearest", function()
    local dir = H.tmpdir()
    local runner = coral.runner { project_dir = dir, output = "quiet" }
    local ok, err = pcall(runner.execute_plan, runner, coral.plan {
      coral.task("backend-devloper", "build it", { id = "api", driver = "claude" }),
      coral.task("anyone", "a command needs no role", { id = "cmd", cmd = "true" }),
    })
    assert.is_false(ok)
    assert.matches("run_spec%.lua:%d+: task 'api': no agent role 'backend%-devloper' %(did you mean " ..
                   "'backend%-developer'%?%), and the claude driver runs an agent that needs one", tostring(err))
    assert.is_nil(H.read_file(dir .. "/.coral/runs"), "nothing written")
  end)

  it("runs a task only when its condition says so; a skip by condition is not a failure", function()
    local dir = H.tmpdir()
    local seen
    local plan = coral.plan {
      coral.task("check", "c", { id = "check", cmd = "echo deploy-no" }),
      coral.task("deploy", "d", { id = "deploy", cmd = "true", depends_on = { "check" }, when = function(results)
        seen = results
        local f = assert(io.open(results.check.output))
        local text = f:read("a")
        f:close()
        return text:find("deploy%-yes") ~= nil
      end }),
      coral.task("announce", "a", { id = "announce", cmd = "true", depends_on = { "deploy" } }),
      coral.task("always", "w", { id = "always", cmd = "true", depends_on = { "check" }, when = function() return true end }),
    }
    local s = coral.runner({ project_dir = dir, output = "quiet" }):execute_plan(plan)
    assert.are.equal("succeeded", s.status)
    assert.are.equal("succeeded", seen.check.status)
    assert.are.equal("skipped", s.results.deploy.status)
    assert.are.equal("condition", s.results.deploy.error)
    assert.are.equal("skipped", s.results.announce.status)
    assert.are.equal("dependency 'deploy' was skipped (condition)", s.results.announce.error)
    assert.are.equal("succeeded", s.results.always.status)
    assert.are.equal(2, s.skipped_by_condition)
    local run = require("coral.view.timeline").load(s.run_dir)
    assert.are.equal("deploy was skipped by its condition (when); on resume the condition is asked again",
                     require("coral.view.status").why(run, "deploy"))
    -- a condition that raises is a failure of the task, not retried
    s = coral.runner({ project_dir = dir, output = "quiet" }):execute_plan(coral.plan {
      coral.task("bad", "b", { id = "bad", cmd = "true", when = function() error("no way to tell", 0) end }),
    })
    assert.are.equal("failed", s.status)
    assert.are.equal("its condition raised an error: no way to tell", s.results.bad.error)
    assert.are.equal(1, s.results.bad.attempts)
  end)

  it("takes the critical path of a 100,000-task chain declared dependents-first without recursion", function()
    local n = 100000
    local plan = coral.plan(chain(n))
    local path, length = plan:critical_path()
    assert.are.equal(n, #path)
    assert.are.equal("tn", path[1]:gsub("%d+", "n"))
    assert.are.equal(n, length)
    -- the summary of a run of that plan (each task ran one second)
    local state, times = {}, {}
    for i, t in ipairs(plan.tasks) do
      state[t.id] = { task = t, status = "succeeded", first_start = n - i, finish = n - i + 1,
                      attempts = { { n = 1, duration = 1, code = 0 } } }
      times[t.id] = { start = n - i, finish = n - i + 1 }
    end
    local s = summary_mod.of {
      plan = plan, state = state, start_time = 0, finish_time = n, busy = n, max_workers = 4, max_parallel = 1,
      phases = plan:phases(), mode = { name = "dependency" }, records = { id = "r", dir = "/nowhere" },
    }
    assert.are.equal(n, s.succeeded)
    assert.are.equal(n, s.critical_path_seconds)
    local measured = summary_mod.critical_path(plan.tasks, function(id)
      local t = times[id]
      if t then return t.start, t.finish end
    end)
    assert.are.equal(n, #measured)
  end)
end)
