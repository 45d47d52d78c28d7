-- coral.dag: building and validating a graph of tasks, its phases, critical path and ranks, and
-- handing out work with ready()/done(); checked against the pure-Lua oracle in spec/dag_oracle.lua.
require("spec.helper").guard(_ENV)
local dag = require "coral.dag"
local oracle = require "spec.dag_oracle"

-- A validated graph from a list of { id, deps, opts }.
local function graph(list)
  local g = dag.new()
  for _, t in ipairs(list) do assert(g:add(t[1], t[2], t[3])) end
  assert(g:validate())
  return g
end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error matching " .. pattern)
  assert.matches(pattern, err)
end

-- Runs everything with ok = true; returns the order in which tasks were handed out.
local function drain(g)
  local order = {}
  while true do
    local batch = g:ready()
    if #batch == 0 then return order end
    for _, id in ipairs(batch) do
      order[#order + 1] = id
      g:done(id, true)
    end
  end
end

describe("coral.dag", function()
  describe("new", function()
    it("makes an empty graph", function()
      local g = dag.new()
      assert.are.equal(0, #g)
      assert.are.equal("coral.dag (0 tasks)", tostring(g))
      assert.is_true(g:validate())
      assert.are.same({}, g:phases())
      assert.are.same({}, g:ready())
      local path, length = g:critical_path()
      assert.are.same({}, path)
      assert.are.equal(0, length)
    end)

    it("rejects arguments", function()
      raises("dag_spec%.lua:%d+: bad argument #1 to 'new' %(no arguments expected, got 1%)", function() dag.new({}) end)
    end)

    it("frees the graph on close, and raises if used after", function()
      local g = dag.new()
      g:add("a")
      g:close()
      g:close()
      assert.are.equal("coral.dag (closed)", tostring(g))
      raises("dag is closed", function() g:add("b") end)
      raises("dag is closed", function() return #g end)
      do
        local c <close> = dag.new()
        c:add("x")
        g = c
      end
      raises("dag is closed", function() g:ready() end)
    end)
  end)

  describe("add", function()
    it("returns the 1-based declaration index", function()
      local g = dag.new()
      assert.are.equal(1, g:add("a"))
      assert.are.equal(2, g:add("b", { "a" }))
      assert.are.equal(3, g:add("c", { 1, "b" }, { weight = 2.5, priority = -1 }))
      assert.are.equal(3, #g)
      assert.are.equal("coral.dag (3 tasks)", tostring(g))
      assert.are.same({ "a", "b" }, g:deps("c"))
      assert.are.equal("c", g:id(3))
      assert.are.equal(2, g:index("b"))
      assert.is_nil(g:index("zz"))
    end)

    it("returns nil, message, kind, ids for a duplicate id", function()
      local g = dag.new()
      g:add("a")
      local ok, err, kind, ids = g:add("a", { "x" })
      assert.is_nil(ok)
      assert.are.equal("duplicate task 'a'", err)
      assert.are.equal("duplicate", kind)
      assert.are.same({ "a" }, ids)
      assert.are.equal(1, #g)
    end)

    it("returns nil, message, kind, ids for a self-dependency", function()
      local g = dag.new()
      local ok, err, kind, ids = g:add("a", { "b", "a" })
      assert.is_nil(ok)
      assert.are.equal("task 'a' depends on itself", err)
      assert.are.equal("self", kind)
      assert.are.same({ "a" }, ids)
      assert.are.equal(0, #g)
      assert.is_true(g:validate())   -- the rejected task left nothing behind
    end)

    it("accepts dependencies declared later", function()
      local g = dag.new()
      g:add("b", { "a" })
      assert.are.same({ "a" }, g:deps("b"))
      g:add("a")
      assert.is_true(g:validate())
      assert.are.same({ { "a" }, { "b" } }, g:phases())
    end)

    it("raises on wrong argument types, with the caller's line", function()
      local g = dag.new()
      g:add("a")
      raises("dag_spec%.lua:%d+: bad argument #1 to 'add' %(string expected, got number%)", function() g:add(1) end)
      raises("bad argument #1 to 'add' %(task id must not be empty%)", function() g:add("") end)
      raises("bad argument #1 to 'add' %(task id must not contain a zero byte%)", function() g:add("a\0b") end)
      raises("bad argument #2 to 'add' %(table expected, got string%)", function() g:add("b", "a") end)
      raises("bad argument #2 to 'add' %(dependency #2 must be a task id or index, got boolean%)",
             function() g:add("b", { "a", true }) end)
      raises("dependency #1 must be a task id or index, got a float", function() g:add("b", { 1.5 }) end)
      raises("bad argument #2 to 'add' %(dependency #1: no task with index 7%)", function() g:add("b", { 7 }) end)
      raises("dependency #1: task id must not contain a zero byte", function() g:add("b", { "x\0" }) end)
      raises("bad argument #3 to 'add' %(table expected, got number%)", function() g:add("b", {}, 3) end)
      raises("bad argument #3 to 'add' %(unknown option 'wieght'%)", function() g:add("b", {}, { wieght = 1 }) end)
      raises("unknown option 'number'", function() g:add("b", {}, { 1 }) end)
      raises("weight must be a number, got string", function() g:add("b", {}, { weight = "1" }) end)
      raises("weight must be a finite number >= 0", function() g:add("b", {}, { weight = -1 }) end)
      raises("weight must be a finite number >= 0", function() g:add("b", {}, { weight = 0 / 0 }) end)
      raises("weight must be a finite number >= 0", function() g:add("b", {}, { weight = math.huge }) end)
      raises("priority must be an integer, got a float", function() g:add("b", {}, { priority = 1.5 }) end)
      raises("priority must be an integer, got string", function() g:add("b", {}, { priority = "1" }) end)
      raises("priority out of range", function() g:add("b", {}, { priority = 1 << 40 }) end)
      raises("bad argument #4 to 'add' %(no more than 3 arguments expected, got 4%)",
             function() g:add("b", {}, {}, 1) end)
      -- none of them added anything, and no half-added dependency shows up later
      assert.are.equal(1, #g)
      assert.are.equal(2, g:add("b", { "a" }))
      assert.are.same({ "a" }, g:deps("b"))
      assert.is_true(g:validate())
    end)
  end)

  describe("validate", function()
    it("names both tasks of an unknown dependency", function()
      local g = dag.new()
      g:add("a")
      g:add("b", { "a", "x" })
      local ok, err, kind, ids = g:validate()
      assert.is_nil(ok)
      assert.are.equal("task 'b' depends on unknown task 'x'", err)
      assert.are.equal("unknown", kind)
      assert.are.same({ "b", "x" }, ids)
    end)

    it("prints a cycle as its whole path, from its first-declared task", function()
      local g = dag.new()
      g:add("z")
      g:add("b", { "c" })
      g:add("a", { "b" })
      g:add("c", { "z", "a" })
      g:add("d", { "c" })
      local ok, err, kind, ids = g:validate()
      assert.is_nil(ok)
      assert.are.equal("dependency cycle: b -> c -> a -> b", err)
      assert.are.equal("cycle", kind)
      assert.are.same({ "b", "c", "a", "b" }, ids)
    end)

    it("finds a two-task cycle", function()
      local g = dag.new()
      g:add("a", { "b" })
      g:add("b", { "a" })
      assert.are.equal("dependency cycle: a -> b -> a", select(2, g:validate()))
    end)

    it("leaves the graph as it was before the failed batch", function()
      local g = graph { { "a" }, { "b", { "a" } } }
      g:add("c", { "b", "d" })
      g:add("d", { "c" })
      assert.are.equal("cycle", select(3, g:validate()))
      assert.are.equal(2, #g)
      assert.is_nil(g:index("c"))
      assert.are.same({ pending = 1, ready = 1, running = 0, done = 0, failed = 0, skipped = 0, total = 2 },
                      g:counts())
      assert.are.equal(3, g:add("c", { "b" }))   -- the id is free again
      g:add("e", { "nope" })
      assert.are.equal("unknown", select(3, g:validate()))
      assert.are.equal(2, #g)
      assert.is_true(g:validate())
      assert.are.same({ "a", "b" }, drain(g))
    end)

    it("is required before queries and scheduling", function()
      local g = dag.new()
      g:add("a")
      for _, call in ipairs {
        function() g:phases() end, function() g:critical_path() end, function() g:rank("a") end,
        function() g:phase("a") end, function() g:ready() end, function() g:dependents("a") end,
      } do
        raises("dag [%a_]+: 1 task%(s%) added since the last validate%(%)", call)
      end
      raises("bad argument #1 to 'validate' %(no arguments expected, got 1%)",
             function() g:validate(1) end)
    end)
  end)

  describe("queries", function()
    local g
    before_each(function()
      -- a(1) -> b(3) -> d(1); a -> c(1) -> d; e(10) alone
      g = graph {
        { "a" }, { "b", { "a" }, { weight = 3 } }, { "c", { "a" } }, { "d", { "b", "c" } },
        { "e", nil, { weight = 10 } },
      }
    end)

    it("phases lists each generation in declaration order", function()
      assert.are.same({ { "a", "e" }, { "b", "c" }, { "d" } }, g:phases())
      assert.are.equal(1, g:phase("e"))
      assert.are.equal(3, g:phase("d"))
    end)

    it("critical_path follows the largest total weight", function()
      local path, length = g:critical_path()
      assert.are.same({ "e" }, path)
      assert.are.equal(10, length)
      local g2 = graph { { "a" }, { "b", { "a" }, { weight = 3 } }, { "c", { "a" } }, { "d", { "b", "c" } } }
      path, length = g2:critical_path()
      assert.are.same({ "a", "b", "d" }, path)
      assert.are.equal(5, length)
    end)

    it("rank is the weight plus the longest chain of dependents", function()
      assert.are.equal(5, g:rank("a"))
      assert.are.equal(4, g:rank(2))
      assert.are.equal(2, g:rank("c"))
      assert.are.equal(1, g:rank("d"))
      assert.are.equal(10, g:rank("e"))
    end)

    it("deps, dependents, id and index", function()
      assert.are.same({ "b", "c" }, g:deps("d"))
      assert.are.same({ "b", "c" }, g:dependents("a"))
      assert.are.same({}, g:dependents(5))
      assert.are.equal("d", g:id(4))
      assert.are.equal(4, g:index("d"))
    end)

    it("state and counts", function()
      assert.are.equal("ready", g:state("a"))
      assert.are.equal("pending", g:state("d"))
      assert.are.same({ pending = 3, ready = 2, running = 0, done = 0, failed = 0, skipped = 0, total = 5 },
                      g:counts())
    end)

    it("raise on an unknown task or a bad argument", function()
      raises("dag_spec%.lua:%d+: bad argument #1 to 'state' %(unknown task 'x'%)", function() g:state("x") end)
      raises("bad argument #1 to 'rank' %(no task with index 9%)", function() g:rank(9) end)
      raises("bad argument #1 to 'phase' %(task index must be an integer%)", function() g:phase(1.5) end)
      raises("bad argument #1 to 'deps' %(task id or index expected, got no value%)", function() g:deps() end)
      raises("bad argument #1 to 'id' %(number expected, got string%)", function() g:id("a") end)
      raises("bad argument #1 to 'index' %(string expected, got number%)", function() g:index(1) end)
      raises("bad argument #2 to 'state' %(no more than 1 argument expected, got 2%)",
             function() g:state("a", 1) end)
      raises("no arguments expected, got 1", function() g:counts(1) end)
      raises("no arguments expected, got 1", function() g:phases(1) end)
      raises("no arguments expected, got 1", function() g:critical_path(1) end)
      raises("no more than 1 argument expected, got 2", function() g:dependents("a", 1) end)
      raises("no more than 1 argument expected, got 2", function() g:deps("a", 1) end)
      raises("no more than 1 argument expected, got 2", function() g:rank("a", 1) end)
      raises("no more than 1 argument expected, got 2", function() g:phase("a", 1) end)
      raises("no more than 1 argument expected, got 2", function() g:id(1, 1) end)
      raises("no more than 1 argument expected, got 2", function() g:index("a", 1) end)
      raises("bad argument #1 to 'counts' %(coral.dag expected, got table%)", function() g.counts({}) end)
    end)
  end)

  describe("ready and done", function()
    it("orders by priority, then longest remaining path, then declaration", function()
      local g = graph {
        { "short" }, { "long" }, { "long2", { "long" } }, { "urgent", nil, { priority = 5 } },
        { "late", nil, { priority = -1, weight = 100 } }, { "tie" },
      }
      assert.are.same({ "urgent", "long", "short", "tie", "late" }, g:ready())
      assert.are.equal("running", g:state("urgent"))
    end)

    it("ready(n) takes at most n, and 'index' gives indices", function()
      local g = graph { { "a" }, { "b" }, { "c" } }
      assert.are.same({ "a" }, g:ready(1))
      assert.are.same({}, g:ready(0))
      assert.are.same({ 2, 3 }, g:ready(5, "index"))
      assert.are.same({ pending = 0, ready = 0, running = 3, done = 0, failed = 0, skipped = 0, total = 3 },
                      g:counts())
      raises("bad argument #1 to 'ready' %(count must be >= 0%)", function() g:ready(-1) end)
      raises("bad argument #2 to 'ready' %(invalid option 'ids'%)", function() g:ready(1, "ids") end)
      raises("no more than 2 arguments expected", function() g:ready(1, "id", 3) end)
    end)

    it("peek(n) names the next n that ready() hands out, in order, and leaves them queued", function()
      -- priorities and weights mixed so that the heap's array order is not the handing-out order
      local list = {}
      for i = 1, 200 do
        list[i] = { "t" .. i, nil, { priority = (i * 7) % 5, weight = (i * 13) % 11 } }
      end
      local g = graph(list)
      for _, n in ipairs { 0, 1, 2, 3, 8, 64 } do
        local seen = g:peek(n)
        assert.are.equal(n, #seen)
        assert.are.equal(200, g:counts().ready)
        assert.are.equal("ready", n > 0 and g:state(seen[1]) or "ready")
        local copy = graph(list)
        assert.are.same(copy:ready(n), seen)
      end
      assert.are.same(g:peek(1), g:peek())
      local all = g:ready(197)
      assert.are.same(g:peek(64), g:ready())   -- fewer queued than asked: all of them
      assert.are.equal(197, #all)
      assert.are.same({}, g:peek(5))
      raises("bad argument #1 to 'peek' %(count must be 0 to 64%)", function() g:peek(65) end)
      raises("no more than 1 argument expected", function() g:peek(1, 2) end)
    end)

    it("done releases dependents once all their dependencies are done", function()
      local g = graph { { "a" }, { "b" }, { "c", { "a", "b" } } }
      assert.are.same({ "a", "b" }, g:ready())
      assert.is_nil(g:done("a", true))
      assert.are.same({}, g:ready())
      g:done(2, true)
      assert.are.equal("ready", g:state("c"))
      assert.are.same({ "c" }, g:ready())
      g:done("c", true)
      assert.are.same({ pending = 0, ready = 0, running = 0, done = 3, failed = 0, skipped = 0, total = 3 },
                      g:counts())
    end)

    it("a failure skips the transitive dependents and returns them", function()
      local g = graph {
        { "a" }, { "b", { "a" } }, { "c", { "b" } }, { "d", { "c", "x" } }, { "x" }, { "y", { "x" } },
      }
      assert.are.same({ "a", "x" }, g:ready())
      g:done("x", true)
      assert.are.same({ "y" }, g:ready())
      assert.are.same({ "b", "c", "d" }, g:done("a", false))
      assert.are.equal("failed", g:state("a"))
      assert.are.equal("skipped", g:state("d"))
      g:done("y", true)
      assert.are.same({}, g:ready())
      assert.are.same({ pending = 0, ready = 0, running = 0, done = 2, failed = 1, skipped = 3, total = 6 },
                      g:counts())
    end)

    it("release = true lets dependents run after a failure", function()
      local g = graph { { "a" }, { "b", { "a" } } }
      g:ready()
      assert.is_nil(g:done("a", false, { release = true }))
      assert.are.equal("failed", g:state("a"))
      assert.are.same({ "b" }, g:ready())
      assert.are.same({}, g:done("b", false, { release = false }))
    end)

    it("raises on misuse", function()
      local g = graph { { "a" }, { "b", { "a" } } }
      raises("dag_spec%.lua:%d+: dag done: task 'a' is ready, not running", function() g:done("a", true) end)
      g:ready()
      raises("bad argument #1 to 'done' %(unknown task 'q'%)", function() g:done("q", true) end)
      raises("bad argument #2 to 'done' %(boolean expected, got no value%)", function() g:done("a") end)
      raises("bad argument #3 to 'done' %(unknown option 'relase'%)", function() g:done("a", false, { relase = true }) end)
      raises("bad argument #3 to 'done' %(release must be a boolean, got number%)",
             function() g:done("a", false, { release = 1 }) end)
      raises("no more than 3 arguments expected", function() g:done("a", true, nil, 1) end)
      g:done("a", true)
      raises("task 'a' is done, not running", function() g:done("a", true) end)
    end)
  end)

  describe("tasks added during a run", function()
    it("may depend on finished, running and new tasks", function()
      local g = graph { { "a" }, { "b" } }
      assert.are.same({ "a", "b" }, g:ready())
      g:done("a", true)
      g:add("n2", { "n1" })
      g:add("n1", { "a" })
      g:add("n3", { "b", "n1" })
      assert.are.equal("pending", g:state("n1"))
      assert.is_true(g:validate())
      assert.are.equal("ready", g:state("n1"))
      assert.are.same({ "n1" }, g:ready())
      g:done("n1", true)
      g:done("b", true)
      assert.are.same({ "n2", "n3" }, g:ready())
      assert.are.same({ { "a", "b" }, { "n1" }, { "n2", "n3" } }, g:phases())
    end)

    it("behind a failed task are skipped at once", function()
      local g = graph { { "a" }, { "b" } }
      g:ready()
      assert.are.same({}, g:done("a", false))
      g:done("b", false, { release = true })
      g:add("x", { "a" })
      g:add("y", { "x" })
      g:add("z", { "b" })
      assert.is_true(g:validate())
      assert.are.equal("skipped", g:state("x"))
      assert.are.equal("skipped", g:state("y"))
      assert.are.same({ "z" }, g:ready())
    end)

    it("refresh the ranks of queued tasks", function()
      local g = graph { { "a" }, { "b" } }
      g:add("long", { "b" }, { weight = 50 })
      assert.is_true(g:validate())
      assert.are.equal(51, g:rank("b"))
      assert.are.same({ "b", "a" }, g:ready())
    end)

    it("cannot close a cycle through old tasks", function()
      local g = graph { { "a" } }
      g:add("b", { "a", "c" })
      g:add("c", { "b" })
      assert.are.equal("dependency cycle: b -> c -> b", select(2, g:validate()))
      assert.are.same({ "a" }, g:ready())
    end)
  end)

  describe("against the pure-Lua oracle", function()
    -- A random graph: n tasks, each with up to 4 dependencies on earlier tasks (indices into
    -- a shuffled declaration order, so some are forward references), random weights and
    -- priorities; cycles when `cyclic`.
    local function random_tasks(seed, n, cyclic)
      math.randomseed(seed)
      local names, tasks = {}, {}
      for i = 1, n do names[i] = "t" .. i end
      for i = 1, n do
        local deps = {}
        for _ = 1, math.random(0, 4) do
          if i > 1 then deps[#deps + 1] = names[math.random(1, i - 1)] end
        end
        if cyclic and math.random() < 0.1 and i < n then deps[#deps + 1] = names[math.random(i + 1, n)] end
        local opts = { weight = ({ 0, 0.5, 1, 2, 3.25 })[math.random(1, 5)] }
        if math.random() < 0.2 then opts.priority = math.random(-2, 2) end
        tasks[i] = { names[i], deps, opts }
      end
      for i = n, 2, -1 do   -- declare in a shuffled order
        local j = math.random(1, i)
        tasks[i], tasks[j] = tasks[j], tasks[i]
      end
      return tasks
    end

    local function both(tasks)
      local g, o = dag.new(), oracle.new()
      for _, t in ipairs(tasks) do
        assert.are.equal(o:add(t[1], t[2], t[3]), g:add(t[1], t[2], t[3]))
      end
      return g, o
    end

    for seed = 1, 30 do
      it("gives the same phases, critical path and schedule, seed " .. seed, function()
        local tasks = random_tasks(seed, 10 + seed * 7, false)
        local g, o = both(tasks)
        assert.is_true(g:validate())
        assert.is_true(o:validate())
        assert.are.same(o:phases(), g:phases())
        local path, length = g:critical_path()
        assert.are.equal(o:critical_length(), length)
        -- the path is a chain of dependents whose weights add up to the length
        local sum, by_id = 0, {}
        for _, t in ipairs(tasks) do by_id[t[1]] = t end
        for i, id in ipairs(path) do
          sum = sum + by_id[id][3].weight
          if i > 1 then
            local found = false
            for _, d in ipairs(g:deps(id)) do found = found or d == path[i - 1] end
            assert.is_true(found, id .. " does not depend on " .. path[i - 1])
          end
        end
        assert.are.equal(length, sum)
        assert.are.same({}, g:deps(path[1]))
        assert.are.same({}, g:dependents(path[#path]))
        for _, t in ipairs(tasks) do assert.are.equal(o:rank(t[1]), g:rank(t[1])) end

        -- the same schedule: random batch sizes, random failures, some released
        math.randomseed(seed * 1000)
        local done_at, step = {}, 0
        while true do
          local n = math.random(1, 5)
          local a, b = g:ready(n), o:ready(n)
          assert.are.same(b, a)
          if #a == 0 then break end
          for _, id in ipairs(a) do
            step = step + 1
            for _, d in ipairs(g:deps(id)) do
              assert.truthy(done_at[d], id .. " handed out before its dependency " .. d)
            end
            local r = math.random()
            local ok, release = r > 0.1, r < 0.05
            done_at[id] = step
            local skipped = g:done(id, ok, { release = release })
            assert.are.same(o:done(id, ok, release), skipped)
          end
        end
        for _, t in ipairs(tasks) do assert.are.equal(o:state(t[1]), g:state(t[1])) end
        local c = g:counts()
        assert.are.equal(0, c.pending + c.ready + c.running)
      end)
    end

    for seed = 1, 10 do
      it("agrees on errors, seed " .. seed, function()
        local tasks = random_tasks(seed + 100, 60, true)
        tasks[#tasks + 1] = { "extra", { "t" .. (seed % 7 == 0 and 999 or 1) } }
        local g, o = both(tasks)
        local ok, kind = o:validate()
        local gok, gerr, gkind, ids = g:validate()
        assert.are.equal(ok, gok)
        assert.are.equal(kind, gkind)
        assert.are.equal(gok and #tasks or 0, #g)   -- a failed batch is taken back whole
        if gkind == "cycle" then
          -- a real cycle: each task depends on the next, and it comes back to the start
          local deps = {}
          for _, t in ipairs(tasks) do deps[t[1]] = t[2] end
          assert.are.equal(ids[1], ids[#ids])
          for i = 1, #ids - 1 do
            local found = false
            for _, d in ipairs(deps[ids[i]]) do found = found or d == ids[i + 1] end
            assert.is_true(found, gerr)
          end
          assert.are.equal("dependency cycle: " .. table.concat(ids, " -> "), gerr)
        end
      end)
    end
  end)
end)
