-- `coral run` and recipe files from the command line: exit codes, bad plans, --show-plan.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"

local entries = H.entries

describe("coral run", function()
  it("prints the six phases of full_stack with --show-plan", function()
    local r = H.run { "run", "full_stack", "Todo app with auth", "--show-plan" }
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("10 tasks in 6 phases", r.stdout)
    for p = 1, 6 do assert.matches("Phase " .. p .. ":", r.stdout) end
    assert.falsy(r.stdout:find("Phase 7:", 1, true))
  end)

  it("runs a recipe file with a description and options, exit 0 when all succeed", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
local t = coral.task
return function(description)
  return coral.plan {
    { t("one", "first", { cmd = { "sh", "-c", "echo \"$0\"", description } }) },
    { t("two", "second", { cmd = "true" }) },
  }
end
]])
    local r = H.run({ dir .. "/r.lua", "hello project", "--dir", dir, "--quiet" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("Succeeded%s+2", r.stdout)
    assert.truthy(H.read_file(dir .. "/activity_tracker.md"))
  end)

  it("exits 1 when a task fails", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", 'local t = require("coral").task\nreturn require("coral").plan { t("x", "fail", { cmd = "exit 4" }) }\n')
    local r = H.run({ dir .. "/r.lua", "d", "--dir", dir, "--quiet", "--retries", "0" })
    assert.are.equal(1, r.code)
    assert.matches("exit code 4", r.stdout)
  end)

  local bad_plans = {
    { "a cycle", 'return coral.plan { t("a", "x", { depends_on = { "b" } }),\n  t("b", "y", { depends_on = { "a" } }) }\n',
      "r.lua:3: dependency cycle: a %-> b %-> a" },
    { "an unknown dependency", 'return coral.plan { t("a", "x", { depends_on = { "zzz" } }) }\n',
      "r.lua:3: task 'a' depends on unknown task 'zzz'" },
    { "a duplicate id", 'return coral.plan { t("a", "x", { id = "d" }),\n t("b", "y", { id = "d" }) }\n',
      "r.lua:4: duplicate task id 'd' %(first declared at .*r.lua:3%)" },
    { "a wrong option type", 'return coral.plan { t("a", "x", { retries = "many" }) }\n',
      "r.lua:3: coral.task: option 'retries' must be integer, got string" },
    { "a syntax error", 'return coral.plan { t("a" "x") }\n', "r.lua:3: '%)' expected near '\"x\"'" },
    { "a runtime error", 'local x = nil\nreturn x.y\n', "r.lua:4: attempt to index a nil value" },
  }
  for _, case in ipairs(bad_plans) do
    it("reports " .. case[1] .. " with the recipe's file:line, exits 2, writes nothing", function()
      local dir = H.tmpdir()
      local project = dir .. "/project"
      uv.fs_mkdir(project, tonumber("755", 8))
      H.write_file(dir .. "/r.lua", 'local coral = require "coral"\nlocal t = coral.task\n' .. case[2])
      local r = H.run({ dir .. "/r.lua", "desc", "--dir", project })
      assert.are.equal(2, r.code, r.stderr)
      assert.matches(case[3], r.stderr)
      assert.are.same({}, entries(project))
    end)
  end

  it("rejects a bad option value with exit 2", function()
    local r = H.run { "run", "full_stack", "x", "--max-workers", "lots" }
    assert.are.equal(2, r.code)
    assert.matches("option '%-%-max%-workers' needs a whole number, got 'lots'", r.stderr)
    r = H.run { "run", "full_stack", "x", "--mode", "warp", "--dir", H.tmpdir() }
    assert.are.equal(2, r.code)
    assert.matches("mode must be one of dependency, parallel, phased, pipeline, sequential, got 'warp'", r.stderr)
  end)

  it("lists the recipes", function()
    local r = H.run { "recipes" }
    assert.are.equal(0, r.code)
    assert.matches("full_stack", r.stdout)
  end)

  it("shows the status of the last run", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", 'local t = require("coral").task\nreturn require("coral").plan { t("solo", "x", { cmd = "true" }) }\n')
    assert.are.equal(0, H.run({ dir .. "/r.lua", "d", "--dir", dir, "--quiet" }).code)
    local r = H.run { "status", "--dir", dir }
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("succeeded%s+solo", r.stdout)
  end)

  it("appends notes and log lines from the command line", function()
    local dir = H.tmpdir()
    assert.are.equal(0, H.run({ "note", "--dir", dir, "remember", "this" }).code)
    assert.are.equal(0, H.run({ "log", "--dir", dir, "did a thing" }).code)
    assert.matches("remember this\n", H.read_file(dir .. "/scratchpad.md"))
    assert.matches("did a thing\n", H.read_file(dir .. "/activity_tracker.md"))
  end)
end)
