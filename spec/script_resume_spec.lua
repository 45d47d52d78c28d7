-- `coral resume` of a run that a script started itself (`coral script.lua`, whose code calls
-- runner:execute_plan): the script runs again the same way and each of its execute_plan calls
-- continues its own run, in order (lua/coral/run/script.lua). Real scripts, real processes.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local cjson = require "cjson"

-- name -> number of lines `name` in a task's counter file
local function counts(path)
  local n = {}
  for line in (H.read_file(path) or ""):gmatch("[^\n]+") do n[line] = (n[line] or 0) + 1 end
  return n
end

local function run_dirs(project)
  local dirs = {}
  for _, id in ipairs(H.entries(project .. "/.coral/runs")) do dirs[#dirs + 1] = project .. "/.coral/runs/" .. id end
  return dirs
end

local function json(path)
  local text = assert(H.read_file(path), "no " .. path)
  return cjson.decode(text)
end

-- The journal's events of a run, as a list.
local function events(run_dir)
  local list = {}
  for line in (H.read_file(run_dir .. "/journal.jsonl") or ""):gmatch("[^\n]+") do list[#list + 1] = cjson.decode(line) end
  return list
end

-- Has the run in `project` started task `id` (its first attempt's process is running)?
local function started(project, id)
  local dirs = uv.fs_stat(project .. "/.coral/runs") and run_dirs(project) or {}
  for _, d in ipairs(dirs) do
    for _, e in ipairs(events(d)) do
      if e.event == "start" and e.task == id then return true end
    end
  end
  return false
end

-- A script with two execute_plan calls on two project dirs, each run ending the script with
-- exit 1 when it did not succeed. `fix` does not exist on the first run: then task `check` of
-- the second call fails (no retries). Each task appends its id to <home>/counter, and
-- what it sees of CORAL_RESUME_* to <home>/env.
local TWO_CALLS = [[
local coral = require "coral"
local t = coral.task
local home = ...
local function run(project, tasks)
  local summary = coral.runner({ project_dir = home .. "/" .. project, output = "quiet", retries = 0 })
    :execute_plan(coral.plan(tasks))
  if summary.status ~= "succeeded" then os.exit(1) end
end
local function count(id) return "echo " .. id .. " >> " .. home .. "/counter; { env | grep CORAL_RESUME || true; } >> " .. home .. "/env; " end
run("one", { t("w", "build", { id = "build", cmd = count("build") }) })
run("two", {
  t("w", "prepare", { id = "prepare", cmd = count("prepare") }),
  t("w", "check", { id = "check", cmd = count("check") .. "test -e " .. home .. "/fix", depends_on = { "prepare" } }),
})
print("the script ran to its end")
]]

describe("coral resume of a script that calls execute_plan", function()
  it("runs the script again: the first call's run does not run again, the second continues", function()
    local home = H.tmpdir()
    uv.fs_mkdir(home .. "/one", tonumber("755", 8))
    uv.fs_mkdir(home .. "/two", tonumber("755", 8))
    uv.fs_mkdir(home .. "/scripts", tonumber("755", 8))
    H.write_file(home .. "/scripts/build.lua", TWO_CALLS)
    -- started by a relative path from another directory: the record has the absolute one
    local first = H.run({ "scripts/build.lua", home }, { cwd = home })
    assert.are.equal(1, first.code, first.stdout .. first.stderr)
    assert.are.same({ build = 1, prepare = 1, check = 1 }, counts(home .. "/counter"))
    local one, two = run_dirs(home .. "/one"), run_dirs(home .. "/two")
    assert.are.equal(1, #one)
    assert.are.equal(1, #two)
    local inv1, inv2 = json(one[1] .. "/invocation.json"), json(two[1] .. "/invocation.json")
    assert.are.equal(home .. "/scripts/build.lua", inv1.script)
    assert.are.same({ home }, inv1.args)
    assert.are.equal(home, inv1.cwd)
    assert.are.equal(1, inv1.call)
    assert.are.equal(2, inv2.call)
    assert.are.equal(inv1.execution, inv2.execution)

    -- the views read such runs as any other
    local why = H.run { "why", "check", "--dir", home .. "/two" }
    assert.are.equal(0, why.code, why.stderr)
    assert.matches("^check will not run on resume unless %-%-retry%-failed is given", why.stdout)
    local status = H.run { "status", "--dir", home .. "/one" }
    assert.are.equal(0, status.code, status.stderr)
    assert.matches("succeeded", status.stdout)

    -- the user fixes what failed and resumes, from elsewhere, naming the second run's dir
    H.write_file(home .. "/fix", "")
    local resumed = H.run({ "resume", "--retry-failed", "--dir", home .. "/two" }, { cwd = "/" })
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    assert.matches("the script ran to its end", resumed.stdout)
    assert.are.same({ build = 1, prepare = 1, check = 2 }, counts(home .. "/counter"))
    -- no new runs: each call continued its own
    assert.are.same(one, run_dirs(home .. "/one"))
    assert.are.same(two, run_dirs(home .. "/two"))
    assert.are.equal("succeeded", json(one[1] .. "/summary.json").status)
    local summary = json(two[1] .. "/summary.json")
    assert.are.equal("succeeded", summary.status)
    assert.are.equal(2, summary.results.check.attempts)
    assert.are.same(inv2, json(two[1] .. "/invocation.json"))
    -- the resume's mark was coral's alone: the tasks it started never saw it
    assert.are.equal("", H.read_file(home .. "/env") or "")
    status = H.run { "status", "--dir", home .. "/two" }
    assert.are.equal(0, status.code, status.stderr)
    assert.matches("succeeded%s+check%s+attempts 2", status.stdout)
  end)

  it("continues a script stopped by Ctrl-C (exit 130) without running finished tasks again", function()
    local home = H.tmpdir()
    -- two calls on one project dir; the second's `slow` waits until the spec lets it go
    H.write_file(home .. "/s.lua", [[
local coral = require "coral"
local t = coral.task
local home = ...
local runner = coral.runner { project_dir = home, output = "quiet", retries = 0 }
local function count(id) return "echo " .. id .. " >> counter; " end
assert(runner:execute_plan(coral.plan { t("w", "a", { id = "a", cmd = count("a") }) }).status == "succeeded")
local s = runner:execute_plan(coral.plan {
  t("w", "quick", { id = "quick", cmd = count("quick") }),
  t("w", "slow", { id = "slow", cmd = count("slow") .. "while ! test -e go; do sleep 0.05; done" }),
  t("w", "last", { id = "last", cmd = count("last"), depends_on = { "quick", "slow" } }),
})
print("second call", s.status)
]])
    local t0 = uv.hrtime()
    local r = H.start({ home .. "/s.lua", home }, { cwd = home })
    H.wait_until(function()
      return started(home, "slow") and (counts(home .. "/counter").quick or 0) == 1
    end)
    uv.sleep(600)   -- the run has been going for a while
    uv.kill(r.pid, "sigint")
    assert.are.equal(130, H.wait_for(r, 15))
    local stopped = (uv.hrtime() - t0) / 1e9
    assert.matches("coral: interrupted by SIGINT", table.concat(r.output))
    local runs = run_dirs(home)
    assert.are.equal(2, #runs)
    assert.are.equal("interrupted", json(runs[2] .. "/summary.json").status)

    uv.sleep(1500)  -- a pause between the two sessions, which the summary must not count
    H.write_file(home .. "/go", "")
    local t1 = uv.hrtime()
    local resumed = H.run({ "resume" }, { cwd = home })
    local again = (uv.hrtime() - t1) / 1e9
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    assert.matches("second call\tsucceeded", resumed.stdout)
    assert.are.same({ a = 1, quick = 1, slow = 2, last = 1 }, counts(home .. "/counter"))
    assert.are.same(runs, run_dirs(home))
    local summary = json(runs[2] .. "/summary.json")
    assert.are.equal("succeeded", summary.status)
    assert.are.equal(3, summary.succeeded)
    -- running time only: the two sessions, not the pause between them
    assert.is_true(summary.total_time_seconds <= stopped + again,
      string.format("total %.2f s, but the sessions ran %.2f s", summary.total_time_seconds, stopped + again))
    assert.is_true(summary.total_time_seconds >= 0.6)
  end)

  it("starts the call that never started after the first finished (coral killed between them)", function()
    local home = H.tmpdir()
    H.write_file(home .. "/s.lua", [[
local coral = require "coral"
local uv = require "luv"
local t = coral.task
local home = ...
local runner = coral.runner { project_dir = home, output = "quiet" }
runner:execute_plan(coral.plan { t("w", "a", { id = "a", cmd = "echo a >> counter" }) })
-- between the calls: wait for the spec's go
while not uv.fs_stat(home .. "/go") do uv.sleep(20) end
runner:execute_plan(coral.plan { t("w", "b", { id = "b", cmd = "echo b >> counter" }) })
]])
    local r = H.start({ home .. "/s.lua", home }, { cwd = home })
    H.wait_until(function()
      local runs = uv.fs_stat(home .. "/.coral/runs") and run_dirs(home) or {}
      return runs[1] and uv.fs_stat(runs[1] .. "/summary.json") ~= nil
    end)
    uv.sleep(100)
    uv.kill(r.pid, "sigkill")
    H.wait_for(r)
    local runs = run_dirs(home)
    assert.are.equal(1, #runs)
    local inv1 = json(runs[1] .. "/invocation.json")

    H.write_file(home .. "/go", "")
    local resumed = H.run({ "resume", "--dir", home })
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    assert.are.same({ a = 1, b = 1 }, counts(home .. "/counter"))
    local after = run_dirs(home)
    assert.are.equal(2, #after)
    assert.are.equal(runs[1], after[1])
    -- the new run belongs to the same execution, as its second call: a later resume finds it
    local inv2 = json(after[2] .. "/invocation.json")
    assert.are.equal(inv1.execution, inv2.execution)
    assert.are.equal(2, inv2.call)
    assert.are.equal("succeeded", json(after[2] .. "/summary.json").status)
    local again = H.run({ "resume", "--dir", home })
    assert.are.equal(0, again.code, again.stdout .. again.stderr)
    assert.are.same({ a = 1, b = 1 }, counts(home .. "/counter"))
    assert.are.equal(2, #run_dirs(home))
  end)

  it("refuses, exit 2, when the script or the directory it ran in is gone", function()
    local home = H.tmpdir()
    local project = home .. "/project"
    uv.fs_mkdir(project, tonumber("755", 8))
    local script = [[
local coral = require "coral"
coral.runner({ project_dir = ]] .. string.format("%q", project) .. [[, output = "quiet" })
  :execute_plan(coral.plan { coral.task("w", "a", { id = "a", cmd = "false" }) })
]]
    H.write_file(home .. "/s.lua", script)
    local r = H.run({ home .. "/s.lua" }, { cwd = home })
    assert.are.equal(0, r.code, r.stderr)
    local run_dir = run_dirs(project)[1]
    local id = run_dir:match("[^/]+$")
    local before = H.read_file(run_dir .. "/journal.jsonl")

    uv.fs_unlink(home .. "/s.lua")
    r = H.run({ "resume", "--dir", project })
    assert.are.equal(2, r.code)
    assert.are.equal("coral: cannot resume run " .. id .. ": its script " .. home ..
                     "/s.lua is gone (or not readable)\n", r.stderr)
    assert.are.equal(before, H.read_file(run_dir .. "/journal.jsonl"))

    -- a script started from a directory that is gone since
    local cwd = home .. "/gone"
    uv.fs_mkdir(cwd, tonumber("755", 8))
    H.write_file(home .. "/s.lua", script)
    r = H.run({ home .. "/s.lua" }, { cwd = cwd })
    assert.are.equal(0, r.code, r.stderr)
    uv.fs_rmdir(cwd)
    run_dir = run_dirs(project)[2]
    id = run_dir:match("[^/]+$")
    r = H.run({ "resume", "--dir", project })
    assert.are.equal(2, r.code)
    assert.are.equal("coral: cannot resume run " .. id .. ": the directory its script ran in, " .. cwd ..
                     ", is gone\n", r.stderr)

    -- the script's runners choose their output: --json and --quiet are not for such runs
    r = H.run({ "resume", "--dir", project, "--json" })
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find("option '--json': run " .. id .. " was started by the script", 1, true), r.stderr)
  end)

  it("records nothing for coral -e, standard input and the REPL, which cannot be run again", function()
    local project = H.tmpdir()
    local code = string.format([[
local coral = require "coral"
coral.runner({ project_dir = %q, output = "quiet" }):execute_plan(coral.plan { coral.task("w", "a", { cmd = "true" }) })
]], project)
    assert.are.equal(0, H.run({ "-e", code }).code)
    assert.are.equal(0, H.run({ "-" }, { stdin = code }).code)
    -- the REPL after a script (-i): what is typed there is no call of the script
    H.write_file(project .. "/empty.lua", "")
    assert.are.equal(0, H.run({ "-i", project .. "/empty.lua" }, { stdin = code:gsub("\n", " ") .. "\n" }).code)
    local runs = run_dirs(project)
    assert.are.equal(3, #runs)
    for _, d in ipairs(runs) do assert.is_nil(uv.fs_stat(d .. "/invocation.json")) end
    local r = H.run({ "resume", "--dir", project })
    assert.are.equal(2, r.code)
    assert.matches("was started from Lua %(coral %-e, standard input or the REPL%)", r.stderr)
  end)
end)
