-- coral.view.history: the past runs of a project (from summary.json, or from the journal of a
-- killed run) and each agent's durations (from .coral/project_state.yaml).
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local uv = require "luv"

local coral = require "coral"
local fsutil = require "coral.fsutil"
local history = require "coral.view.history"

local t = coral.task

-- 2026-01-02 03:04:05 local time.
local T = os.time { year = 2026, month = 1, day = 2, hour = 3, min = 4, sec = 5 }

-- Makes run dir `id` of project `dir` with `files` (name -> text).
local function run_dir(dir, id, files)
  local path = dir .. "/.coral/runs/" .. id
  assert(fsutil.mkdirs(path))
  for name, text in pairs(files) do H.write_file(path .. "/" .. name, text) end
  return path
end

local function jsonl(events)
  local lines = {}
  for _, e in ipairs(events) do lines[#lines + 1] = cjson.encode(e) .. "\n" end
  return table.concat(lines)
end

-- A killed run: a succeeded, b running when coral died, c never started.
local KILLED = {
  ["journal.jsonl"] = jsonl {
    { event = "run", t = T + 120, run_id = "r3", plan = "from-journal", tasks = 3, mode = "dependency", max_workers = 2 },
    { event = "start", t = T + 120, task = "a", agent = "x", attempt = 1 },
    { event = "start", t = T + 122, task = "b", agent = "x", attempt = 1 },
    { event = "end", t = T + 124, task = "a", agent = "x", attempt = 1, outcome = "succeeded", duration = 4 },
  },
  ["plan.json"] = cjson.encode {
    name = "hand", tasks = {
      { id = "a", agent = "x", depends_on = {} }, { id = "b", agent = "x", depends_on = {} },
      { id = "c", agent = "x", depends_on = { "a" } },
    },
  },
}

-- A project with a finished run, one of an earlier coral (its words), a killed one and a file
-- that is not a run.
local function project()
  local dir = H.tmpdir()
  run_dir(dir, "20260102-030405-000000-0001", { ["summary.json"] = cjson.encode {
    plan = "full_stack", started = T, status = "succeeded", total_time_seconds = 90, speedup = 2.5,
    tasks = 10, succeeded = 10, results = {},
  } })
  run_dir(dir, "20260102-030406-000000-0002", { ["summary.json"] = cjson.encode {
    started = T + 60, status = "completed", total_time_seconds = 30.5, speedup = 1, total_agents = 4, successful = 3,
  } })
  run_dir(dir, "20260102-030407-000000-0003", KILLED)
  H.write_file(dir .. "/.coral/runs/notes.txt", "not a run\n")
  return dir
end

describe("history.runs", function()
  it("has no runs for a project without records", function()
    local dir = H.tmpdir()
    assert.are.same({}, history.runs(dir))
    assert.are.equal("no runs in " .. dir .. "/.coral/runs\n", history.text(dir))
  end)

  it("reads finished runs from summary.json, earlier coral's words too, and a killed run from its journal", function()
    local runs = history.runs(project())
    assert.are.same({
      { id = "20260102-030405-000000-0001", plan = "full_stack", started = T, status = "succeeded", wall = 90,
        speedup = 2.5, tasks = 10, ok = 10 },
      { id = "20260102-030406-000000-0002", started = T + 60, status = "succeeded", wall = 30.5, speedup = 1,
        tasks = 4, ok = 3 },
      -- wall: first to last event; speedup: a's 4 s and b's 2 s (to the last event) over 4 s
      { id = "20260102-030407-000000-0003", plan = "hand", started = T + 120, status = "killed", wall = 4,
        speedup = 1.5, tasks = 3, ok = 1 },
    }, runs)
    assert.are.equal("integer", math.type(runs[1].tasks))
    assert.are.equal("integer", math.type(runs[2].ok))
  end)

  it("measures a run whose summary is unreadable, or that has no plan, from its journal", function()
    local dir = H.tmpdir()
    local files = { ["journal.jsonl"] = KILLED["journal.jsonl"], ["summary.json"] = '{"plan": "cut' }
    run_dir(dir, "r1", files)
    files["summary.json"] = cjson.encode { plan = "no-figures", status = "succeeded" }
    run_dir(dir, "r2", files)
    local runs = history.runs(dir)
    local row = { plan = "from-journal", started = T + 120, status = "killed", wall = 4, speedup = 1.5, tasks = 2,
                  ok = 1 }
    row.id = "r1"
    assert.are.same(row, runs[1])
    row.id = "r2"
    assert.are.same(row, runs[2])
  end)

  it("says running for a run without a summary whose coral is alive", function()
    local dir = H.tmpdir()
    run_dir(dir, "r1", KILLED)
    H.write_file(dir .. "/.coral/run.owner", cjson.encode { pid = uv.os_getpid(), run_id = "r1" })
    local row = history.runs(dir)[1]
    assert.are.same({ "r1", "hand", "running", 3, 1 }, { row.id, row.plan, row.status, row.tasks, row.ok })
    -- up to now: b still runs
    assert.is_true(row.wall > 4)
    -- the owner is another run: this one was killed
    H.write_file(dir .. "/.coral/run.owner", cjson.encode { pid = uv.os_getpid(), run_id = "r0" })
    assert.are.equal("killed", history.runs(dir)[1].status)
  end)

  it("lists real runs oldest first, with their summaries' figures", function()
    local dir = H.tmpdir()
    local runner = coral.runner { project_dir = dir, output = "quiet", retries = 0 }
    local s1 = runner:execute_plan(coral.plan({ t("a", "x", { cmd = "true" }) }, { name = "one" }))
    local s2 = runner:execute_plan(coral.plan({ t("a", "x", { cmd = "true" }), t("b", "y", { cmd = "false" }) },
                                              { name = "two" }))
    local runs = history.runs(dir)
    assert.are.equal(2, #runs)
    for i, s in ipairs { s1, s2 } do
      local json = cjson.decode(H.read_file(s.run_dir .. "/summary.json"))
      assert.are.same({ id = s.run_id, plan = json.plan, started = json.started, status = json.status,
                        wall = json.total_time_seconds, speedup = json.speedup, tasks = i, ok = 1 }, runs[i])
    end
    assert.are.same({ "one", "succeeded", "two", "failed" }, { runs[1].plan, runs[1].status, runs[2].plan, runs[2].status })
  end)
end)

describe("history.agents", function()
  local STATE = [[
agents:
  dev:
    history:
      - status: "succeeded"
        duration: 3
      - status: "succeeded"
        duration: 1
      - status: "failed"
        duration: 50
      - status: "succeeded"
        duration: 10
      - status: "completed"
        duration: 4
      - status: "succeeded"
        duration: 2
      - status: "succeeded"
        duration: "soon"
  arch:
    history:
      - status: "failed"
        duration: 7
  qa:
    history:
      - status: "succeeded"
        duration: 2.5
      - status: "succeeded"
        duration: 4
  writer:
    status: "succeeded"
]]

  local function with_state(text)
    local dir = H.tmpdir()
    assert(fsutil.mkdirs(dir .. "/.coral"))
    H.write_file(dir .. "/.coral/project_state.yaml", text)
    return dir
  end

  it("gives each agent the median, min and max of its succeeded durations, and its failures", function()
    assert.are.same({
      { agent = "arch", runs = 0, failed = 1 },
      -- succeeded (and the old word completed): 1 2 3 4 10; not the failure, not a duration that is no number
      { agent = "dev", runs = 5, failed = 1, median = 3, min = 1, max = 10 },
      { agent = "qa", runs = 2, failed = 0, median = 3.25, min = 2.5, max = 4 },
      { agent = "writer", runs = 0, failed = 0 },
    }, history.agents(with_state(STATE)))
  end)

  it("has no agents without a project state, with one without agents, or with a broken one", function()
    assert.are.same({}, history.agents(H.tmpdir()))
    assert.are.same({}, history.agents(with_state('project: "x"\n')))
    assert.are.same({}, history.agents(with_state("agents:\n  dev: [\n")))
  end)

  it("reads the durations a real run recorded", function()
    local dir = H.tmpdir()
    coral.runner { project_dir = dir, output = "quiet", retries = 0 }:execute_plan(coral.plan {
      t("a", "x", { cmd = "true" }), t("b", "y", { cmd = "false" }), t("a", "z", { id = "a2", cmd = "true" }),
    })
    local agents = history.agents(dir)
    assert.are.equal(2, #agents)
    local a, b = agents[1], agents[2]
    assert.are.same({ "a", 2, 0, "b", 0, 1 }, { a.agent, a.runs, a.failed, b.agent, b.runs, b.failed })
    assert.is_true(a.min >= 0 and a.min <= a.median and a.median <= a.max and a.max < 5)
    assert.is_nil(b.median)
  end)
end)

describe("history.text", function()
  it("prints a row per run and per agent", function()
    local dir = project()
    H.write_file(dir .. "/.coral/project_state.yaml", [[
agents:
  dev:
    history:
      - status: "succeeded"
        duration: 75
      - status: "failed"
        duration: 1
  arch:
    history:
      - status: "failed"
        duration: 7
]])
    local function day(s) return os.date("%Y-%m-%d %H:%M:%S", s) end
    assert.are.equal(table.concat({
      "run                          plan             started             outcome      tasks     wall  speedup",
      "20260102-030405-000000-0001  full_stack       " .. day(T) .. " succeeded    10/10    1m30s    2.50x",
      "20260102-030406-000000-0002  -                " .. day(T + 60) .. " succeeded      3/4    30.5s    1.00x",
      "20260102-030407-000000-0003  hand             " .. day(T + 120) .. " killed         1/3     4.0s    1.50x",
      "",
      "agent (succeeded tasks)       runs   median      min      max  failed",
      "arch                             0        -        -        -       1",
      "dev                              1    1m15s    1m15s    1m15s       1",
      "the median is the estimate the runner uses for an agent's task without one of its own",
    }, "\n") .. "\n", history.text(dir))
  end)
end)
