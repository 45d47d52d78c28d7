-- Recipe parameters: declared in coral.recipe{ params = }, given with --param NAME=VALUE,
-- --params FILE, or NAME=VALUE after a recipe file's description; checked before anything runs.
local H = require "spec.helper"
local coral = require "coral"
local recipes = require "coral.recipes"

local RECIPE = [[
local coral = require "coral"
return coral.recipe {
  summary = "n shards of a job",
  params = {
    shards = { default = 2, help = "how many shards", type = "integer" },
    label = { default = "job", help = "what to call them" },
    fast = { default = false, help = "skip the slow part" },
  },
  plan = function(description, p)
    local tasks = {}
    for i = 1, p.shards do
      tasks[i] = coral.task("w", description, { id = p.label .. i, cmd = "echo " .. p.label .. i .. (p.fast and " fast" or "") })
    end
    return coral.plan(tasks)
  end,
}
]]

local function ids(plan)
  local out = {}
  for i, t in ipairs(plan.tasks) do out[i] = t.id end
  return out
end

describe("recipe parameters", function()
  local dir, recipe
  before_each(function()
    dir = H.tmpdir()
    recipe = dir .. "/shards.lua"
    H.write_file(recipe, RECIPE)
  end)

  it("reach the plan typed, with their defaults", function()
    assert.are.same({ "job1", "job2" }, ids(recipes.plan(recipe, "x")))
    local p = recipes.plan(recipe, "x", { params = { shards = "3", label = "s", fast = "yes" } })
    assert.are.same({ "s1", "s2", "s3" }, ids(p))
    assert.are.equal("echo s1 fast", p.tasks[1].cmd)
  end)

  it("come from --param, --params FILE and NAME=VALUE after a recipe file's description", function()
    local r = H.run { "run", recipe, "x", "--param", "shards=3", "--param", "label=s", "--show-plan" }
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("3 tasks", r.stdout)
    assert.matches("s3", r.stdout)
    H.write_file(dir .. "/p.json", '{ "shards": 4, "label": "j" }')
    r = H.run { "run", recipe, "x", "--params", dir .. "/p.json", "--param", "label=k", "--show-plan" }
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("k4", r.stdout)   -- --param wins over the file
    H.write_file(dir .. "/p.yaml", 'shards: 1\nlabel: "y"\n')
    r = H.run { "run", recipe, "x", "--params", dir .. "/p.yaml", "--show-plan" }
    assert.matches("1 tasks", r.stdout)
    r = H.run { recipe, "x", "shards=1", "fast=true", "--dir", dir, "--quiet" }
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("Succeeded%s+1\n", r.stdout)
  end)

  it("are listed by coral run TYPE --help", function()
    local r = H.run { "run", recipe, "--help" }
    assert.are.equal(0, r.code)
    assert.matches("parameters of [^\n]*shards%.lua %(%-%-param NAME=VALUE%):\n", r.stdout)
    assert.matches("\n  shards=INTEGER +how many shards %(2%)\n", r.stdout)
  end)

  it("refuse an unknown or ill-typed one, and a recipe without parameters, before anything is written", function()
    local cases = {
      { { "--param", "shard=3" }, "shards%.lua: no parameter 'shard' %(did you mean 'shards'%?%) %(its parameters: fast, label, shards%)" },
      { { "--param", "shards=many" }, "shards%.lua: parameter 'shards' must be a whole number, got 'many'" },
      { { "--param", "fast=maybe" }, "parameter 'fast' must be true or false" },
      { { "--param", "shards" }, "a parameter is NAME=VALUE, got 'shards'" },
      { { "--params", dir .. "/none.json" }, "%-%-params: cannot read" },
    }
    for _, case in ipairs(cases) do
      local r = H.run { "run", recipe, "x", "--dir", dir, table.unpack(case[1]) }
      assert.are.equal(2, r.code, table.concat(case[1], " "))
      assert.matches(case[2], r.stderr)
    end
    local r = H.run { "run", "full_stack", "x", "--param", "a=b", "--dir", dir }
    assert.are.equal(2, r.code)
    assert.matches("full_stack: no parameter 'a' %(its parameters: none%)", r.stderr)
    assert.is_nil(H.read_file(dir .. "/.coral/runs"), "nothing written")
  end)

  it("are declared with care: a bad declaration fails at the recipe's line", function()
    local ok, err = pcall(function()
      local r = coral.recipe { plan = function() end, params = { n = { default = "two", type = "integer" } } }
      return r
    end)
    assert.is_false(ok)
    assert.matches("params_spec%.lua:%d+: coral.recipe: params.n: default must be a whole number, got string",
                   tostring(err))
    ok, err = pcall(function() return coral.recipe { plan = function() end, params = { project_dir = {} } } end)
    assert.is_false(ok)
    assert.matches("'project_dir' is not a parameter name", tostring(err))
  end)
end)
