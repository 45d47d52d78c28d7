-- The recipe library and the prompts it produces: every recipe loads both ways, full_stack runs
-- with the simulated agent, --agent prompt writes composed prompts with their handoffs, the
-- examples work.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local cjson = require "cjson"
local prompt = require "coral.prompt"

local LIBRARY = { full_stack = 10, api = 7, frontend = 6, microservice = 8, mobile_app = 9,
                  data_pipeline = 9, ml_feature = 10, ["examples/phased"] = 11 }

local function last_run(dir)
  local runs, last = dir .. "/.coral/runs", nil
  local handle = uv.fs_scandir(runs)
  while handle do
    local name = uv.fs_scandir_next(handle)
    if not name then break end
    if not last or name > last then last = name end
  end
  return runs .. "/" .. last
end

local function summary_of(dir)
  return cjson.decode(H.read_file(last_run(dir) .. "/summary.json"))
end

describe("the recipe library", function()
  it("runs every recipe as `coral run NAME` and as `coral recipes/NAME.lua`, each with a header comment", function()
    local listing = H.run { "recipes" }
    assert.are.equal(0, listing.code, listing.stderr)
    for name, n in pairs(LIBRARY) do
      local pattern = name:gsub("[%-_/]", "%%%0")
      assert.matches("\n?" .. pattern .. "%s+%a", listing.stdout)
      local a = H.run { "run", name, "Some project", "--show-plan", "--format", "json" }
      assert.are.equal(0, a.code, name .. ": " .. a.stderr)
      assert.are.equal(n, #cjson.decode(a.stdout).tasks, name)
      local b = H.run({ "recipes/" .. name .. ".lua", "Some project", "--show-plan", "--format", "json" }, { cwd = H.root })
      assert.are.equal(0, b.code, name .. ": " .. b.stderr)
      assert.are.same(cjson.decode(a.stdout).tasks, cjson.decode(b.stdout).tasks)
      local source = H.read_file(H.root .. "/recipes/" .. name .. ".lua")
      assert.matches("^%-%- " .. pattern .. ": %a", source)
    end
  end)

  it("uses only known agent roles in the built-in recipes", function()
    local roles = require("coral.agents").load(H.tmpdir())
    for name in pairs(LIBRARY) do
      local plan = require("coral.recipes").plan(name, "x")
      for _, t in ipairs(plan.tasks) do assert.truthy(roles[t.agent], name .. ": no role " .. t.agent) end
    end
  end)

  it("gives the api and frontend plans the shapes they are meant to have", function()
    local api = require("coral.recipes").plan("api", "x")
    assert.are.same({ "api-designer", "database-specialist" }, api.by_id["backend-developer"].depends_on)
    assert.are.same({ "api-designer" }, api.by_id["security-specialist"].depends_on)
    local fe = require("coral.recipes").plan("frontend", "x")
    assert.are.same({ "ui-designer", "frontend-architecture" }, fe.by_id.components.depends_on)
    assert.are.same({ "ui-designer" }, fe.by_id["accessibility-specialist"].depends_on)
  end)

  it("lists each recipe with its summary, and warns of one that does not load", function()
    local dir = H.tmpdir()
    assert(require("coral.fsutil").mkdirs(dir .. "/.coral/recipes"))
    H.write_file(dir .. "/.coral/recipes/mine.lua", '-- mine: the header comment\n' ..
      'local coral = require "coral"\nreturn coral.recipe { summary = "the recipe\'s own summary", ' ..
      'plan = function() return coral.plan { coral.task("a", "x", { cmd = "true" }) } end }\n')
    H.write_file(dir .. "/.coral/recipes/broken.lua", "return coral.plan {\n")
    local r = H.run({ "recipes" }, { cwd = dir })
    assert.are.equal(1, r.code)
    assert.matches("\nmine%s+the recipe's own summary\n", r.stdout)
    assert.matches("\nfull_stack%s+a web application: architecture", r.stdout)
    assert.is_nil(r.stdout:find("broken", 1, true))
    assert.matches("^coral: warning: recipe broken does not load: [^\n]*broken%.lua:2: ", r.stderr)
  end)

  it("refuses an unknown type, naming the nearest and the known ones; --default-plan falls back", function()
    local typo = H.run { "run", "ful_stack", "x", "--show-plan" }
    assert.are.equal(2, typo.code)
    assert.matches("^coral: unknown project type 'ful_stack' %(did you mean 'full_stack'%?%); known types: api, ",
                   typo.stderr)
    local none = H.run { "run", "spaceship", "x", "--show-plan" }
    assert.are.equal(2, none.code)
    assert.is_nil(none.stderr:find("did you mean", 1, true))
    local r = H.run { "run", "spaceship", "x", "--show-plan", "--default-plan" }
    assert.are.equal(0, r.code)
    assert.matches("unknown project type 'spaceship'.*Known types: api, data_pipeline, ", r.stderr)
    assert.matches("3 tasks in 3 phases", r.stdout)
  end)

  it("runs full_stack for a todo app with the simulated agent: all ten tasks complete", function()
    local dir = H.tmpdir()
    local r = H.run({ "run", "full_stack", "Todo app with auth", "--agent", "sim", "--sim-scale", "0.001",
                      "--dir", dir, "--max-workers", "4" }, { timeout = 120 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("Succeeded%s+10\n", r.stdout)
    local s = summary_of(dir)
    assert.are.equal(10, s.succeeded)
    assert.are.equal(3, s.max_parallel)
    assert.matches("simulated", H.read_file(dir .. "/deliverables/backend-developer.md"))
    assert.matches("finished %(simulated%)", H.read_file(dir .. "/scratchpad.md"))
  end)

  it("writes ten composed prompts with --agent prompt, each with its role, and the handoff of its dependencies", function()
    local dir = H.tmpdir()
    local r = H.run({ "run", "full_stack", "Todo app with auth", "--agent", "prompt", "--dir", dir, "--quiet" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local run = last_run(dir)
    local plan = require("coral.recipes").plan("full_stack", "Todo app with auth")
    local n = 0
    for _, t in ipairs(plan.tasks) do
      local text = assert(H.read_file(run .. "/tasks/" .. t.id .. "/prompt.md"), t.id)
      n = n + 1
      assert.matches("^# Role\n\nYou are the ", text)
      assert.matches("# Project\n\nTodo app with auth\n", text)
      assert.matches("# Your task\n\n" .. t.task:gsub("%p", "%%%0"), text)
      assert.matches(dir:gsub("%p", "%%%0") .. "/scratchpad.md: shared working memory", text)
      assert.matches('`coral note "%.%.%."`', text)
      if #t.depends_on > 0 then
        assert.matches("# Handoff from the tasks this one depends on", text)
        for _, d in ipairs(t.depends_on) do
          assert.matches("## " .. d:gsub("%-", "%%-") .. " %(", text)
          assert.matches("Full output: " .. (run .. "/tasks/" .. d .. "/output.md"):gsub("%p", "%%%0"), text)
        end
      else
        assert.falsy(text:find("# Handoff", 1, true))
      end
    end
    assert.are.equal(10, n)
  end)

  it("runs the test-suites example as parallel shell commands and reports each suite", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/Makefile", "test:\n\t@echo make-suite-ok\n")
    uv.fs_mkdir(dir .. "/tests", 493)
    H.write_file(dir .. "/tests/run.sh", "echo shell-suite-ok\n")
    local r = H.run({ "run", "examples/test_suites", "", "--dir", dir, "--quiet" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s = summary_of(dir)
    assert.are.equal(3, s.succeeded)
    local report = H.read_file(s.results.report.output_file)
    assert.matches("== test%-make\nmake%-suite%-ok", report)
    assert.matches("== test%-shell\nshell%-suite%-ok", report)
  end)

  it("builds one reviewer per file in the review example, and a summary after all of them", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/a.lua", "return 1\n")
    uv.fs_mkdir(dir .. "/src", 493)
    H.write_file(dir .. "/src/b.c", "int main(void) { return 0; }\n")
    H.write_file(dir .. "/notes.txt", "not code\n")
    local r = H.run({ "run", "examples/review_each_file", "", "--dir", dir, "--show-plan", "--format", "json" })
    assert.are.equal(0, r.code, r.stderr)
    local ids = {}
    local plan = cjson.decode(r.stdout)
    for _, t in ipairs(plan.tasks) do ids[#ids + 1] = t.id end
    assert.are.same({ "review-a.lua", "review-src_b.c", "review-summary" }, ids)
    assert.are.same({ "review-a.lua", "review-src_b.c" }, plan.tasks[3].depends_on)
  end)
end)

-- The project types of the tool coral replaces, as each library recipe declares them.
local ALIASES = {
  full_stack = { "full_stack_app", "fullstack", "web_app" }, api = { "api_service", "backend", "rest_api" },
  frontend = { "frontend_app", "spa", "web_frontend" }, microservice = { "microservices" },
  mobile_app = { "mobile", "mobile_application" }, data_pipeline = { "etl", "etl_pipeline" },
  ml_feature = { "machine_learning", "ml_model" },
}

-- A project recipe `name` with these aliases and one parameter, `shards` command tasks.
local function shards_recipe(dir, name, aliases)
  assert(require("coral.fsutil").mkdirs(dir .. "/.coral/recipes"))
  H.write_file(dir .. "/.coral/recipes/" .. name .. ".lua", string.format([[
local coral = require "coral"
return coral.recipe {
  summary = "n shards of a job",
  aliases = { %s },
  params = { shards = { default = 2, type = "integer", help = "how many shards" } },
  plan = function(description, p)
    local tasks = {}
    for i = 1, p.shards do tasks[i] = coral.task("w", description, { id = "s" .. i, cmd = "true" }) end
    return coral.plan(tasks)
  end,
}
]], '"' .. table.concat(aliases, '", "') .. '"'))
end

describe("recipe aliases", function()
  it("runs full_stack as `coral run full_stack_app` with the simulated agent", function()
    local dir = H.tmpdir()
    local r = H.run({ "run", "full_stack_app", "x", "--agent", "sim", "--sim-scale", "0.001", "--dir", dir,
                      "--quiet" }, { timeout = 120 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s = summary_of(dir)
    assert.are.equal(10, s.succeeded)
    assert.matches("%(full_stack%)", r.stdout)
    assert.truthy(s.results["devops-deployment"])
  end)

  it("gives each library recipe its aliases: each plans the recipe, and `coral recipes` lists them", function()
    local listing = H.run { "recipes" }
    assert.are.equal(0, listing.code, listing.stderr)
    for name, aliases in pairs(ALIASES) do
      assert.matches("\n" .. name .. "%s+[^\n]* %(aliases: " .. table.concat(aliases, ", ") .. "%)\n", "\n" .. listing.stdout)
      for _, alias in ipairs(aliases) do
        local r = H.run { "run", alias, "x", "--show-plan", "--format", "json" }
        assert.are.equal(0, r.code, alias .. ": " .. r.stderr)
        assert.are.equal(name, cjson.decode(r.stdout).name, alias)
        assert.are.equal(LIBRARY[name], #cjson.decode(r.stdout).tasks, alias)
      end
    end
    local typo = H.run { "run", "full_stak_app", "x", "--show-plan" }
    assert.are.equal(2, typo.code)
    assert.matches("^coral: unknown project type 'full_stak_app' %(did you mean 'full_stack_app'%?%)", typo.stderr)
  end)

  it("resolves an alias in create_parallel_plan and execute_workflow", function()
    local r = H.run({ "-" }, { cwd = H.tmpdir(), stdin = [[
local coral = require "coral"
local runner = coral.runner { driver = "sim", sim_scale = 0.001, output = "quiet" }
local plan = runner:create_parallel_plan("full_stack_app", "Todo app")
assert(plan.name == "full_stack" and #plan.tasks == 10, plan.name)
local summary = coral.orchestrator { driver = "sim", sim_scale = 0.001, output = "quiet" }
  :execute_workflow { project_type = "rest_api", project_description = "Payments API" }
assert(summary.succeeded == 7 and summary.plan == "api", tostring(summary.plan))
]] })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
  end)

  it("takes a project recipe's aliases for running, --help, did-you-mean and the listing", function()
    local dir = H.tmpdir()
    shards_recipe(dir, "shards", { "sharded" })
    local help = H.run({ "run", "sharded", "--help" }, { cwd = dir })
    assert.are.equal(0, help.code, help.stderr)
    assert.matches("\nparameters of shards %(%-%-param NAME=VALUE; sharded is its alias%):\n" ..
                   "  shards=INTEGER%s+how many shards %(2%)\n", help.stdout)
    local r = H.run({ "run", "sharded", "x", "--dir", dir, "--param", "shards=3", "--show-plan", "--format", "json" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(3, #cjson.decode(r.stdout).tasks)
    r = H.run({ "run", "shardd", "x", "--dir", dir, "--show-plan" })
    assert.are.equal(2, r.code)
    assert.matches("did you mean 'sharded'%?", r.stderr)
    r = H.run({ "recipes" }, { cwd = dir })
    assert.matches("\nshards%s+n shards of a job %(aliases: sharded%)\n", r.stdout)
  end)

  it("lets a recipe's own name beat an alias", function()
    local dir = H.tmpdir()
    shards_recipe(dir, "web_app", { "sharded" })
    local r = H.run({ "run", "web_app", "x", "--dir", dir, "--show-plan", "--format", "json" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("web_app", cjson.decode(r.stdout).name)
    r = H.run({ "recipes" }, { cwd = dir })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("\nfull_stack%s+[^\n]*%(aliases: full_stack_app, fullstack%)\n", r.stdout)
    assert.matches("\nweb_app%s+n shards of a job %(aliases: sharded%)\n", r.stdout)
  end)

  it("refuses an alias two recipes declare, naming both files, and writes nothing", function()
    local dir = H.tmpdir()
    shards_recipe(dir, "shards", { "sharded", "web_app" })
    local r = H.run({ "run", "web_app", "x", "--dir", dir, "--agent", "sim" })
    assert.are.equal(2, r.code)
    assert.matches("^coral: [^\n]*/%.coral/recipes/shards%.lua: alias 'web_app' of recipe shards is also an " ..
                   "alias of recipe full_stack %(recipes/full_stack%.lua%)", r.stderr)
    assert.are.same({ ".coral" }, H.entries(dir))
    assert.are.same({ "recipes" }, H.entries(dir .. "/.coral"))
    -- the real name needs no alias: full_stack still runs
    assert.are.equal(0, H.run({ "run", "full_stack", "x", "--dir", dir, "--show-plan" }).code)
    r = H.run({ "recipes" }, { cwd = dir })
    assert.are.equal(1, r.code)
    assert.matches("coral: [^\n]*shards%.lua: alias 'web_app' of recipe shards", r.stderr)
  end)

  it("refuses an alias that is not a name, at the recipe's line", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", 'local coral = require "coral"\nlocal r = coral.recipe {\n' ..
      '  aliases = { "web app" }, plan = function() end }\nreturn r\n')
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir })
    assert.are.equal(2, r.code)
    assert.matches("r%.lua:2: coral%.recipe: aliases: 'web app' is not a recipe name", r.stderr)
  end)
end)

describe("prompt composition", function()
  it("trims a long handoff to its budget, keeping both ends and the path of the whole output", function()
    local dir = H.tmpdir()
    local long = "BEGIN " .. string.rep("x", 20000) .. " END"
    H.write_file(dir .. "/out.md", long)
    local text = prompt.compose({ id = "b", agent = "b", task = "do b", depends_on = { "a" } }, {
      project = "p", project_dir = dir, scratchpad = dir .. "/scratchpad.md", activity = dir .. "/activity.md",
      handoffs = { { id = "a", agent = "architect", output_path = dir .. "/out.md" } },
    })
    local section = text:match("## a %(architect%)\n\n(.-)\n# Working")
    assert.matches("^Full output: " .. dir:gsub("%p", "%%%0") .. "/out%.md\n\nBEGIN x", section)
    assert.matches("x END\n$", section)
    assert.matches("%[%.%.%. %d+ bytes left out here; the whole output is in .*/out%.md %.%.%.%]", section)
    assert.is_true(#section < prompt.HANDOFF_BUDGET + 400)
  end)

  it("shares the total handoff budget among many dependencies, and includes .coral/context.md", function()
    local dir = H.tmpdir()
    uv.fs_mkdir(dir .. "/.coral", 493)
    H.write_file(dir .. "/.coral/context.md", "Use PostgreSQL 16.\n")
    local handoffs = {}
    for i = 1, 12 do
      H.write_file(dir .. "/o" .. i, string.rep("y", 5000))
      handoffs[i] = { id = "d" .. i, agent = "x", output_path = dir .. "/o" .. i }
    end
    local text = prompt.compose({ id = "s", agent = "s", task = "sum" }, {
      project = "p", project_dir = dir, scratchpad = "S", activity = "A", handoffs = handoffs,
    })
    assert.matches("# Project context\n\nUse PostgreSQL 16.\n", text)
    assert.matches("each trimmed to 2000 bytes", text)
    assert.is_true(#text < 12 * 2400 + 2000)
  end)
end)
