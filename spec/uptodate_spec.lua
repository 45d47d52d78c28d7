-- Up-to-date checks, as a recipe author meets them: a task that declares outputs is not run
-- again while its outputs, inputs and definition are as its last success left them; --force
-- and `force = true` run it; a resume reruns a finished task whose definition changed, with
-- its dependents, and `coral why` says which field changed.
local H = require "spec.helper"
local cjson = require "cjson"

-- A two-step build from src.txt, and a task after it that declares nothing.
local RECIPE = [[
local coral = require "coral"
local step = os.getenv("STEP_TEXT") or "built"
return coral.recipe {
  summary = "a build with declared files",
  plan = function()
    return {
      coral.task { id = "build", cmd = "tr a-z A-Z < src.txt > out.txt; echo ]] .. "\" .. step .. \"" .. [[",
                   inputs = { "src.txt" }, outputs = { "out.txt" } },
      coral.task { id = "pack", cmd = "cat out.txt > pack.txt", inputs = { "out.txt" }, outputs = { "pack.txt" } },
      coral.task { id = "report", cmd = "echo report", depends_on = { "pack" } },
    }
  end,
}
]]

-- The journal of the newest run: task id -> its last event name ("end" outcome, "up_to_date").
local function last_events(dir)
  local runs = H.entries(dir .. "/.coral/runs")
  table.sort(runs)
  local out = {}
  for line in io.lines(dir .. "/.coral/runs/" .. runs[#runs] .. "/journal.jsonl") do
    local e = cjson.decode(line)
    if e.task and (e.event == "end" or e.event == "up_to_date" or e.event == "rerun") then
      out[e.task] = e.event == "end" and e.outcome or e.event
    end
  end
  return out
end

describe("up-to-date checks", function()
  local dir, recipe
  before_each(function()
    dir = H.tmpdir()
    recipe = dir .. "/build.lua"
    H.write_file(recipe, RECIPE)
    H.write_file(dir .. "/src.txt", "hello\n")
  end)

  local function run(extra, env)
    local args = { recipe, "x", "--dir", dir }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    return H.run(args, { env = env and H.env(env) })
  end

  it("do not run a task again while its outputs, inputs and definition are unchanged", function()
    local r = run()
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ build = "succeeded", pack = "succeeded", report = "succeeded" }, last_events(dir))
    r = run()
    assert.are.equal(0, r.code, r.stderr)
    -- the task that declares no outputs always runs; the others are up to date
    assert.are.same({ build = "up_to_date", pack = "up_to_date", report = "succeeded" }, last_events(dir))
    assert.matches("up to date build", r.stderr)
    assert.matches("Up To Date%s+2", r.stdout)
    assert.matches("Succeeded%s+1", r.stdout)
    -- every view says so
    local st = H.run { "status", "--dir", dir }
    assert.matches("up_to_date%s+build", st.stdout)
    local js = cjson.decode(H.run({ "status", "--dir", dir, "--json" }).stdout)
    assert.are.equal("up_to_date", js.tasks.pack.status)
    assert.are.equal("succeeded", js.status)
    assert.matches("up to date", H.run({ "why", "build", "--dir", dir }).stdout)
    assert.matches("3/3", H.run({ "history", "--dir", dir }).stdout)
  end)

  it("run a task whose input is newer, whose output was changed or removed, and what follows it", function()
    assert.are.equal(0, run().code)
    H.write_file(dir .. "/src.txt", "changed\n")
    local r = run()
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ build = "succeeded", pack = "succeeded", report = "succeeded" }, last_events(dir))
    assert.matches("start     build %b(): its input src.txt", r.stderr)
    assert.are.equal("CHANGED\n", H.read_file(dir .. "/pack.txt"))
    -- an output edited by hand
    H.write_file(dir .. "/pack.txt", "mine\n")
    r = run()
    assert.are.same({ build = "up_to_date", pack = "succeeded", report = "succeeded" }, last_events(dir))
    assert.matches("its output pack.txt was changed", r.stderr)
    os.remove(dir .. "/out.txt")
    r = run()
    assert.are.same({ build = "succeeded", pack = "succeeded", report = "succeeded" }, last_events(dir))
    assert.matches("its output out.txt is missing", r.stderr)
  end)

  it("run a task whose definition changed since its last success", function()
    assert.are.equal(0, run().code)
    local r = run(nil, { STEP_TEXT = "built again" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("build %b(): its cmd changed since its last success", r.stderr)
    -- pack reads out.txt, which build wrote again
    assert.are.same({ build = "succeeded", pack = "succeeded", report = "succeeded" }, last_events(dir))
  end)

  it("run a task after a dependency that ran and hands it nothing through declared files", function()
    H.write_file(recipe, [[
local coral = require "coral"
return { coral.task { id = "a", cmd = "echo a" },
         coral.task { id = "b", cmd = "cat $CORAL_INPUT_A > b.txt", depends_on = { "a" }, outputs = { "b.txt" } } }
]])
    assert.are.equal(0, run().code)
    local r = run()
    assert.are.same({ a = "succeeded", b = "succeeded" }, last_events(dir))
    assert.matches("its dependency 'a' ran in this run", r.stderr)
  end)

  it("run every task with --force, the named ones with --force=ID, a task with force = true", function()
    assert.are.equal(0, run().code)
    run { "--force" }
    assert.are.same({ build = "succeeded", pack = "succeeded", report = "succeeded" }, last_events(dir))
    run { "--force=pack" }
    assert.are.same({ build = "up_to_date", pack = "succeeded", report = "succeeded" }, last_events(dir))
    local r = run { "--force=pakc" }
    assert.are.equal(2, r.code)
    assert.matches("no task 'pakc' in the plan %(did you mean 'pack'%?%)", r.stderr)
    r = run { "--force=" }
    assert.are.equal(2, r.code)
    H.write_file(recipe, (RECIPE:gsub('outputs = { "pack.txt" }', 'outputs = { "pack.txt" }, force = true')))
    run()
    assert.are.same({ build = "up_to_date", pack = "succeeded", report = "succeeded" }, last_events(dir))
  end)

  it("on resume, run a finished task whose definition changed, with its dependents; why says which field", function()
    assert.are.equal(0, run().code)
    -- the recipe's cmd for build changes after the run: a resume must not trust the old result
    H.write_file(recipe, (RECIPE:gsub('echo "', 'echo v2 "')))
    local why = H.run { "why", "build", "--dir", dir }
    assert.matches("build will run again on resume: its cmd changed since it ran", why.stdout)
    why = H.run { "why", "report", "--dir", dir }
    assert.matches("report will run again on resume: it depends on 'build', whose cmd changed", why.stdout)
    local r = H.run { "resume", "--dir", dir }
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("rerun     build: its cmd changed since it ran", r.stderr)
    assert.matches("rerun     pack: its dependency 'build' runs again", r.stderr)
    assert.are.same({ build = "succeeded", pack = "succeeded", report = "succeeded" }, last_events(dir))
    -- and resuming again changes nothing
    why = H.run { "why", "build", "--dir", dir }
    assert.matches("will not run again", why.stdout)
  end)

  it("keep the env a task declares out of plan.json, as a digest", function()
    H.write_file(recipe, [[
local coral = require "coral"
return { coral.task { id = "a", cmd = "echo $TOKEN > a.txt", env = { TOKEN = "s3cret-value" }, outputs = { "a.txt" } } }
]])
    assert.are.equal(0, run().code)
    local runs = H.entries(dir .. "/.coral/runs")
    local plan = H.read_file(dir .. "/.coral/runs/" .. runs[1] .. "/plan.json")
    assert.is_nil(plan:find("s3cret", 1, true))
    assert.is_nil(H.read_file(dir .. "/.coral/project_state.yaml"):find("s3cret", 1, true))
    assert.matches('"env_digest"', plan)
    run()
    assert.are.same({ a = "up_to_date" }, last_events(dir))
  end)
end)
