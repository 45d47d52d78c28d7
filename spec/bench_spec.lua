-- The bench's own instruments (make bench is not part of make test, but its conclusions rest on
-- them): bench/c-floor.c, the C runner that keeps coral's per-task records and nothing else,
-- run on a plan bench/workloads.lua writes. Its rows are the bound a target is read against,
-- so it must run the graph in dependency order, within W, and keep every record it claims to.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local uv = require "luv"

local workloads = dofile(H.root .. "/bench/workloads.lua")

local function c_floor(dir)
  local exe = dir .. "/c-floor"
  local r = H.run({ "-O2", "-Wall", "-Wextra", "-Werror", "-o", exe, H.root .. "/bench/c-floor.c" },
    { exe = "cc" })
  assert.are.equal(0, r.code, r.stderr)
  return exe
end

local function lines(path)
  local out = {}
  for line in H.read_file(path):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

describe("bench/c-floor", function()
  it("runs a layered plan in dependency order, W at most at once, with every record", function()
    local dir = H.tmpdir()
    local exe = c_floor(dir)
    local w = workloads.noop_layered(300, 3)   -- 3 layers of 100, each task on 2 of the layer before
    local deps_of = {}
    for _, t in ipairs(w.tasks) do deps_of[t.id] = t.deps end
    local files = workloads.write(w, dir)
    local project = dir .. "/project"
    assert(uv.fs_mkdir(project, tonumber("700", 8)))
    local r = H.run({ files.tsv, "3", project }, { exe = exe })
    assert.are.equal(0, r.code, r.stderr)

    local ended, running, most, spawned = {}, 0, 0, 0
    for _, line in ipairs(lines(project .. "/run/journal.jsonl")) do
      local e = cjson.decode(line)
      if e.event == "spawn" then
        for _, d in ipairs(deps_of[e.task]) do
          assert.is_true(ended[d], e.task .. " spawned before its dependency " .. d .. " ended")
        end
        spawned, running = spawned + 1, running + 1
        most = math.max(most, running)
      elseif e.event == "end" then
        assert.are.equal("succeeded", e.outcome)
        ended[e.task], running = true, running - 1
      end
    end
    assert.are.equal(#w.tasks, spawned)
    assert.are.equal(3, most)
    assert.are.equal(#w.tasks, #lines(project .. "/run/joblog.tsv"))
    local entries = H.entries(project .. "/run/tasks/" .. w.tasks[1].id)
    assert.are.same({ "attempt-1.err", "attempt-1.out" }, entries)
  end)

  it("makes the task dir alone with --dir-only, and neither with --no-files", function()
    local dir = H.tmpdir()
    local exe = c_floor(dir)
    local files = workloads.write(workloads.noop_fanout(20), dir)
    for mode, want in pairs { ["--dir-only"] = 20, ["--no-files"] = 0 } do
      local project = dir .. "/project" .. mode
      assert(uv.fs_mkdir(project, tonumber("700", 8)))
      local r = H.run({ files.tsv, "2", project, mode }, { exe = exe })
      assert.are.equal(0, r.code, r.stderr)
      local dirs = H.entries(project .. "/run/tasks")
      assert.are.equal(want, #dirs, mode)
      if want > 0 then assert.are.same({}, H.entries(project .. "/run/tasks/" .. dirs[1])) end
      assert.are.equal(60, #lines(project .. "/run/journal.jsonl"))
    end
  end)

  it("fails with a task that fails, and refuses a bad line", function()
    local dir = H.tmpdir()
    local exe = c_floor(dir)
    H.write_file(dir .. "/plan.tsv", "a\t\ttrue\nb\ta\tfalse\n")
    local project = dir .. "/p1"
    assert(uv.fs_mkdir(project, tonumber("700", 8)))
    local r = H.run({ dir .. "/plan.tsv", "2", project }, { exe = exe })
    assert.are.equal(1, r.code)
    assert.matches("\tfailed", H.read_file(project .. "/run/joblog.tsv"))
    H.write_file(dir .. "/bad.tsv", "a true\n")
    project = dir .. "/p2"
    assert(uv.fs_mkdir(project, tonumber("700", 8)))
    r = H.run({ dir .. "/bad.tsv", "2", project }, { exe = exe })
    assert.are.equal(1, r.code)
    assert.matches("not id<TAB>deps<TAB>argv", r.stderr)
  end)
end)
