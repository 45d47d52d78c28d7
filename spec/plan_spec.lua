-- coral.plan: declaring tasks (strict options, errors at the recipe's line), building plans
-- (unique ids, phases and their implicit dependencies, dependency errors blamed on the line
-- that declared the task), and what a plan tells: phases, generations, critical path, and
-- its text, DOT, Mermaid and JSON views.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local P = require "coral.plan"
local fsutil = require "coral.fsutil"
local t = P.task

local AT = "spec/plan_spec.lua:"

-- The line this is called from.
local function here() return debug.getinfo(2, "l").currentline end

-- Runs f, which must fail; returns the error value.
local function err_of(f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(err)   -- a user's mistake is a coral.check.UserError: "where: message"
end

-- Runs f, which must fail with a plan error (no traceback is added to those); returns its text.
local function plan_err(f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error")
  assert.are.equal(require("coral.check").UserError, getmetatable(err), "not a plan error: " .. tostring(err))
  return tostring(err)
end

local function ids(tasks)
  local out = {}
  for i, task in ipairs(tasks) do out[i] = task.id end
  return out
end

-- architect (10 s) -> backend (30 s) and frontend (20 s) -> qa (5 s)
local function small_plan(opts)
  return P.plan({
    { t("architect", "design the system", { estimate = 10 }) },
    { t("backend", "build the API", { estimate = 30 }), t("frontend", "build the UI", { estimate = 20 }) },
    { t("qa", 'test "everything"', { estimate = 5 }) },
  }, opts)
end

describe("coral.plan", function()
  describe("task", function()
    it("declares a task from an agent, a text and options, remembering the line", function()
      local line = here(); local task = t("backend", "build the API", {
        id = "api", depends_on = { "db" }, timeout = 30, idle_timeout = 5.5, retries = 2, priority = -1,
        estimate = 90, cmd = { "make", "api" }, driver = "claude", model = "m", context = { "README" },
        cwd = "/src", env = { A = "1" }, slurm = { partition = "p" },
      })
      assert.are.equal(P.Task, getmetatable(task))
      assert.are.equal("backend", task.agent)
      assert.are.equal("build the API", task.task)
      assert.are.equal("api", task.id)
      assert.are.same({ "db" }, task.depends_on)
      assert.are.equal(30, task.timeout)
      assert.are.equal(2, task.retries)
      assert.are.same({ "make", "api" }, task.cmd)
      assert.are.same({ A = "1" }, task.env)
      assert.are.equal(AT .. line, task.where)
    end)

    it("declares a task from one table; the agent defaults to the id, the text to empty", function()
      local line = here(); local task = t { id = "lint", cmd = "make lint" }
      assert.are.equal(P.Task, getmetatable(task))
      assert.are.equal("lint", task.agent)
      assert.are.equal("", task.task)
      assert.are.equal(AT .. line, task.where)
      task = t { agent = "qa", task = "run the tests" }
      assert.is_nil(task.id)
      assert.are.equal("run the tests", task.task)
      assert.are.equal("", t("qa").task)
    end)

    it("keeps its own copy of the options", function()
      local opts = { id = "a", timeout = 5 }
      local task = t("x", "y", opts)
      opts.id, opts.timeout = "b", 99
      assert.are.equal("a", task.id)
      assert.are.equal(5, task.timeout)
      assert.is_nil(opts.agent, "the options table is not changed")
    end)

    local bad = {
      { "an agent that is not a string", function() return t(42, "x") end,
        "coral.task: agent must be a string, got number" },
      { "a text that is not a string", function() return t("a", { "x" }) end,
        "coral.task: task text must be a string, got table" },
      { "options that are not a table", function() return t("a", "x", "fast") end,
        "coral.task: options must be a table, got string" },
      { "a number option given a string", function() return t("a", "x", { timeout = "soon" }) end,
        "coral.task: option 'timeout' must be number, got string" },
      { "an integer option given a fraction", function() return t("a", "x", { retries = 1.5 }) end,
        "coral.task: option 'retries' must be integer, got float" },
      { "a command that is neither string nor list", function() return t("a", "x", { cmd = true }) end,
        "coral.task: option 'cmd' must be string or list, got boolean" },
      { "depends_on that is not a list", function() return t("a", "x", { depends_on = "b" }) end,
        "coral.task: option 'depends_on' must be list, got string" },
      { "a dependency that is not an id", function() return t("a", "x", { depends_on = { "b", 2 } }) end,
        "coral.task: depends_on[2] must be a task id string, got number" },
      { "negative retries", function() return t("a", "x", { retries = -1 }) end,
        "coral.task: retries must be >= 0" },
      { "a negative timeout", function() return t("a", "x", { timeout = -0.5 }) end,
        "coral.task: timeout must be >= 0" },
      { "a negative idle timeout", function() return t("a", "x", { idle_timeout = -1 }) end,
        "coral.task: idle_timeout must be >= 0" },
      { "a negative estimate", function() return t("a", "x", { estimate = -5 }) end,
        "coral.task: estimate must be >= 0" },
      { "a timeout that is not a number (NaN)", function() return t("a", "x", { timeout = 0 / 0 }) end,
        "coral.task: option 'timeout' must be a number, got NaN" },
      { "an empty id", function() return t { agent = "a", id = "" } end,
        "coral.task: id must not be empty" },
      { "an empty command list", function() return t("a", "x", { cmd = {} }) end,
        "coral.task: cmd must not be an empty list" },
      { "a command argument that is not a string", function() return t("a", "x", { cmd = { "echo", {} } }) end,
        "coral.task: cmd[2] must be a string, got table" },
      { "an environment value that is not a string", function() return t("a", "x", { env = { FOO = {} } }) end,
        "coral.task: env[FOO] must be a string, got table" },
      { "a table with neither agent nor id", function() return t { task = "x" } end,
        "coral.task: a task needs an agent or an id" },
      { "a table with a wrong type", function() return t { agent = "a", retries = "2" } end,
        "coral.task: option 'retries' must be integer, got string" },
    }
    for _, case in ipairs(bad) do
      it("rejects " .. case[1] .. " at the caller's line", function()
        local line
        local err = err_of(function() line = here(); local _ = case[2]() end)
        -- case[2] returns t(...) as a tail call: the line blamed is the one that called case[2]
        assert.are.equal(AT .. line .. ": " .. case[3], err)
      end)
    end

    it("rejects an unknown option, listing the known ones", function()
      local line
      local err = err_of(function() line = here(); local _ = t("a", "x", { tiemout = 3 }) end)
      assert.matches("^" .. AT .. line .. ": coral%.task: unknown option 'tiemout' %(did you mean 'timeout'%? known: agent, approve, budget, cmd, .*timeout, when, workspace%)$", err)
      err = err_of(function() line = here(); local _ = t { agent = "a", dependson = { "b" } } end)
      assert.matches("^" .. AT .. line .. ": coral%.task: unknown option 'dependson' %(did you mean 'depends_on'%? known: ", err)
    end)
  end)

  describe("plan", function()
    it("builds a plan from a flat list of tasks", function()
      local line = here(); local p = P.plan { t("a", "first"), t("b", "second", { depends_on = { "a" } }), t("c", "third") }
      assert.are.equal(P.Plan, getmetatable(p))
      assert.are.same({ "a", "b", "c" }, ids(p.tasks))
      assert.are.equal(p.tasks[2], p.by_id.b)
      assert.are.same({}, p.by_id.a.depends_on)
      assert.are.same({ "a" }, p.by_id.b.depends_on)
      assert.are.same({}, p.by_id.c.depends_on, "no phases: no implicit dependency")
      assert.are.equal(AT .. line, p.where)
      assert.are.equal(p, P.plan(p), "a plan given a plan returns it")
    end)

    it("takes a name, a description and a workspace, and no other option", function()
      local p = P.plan({ t("a", "x") }, { name = "demo", description = "a demo project" })
      assert.are.equal("demo", p.name)
      assert.are.equal("a demo project", p.description)
      local line
      local err = err_of(function() line = here(); local _ = P.plan({ t("a", "x") }, { nmae = "demo" }) end)
      assert.are.equal(AT .. line .. ": coral.plan: unknown option 'nmae' (did you mean 'name'? known: description, name, workspace)", err)
      err = err_of(function() line = here(); local _ = P.plan({ t("a", "x") }, { name = 1 }) end)
      assert.are.equal(AT .. line .. ": coral.plan: option 'name' must be string, got integer", err)
    end)

    it("rejects what is not a list of tasks or phases", function()
      local line
      local err = err_of(function() line = here(); local _ = P.plan "a, b" end)
      assert.are.equal(AT .. line .. ": coral.plan: expected a list of phases or of tasks, got string", err)
      err = plan_err(function() line = here(); local _ = P.plan { t("a", "x"), 42 } end)
      assert.are.equal(AT .. line .. ": phase 1, item 2 is not a task (got number)", err)
      err = plan_err(function() line = here(); local _ = P.plan { { t("a", "x") }, "oops" } end)
      assert.are.equal(AT .. line .. ": phase 2 must be a list of tasks, got string", err)
      err = plan_err(function() line = here(); local _ = P.plan { { t("a", "x"), true } } end)
      assert.are.equal(AT .. line .. ": phase 1, item 2 is not a task (got boolean)", err)
    end)

    it("makes ids unique from agent names, after the explicit ids", function()
      local p = P.plan { t("rev", "1"), t("rev", "2"), t("rev", "3", { id = "rev-2" }), t("rev", "4") }
      assert.are.same({ "rev", "rev-3", "rev-2", "rev-4" }, ids(p.tasks))
      p = P.plan { t("lint", "1"), t("other", "2", { id = "lint" }) }
      assert.are.same({ "lint-2", "lint" }, ids(p.tasks))
      assert.are.same({ "rev", "rev-2" }, ids(P.plan { t { agent = "rev" }, t { agent = "rev" } }.tasks))
    end)

    it("rejects a duplicate id at the second declaration, naming the first", function()
      local first, second
      local err = plan_err(function()
        first = here(); local a = t("a", "x", { id = "same" })
        second = here(); local b = t("b", "y", { id = "same" })
        local _ = P.plan { a, b }
      end)
      assert.are.equal(string.format("%s%d: duplicate task id 'same' (first declared at %s%d)", AT, second, AT, first), err)
    end)

    it("makes a task of a phase depend on the whole phase before it, unless it says otherwise", function()
      local p = P.plan {
        { t("architect", "design") },
        { t("backend", "api"), t("frontend", "ui"), t("docs", "write", { depends_on = {} }) },
        {},
        { t("qa", "test"), t("release", "ship", { depends_on = { "qa" } }) },
      }
      local by = p.by_id
      assert.are.same({}, by.architect.depends_on)
      assert.are.same({ "architect" }, by.backend.depends_on)
      assert.are.same({ "architect" }, by.frontend.depends_on)
      assert.are.same({}, by.docs.depends_on)
      assert.are.same({ "backend", "frontend", "docs" }, by.qa.depends_on, "an empty phase is skipped")
      assert.are.same({ "qa" }, by.release.depends_on)
      assert.is_true(by.backend.implicit_deps)
      assert.is_nil(by.docs.implicit_deps)
      assert.is_nil(by.release.implicit_deps)
    end)

    it("takes plain tables as tasks, blaming the plan's line for them", function()
      local line = here(); local p = P.plan { { agent = "a", task = "x" }, { id = "b", depends_on = { "a" } } }
      assert.are.same({ "a", "b" }, ids(p.tasks))
      assert.are.equal("b", p.by_id.b.agent)
      assert.are.same({ "a" }, p.by_id.b.depends_on)
      assert.are.equal(AT .. line, p.by_id.a.where)
      p = P.plan { { { agent = "a" } }, { { agent = "b" } } }
      assert.are.same({ "a" }, p.by_id.b.depends_on, "phases of plain tables")
      local err = err_of(function() line = here(); local _ = P.plan { { agent = "a", tiemout = 1 } } end)
      assert.matches("^" .. AT .. line .. ": coral%.task: unknown option 'tiemout' %(did you mean 'timeout'%? known: ", tostring(err))
      err = plan_err(function() line = here(); local _ = P.plan { { agent = "a", depends_on = { "zz" } } } end)
      assert.are.equal(AT .. line .. ": task 'a' depends on unknown task 'zz'", err)
    end)

    it("keeps no alias of the options table a task was declared with", function()
      local opts = { id = "a1", cmd = { "true" }, env = { K = "v" } }
      local task = t("w", "work", opts)
      assert.are_not.equal(opts, task)
      opts.id, opts.cmd = "changed", { "false" }
      assert.are.equal("a1", task.id)
      assert.are.same({ "true" }, task.cmd)
      assert.is_nil(opts.agent)
      assert.is_nil(opts.where)
    end)

    it("owns copies of its tasks: one task can go into two plans", function()
      local shared = t("w", "shared work")
      local p1 = P.plan { shared, t("w", "other") }
      local p2 = P.plan { { t("lead", "first") }, { shared } }
      assert.is_nil(shared.id)
      assert.is_nil(shared.depends_on)
      assert.are.equal("w", p1.tasks[1].id)
      assert.are.same({}, p1.tasks[1].depends_on)
      assert.are.same({ "lead" }, p2.tasks[2].depends_on)
      local with_deps = t("x", "y", { depends_on = { "lead" } })
      local p3 = P.plan { t("lead", "first"), with_deps }
      p3.by_id.x.depends_on[2] = "changed"
      assert.are.same({ "lead" }, with_deps.depends_on)
    end)
  end)

  describe("dependency errors", function()
    it("blame the line of a task with an unknown dependency", function()
      local line
      local err = plan_err(function()
        local a = t("a", "x")
        line = here(); local b = t("b", "y", { depends_on = { "a", "nope" } })
        local _ = P.plan { a, b }
      end)
      assert.are.equal(AT .. line .. ": task 'b' depends on unknown task 'nope'", err)
    end)

    it("blame the line of a task that depends on itself", function()
      local line
      local err = plan_err(function()
        line = here(); local a = t("a", "x", { depends_on = { "a" } })
        local _ = P.plan { a }
      end)
      assert.are.equal(AT .. line .. ": task 'a' depends on itself", err)
    end)

    it("print a cycle whole and blame the line of its first declared task", function()
      local line
      local err = plan_err(function()
        local x = t("x", "0")
        line = here(); local b = t("b", "1", { depends_on = { "c" } })
        local a = t("a", "2", { depends_on = { "b" } })
        local c = t("c", "3", { depends_on = { "a" } })
        local _ = P.plan { x, b, a, c }
      end)
      assert.are.equal(AT .. line .. ": dependency cycle: b -> c -> a -> b", err)
    end)

    it("find a cycle made through a phase's implicit dependencies", function()
      local line
      local err = plan_err(function()
        line = here(); local a = t("a", "x", { depends_on = { "b" } })
        local _ = P.plan { { a }, { t("b", "y") } }
      end)
      assert.are.equal(AT .. line .. ": dependency cycle: a -> b -> a", err)
    end)

    it("blame the declaring line of a cycle whose ids have spaces", function()
      local line
      local err = plan_err(function()
        line = here(); local build = t("x", "1", { id = "build app", depends_on = { "test app" } })
        local test = t("y", "2", { id = "test app", depends_on = { "build app" } })
        local _ = P.plan { build, test }
      end)
      assert.are.equal(AT .. line .. ": dependency cycle: build app -> test app -> build app", err)
    end)

    it("blame the script when the plan is returned by a tail call (its caller's frame is gone)", function()
      -- coral.recipes blames the recipe file it loaded instead (spec/run_spec.lua runs one).
      local function recipe()
        return P.plan { { agent = "a", task = "x", depends_on = { "zz" } } }
      end
      local arg = _G.arg   -- the script coral runs, as lua.c sets it
      local script = arg[0]
      arg[0] = "my_recipe.lua"
      local ok, err = pcall(plan_err, recipe)
      arg[0] = script
      assert.is_true(ok, tostring(err))
      assert.are.equal("my_recipe.lua: task 'a' depends on unknown task 'zz'", err)
    end)

    it("are plan errors: shown without a traceback", function()
      local check = require "coral.check"
      local _, err = pcall(function() local _ = P.plan { t("a", "x", { depends_on = { "a" } }) } end)
      assert.are.equal(err, check.traceback(err))
      local other = check.traceback("boom")
      assert.matches("^boom\nstack traceback:", other)
      _, err = pcall(function() P.user_error("the project is busy") end)
      assert.are.equal(check.UserError, getmetatable(err))
      assert.are.equal("the project is busy", tostring(err))
    end)

  end)

  describe("analysis", function()
    it("finds the critical path from the estimates", function()
      local path, length = small_plan():critical_path()
      assert.are.same({ "architect", "backend", "qa" }, path)
      assert.are.equal(45, length)
    end)

    it("uses the default estimate, or the ones set from history, where a task has none", function()
      local p = P.plan { t("x", "0"), t("y", "1", { depends_on = { "x" } }), t("z", "2", { depends_on = { "x" } }),
                         t("w", "3", { estimate = 1 }) }
      local path, length = p:critical_path()
      assert.are.same({ "x", "y" }, path)
      assert.are.equal(2 * P.DEFAULT_ESTIMATE, length)
      p:set_estimates { y = 5, z = 50, w = 1000 }
      path, length = p:critical_path()
      assert.are.same({ "x", "z" }, path)
      assert.are.equal(P.DEFAULT_ESTIMATE + 50, length)
      assert.are.equal(1, p:estimate(p.by_id.w), "a task's own estimate wins")
      p:set_estimates { y = 500 }
      path, length = p:critical_path()
      assert.are.same({ "x", "y" }, path)
      assert.are.equal(P.DEFAULT_ESTIMATE + 500, length)
      assert.are.equal(P.DEFAULT_ESTIMATE, p:estimate(p.by_id.z))
    end)

    it("gives declared phases, or generations when none are declared", function()
      local p = P.plan {
        { t("architect", "design") },
        { t("backend", "api"), t("frontend", "ui"), t("docs", "write", { depends_on = {} }) },
        {},
        { t("qa", "test"), t("release", "ship", { depends_on = { "qa" } }) },
      }
      assert.are.same({ { "architect" }, { "backend", "frontend", "docs" }, { "qa", "release" } }, p:phases())
      assert.are.same({ { "architect", "docs" }, { "backend", "frontend" }, { "qa" }, { "release" } }, p:generations())
      assert.are.same({ architect = 1, backend = 2, frontend = 2, docs = 2, qa = 3, release = 3 }, p:phase_of())
      local flat = P.plan { t("c", "x", { depends_on = { "a" } }), t("a", "y"), t("b", "z"), t("d", "w", { depends_on = { "c", "b" } }) }
      assert.are.same({ { "a", "b" }, { "c" }, { "d" } }, flat:phases())
      assert.are.same(flat:phases(), flat:generations())
      assert.are.same({ a = 1, b = 1, c = 2, d = 3 }, flat:phase_of())
    end)

    it("builds the dependency graph, with or without its edges", function()
      local p = small_plan()
      local g = p:graph()
      assert.is_true(g:validate())
      assert.are.equal(3, #g:phases())
      g = p:graph { no_edges = true }
      assert.is_true(g:validate())
      assert.are.same({ { "architect", "backend", "frontend", "qa" } }, g:phases())
    end)
  end)

  describe("views", function()
    it("to_text lists phases, dependencies and the critical path", function()
      local p = small_plan { name = "demo", description = "a demo" }
      assert.are.equal(table.concat({
        "Plan demo: 4 tasks in 3 phases",
        "Project: a demo",
        "Phase 1:",
        "  * architect                design the system",
        "Phase 2:",
        "  * backend                  build the API  <- architect",
        "  - frontend                 build the UI  <- architect",
        "Phase 3:",
        '  * qa                       test "everything"  <- backend, frontend',
        "Critical path (*): architect -> backend -> qa (45 s estimated)",
      }, "\n") .. "\n", p:to_text())
    end)

    it("to_text shortens long texts to one line", function()
      local p = P.plan { t("a", "first line\n\tsecond   line " .. string.rep("x", 80)) }
      local line = p:to_text():match("\n  %* a +([^\n]*)")
      assert.are.equal("first line second line " .. string.rep("x", 24) .. "…", line)
      assert.matches("^Plan: 1 task", p:to_text())
    end)

    it("to_dot draws phases as clusters and the critical path in red", function()
      assert.are.equal(table.concat({
        "digraph plan {",
        "  rankdir=LR;",
        "  newrank=true;",
        '  node [shape=box, style="rounded", fontname="Helvetica"];',
        '  subgraph cluster_phase1 { label="Phase 1"; style=dashed; rank=same;',
        '    "architect" [label="architect\\ndesign the system", color="red", penwidth=2];',
        "  }",
        '  subgraph cluster_phase2 { label="Phase 2"; style=dashed; rank=same;',
        '    "backend" [label="backend\\nbuild the API", color="red", penwidth=2];',
        '    "frontend" [label="frontend\\nbuild the UI"];',
        "  }",
        '  subgraph cluster_phase3 { label="Phase 3"; style=dashed; rank=same;',
        '    "qa" [label="qa\\ntest \\"everything\\"", color="red", penwidth=2];',
        "  }",
        '  "architect" -> "backend" [color="red", penwidth=2];',
        '  "architect" -> "frontend";',
        '  "backend" -> "qa" [color="red", penwidth=2];',
        '  "frontend" -> "qa";',
        "}",
      }, "\n") .. "\n", small_plan():to_dot())
    end)

    it("to_dot keeps the order of a sequence inside a phase", function()
      local dot = P.plan { { t("a", "x"), t("b", "y", { depends_on = { "a" } }) } }:to_dot()
      assert.matches('subgraph cluster_phase1 { label="Phase 1"; style=dashed;\n', dot, 1, true)
    end)

    it("to_dot writes what Graphviz reads, whatever the ids and texts hold", function()
      if not fsutil.which("dot") then
        local r = H.run({ "scripts/install-deps", "--test" }, { exe = "/bin/sh", timeout = 900 })
        assert.are.equal(0, r.code, "cannot install graphviz: " .. r.stdout .. r.stderr)
      end
      local p = P.plan {
        { t('agent "one"', 'say "hi" \\ and {braces} <b>', { id = 'id "with" quotes\\' }) },
        { t("two", "line\nbreak; -> arrow", { id = "two -> three" }) },
      }
      local r = H.run({ "-Tsvg" }, { exe = assert(fsutil.which("dot")), stdin = p:to_dot() })
      assert.are.equal(0, r.code, r.stderr)
      -- two nodes and one edge: no quote or arrow in a name ended it early or made another
      local _, nodes = r.stdout:gsub('class="node"', "")
      local _, edges = r.stdout:gsub('class="edge"', "")
      assert.are.equal(2, nodes)
      assert.are.equal(1, edges)
      assert.matches("<title>two &#45;&gt; three</title>", r.stdout, 1, true)
    end)

    it("to_mermaid draws phases as subgraphs and highlights the critical path", function()
      assert.are.equal(table.concat({
        "flowchart LR",
        '  subgraph phase1["Phase 1"]',
        '    t1["architect<br/>design the system"]',
        "  end",
        '  subgraph phase2["Phase 2"]',
        '    t2["backend<br/>build the API"]',
        '    t3["frontend<br/>build the UI"]',
        "  end",
        '  subgraph phase3["Phase 3"]',
        '    t4["qa<br/>test #quot;everything#quot;"]',
        "  end",
        "  t1 --> t2",
        "  t1 --> t3",
        "  t2 --> t4",
        "  t3 --> t4",
        "  linkStyle 0,2 stroke:#d00,stroke-width:3px",
        "  classDef critical stroke:#d00,stroke-width:3px",
        "  class t1,t2,t4 critical",
      }, "\n") .. "\n", small_plan():to_mermaid())
    end)

    it("to_json gives tasks, phases and the critical path", function()
      local p = small_plan { name = "demo", description = "a demo" }
      local text = p:to_json()
      assert.matches('"depends_on":[]', text, 1, true)
      local j = cjson.decode(text)
      assert.are.equal("demo", j.name)
      assert.are.equal("a demo", j.description)
      assert.are.same({ { "architect" }, { "backend", "frontend" }, { "qa" } }, j.phases)
      assert.are.same({ "architect", "backend", "qa" }, j.critical_path)
      assert.are.equal(45, j.critical_path_seconds)
      assert.are.same({
        { id = "architect", agent = "architect", task = "design the system", depends_on = {}, estimate = 10, priority = 0, phase = 1 },
        { id = "backend", agent = "backend", task = "build the API", depends_on = { "architect" }, estimate = 30, priority = 0, phase = 2 },
        { id = "frontend", agent = "frontend", task = "build the UI", depends_on = { "architect" }, estimate = 20, priority = 0, phase = 2 },
        { id = "qa", agent = "qa", task = 'test "everything"', depends_on = { "backend", "frontend" }, estimate = 5, priority = 0, phase = 3 },
      }, j.tasks)
      local unnamed = cjson.decode(P.plan { t("a", "x", { priority = 3 }) }:to_json())
      assert.is_nil(unnamed.name)
      assert.are.equal(3, unnamed.tasks[1].priority)
      assert.are.equal(P.DEFAULT_ESTIMATE, unnamed.tasks[1].estimate)
    end)

    it("to_json writes the lists of an empty plan as lists", function()
      local text = P.plan({}):to_json()
      assert.matches('"tasks":[]', text, 1, true)
      assert.matches('"phases":[]', text, 1, true)
      assert.matches('"critical_path":[]', text, 1, true)
    end)
  end)
end)
