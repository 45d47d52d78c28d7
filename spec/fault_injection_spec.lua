-- Fault injection: coral killed with SIGKILL at random points (a fixed seed) of a 40-task plan,
-- ten times, `coral resume` each time, and then once more to the end. Every task's effect (a
-- line it appends to a file, after a 0.05-0.3 s sleep) happens exactly once, but for the tasks
-- that were running when coral was killed: those may run again on resume, and the journal says
-- which they were (an attempt ended as interrupted). The final summary: all 40 succeeded. And
-- every attempt has its joblog row, the interrupted ones included. (The helper checks after it
-- that nothing of the killed corals' tasks is left running.)
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local cjson = require "cjson"
local journal = require "coral.records.journal"

local SEED, TASKS, KILLS = 18, 40, 10

-- A small LCG of our own: the same numbers whatever else in this process uses math.random.
local function generator(seed)
  local state = seed
  return function()
    state = (state * 1103515245 + 12345) % 2147483648
    return state / 2147483648
  end
end

-- 40 tasks: each sleeps 0.05-0.3 s, then appends its id to `effects`; about a third have no
-- dependency, the others one or two among the eight tasks before them.
local function plan_text(random)
  local lines = { "local coral = require 'coral'", "local t = coral.task", "return coral.plan {" }
  for i = 1, TASKS do
    local id = string.format("t%02d", i)
    local deps = {}
    if i > 1 and random() > 0.33 then
      for _ = 1, random() < 0.5 and 1 or 2 do
        local d = string.format("%q", string.format("t%02d", math.max(1, i - 1 - math.floor(random() * 8))))
        if not deps[d] then deps[d], deps[#deps + 1] = true, d end
      end
    end
    lines[#lines + 1] = string.format("  t('w', %q, { id = %q, cmd = 'sleep %.2f; echo %s >> effects', depends_on = { %s } }),",
      id, id, 0.05 + random() * 0.25, id, table.concat(deps, ", "))
  end
  lines[#lines + 1] = "}"
  return table.concat(lines, "\n") .. "\n"
end

local function run_dir(dir)
  local runs = uv.fs_stat(dir .. "/.coral/runs") and H.entries(dir .. "/.coral/runs") or {}
  return runs[1] and (dir .. "/.coral/runs/" .. runs[1]) or nil
end

-- Runs the loop for `seconds` (the started coral's output pipes are read meanwhile).
local function pause(seconds)
  local deadline = uv.hrtime() + seconds * 1e9
  while uv.hrtime() < deadline do
    uv.sleep(5)
    uv.run("nowait")
  end
end

describe("coral killed with SIGKILL at random points", function()
  it("resumes a 40-task plan ten times: every effect once but those in flight, all succeeded", function()
    local random = generator(SEED)
    local dir = H.tmpdir()
    H.write_file(dir .. "/plan.lua", plan_text(random))
    local t0 = uv.hrtime()
    local killed = 0
    for _ = 1, KILLS do
      -- the first run, until there is a run to resume
      local args = run_dir(dir) and uv.fs_stat(run_dir(dir) .. "/journal.jsonl")
        and { "resume", "--dir", dir, "--quiet" }
        or { "run", dir .. "/plan.lua", "x", "--dir", dir, "--quiet", "--no-report" }
      local r = H.start(args)
      pause(0.05 + random() * 0.3)
      if r.code == nil then
        uv.kill(r.pid, "sigkill")
        killed = killed + 1
      end
      H.wait_for(r, 10)
    end
    local final = H.run({ "resume", "--dir", dir, "--quiet" })
    assert.are.equal(0, final.code, final.stderr)

    local rdir = assert(run_dir(dir))
    local summary = cjson.decode(H.read_file(rdir .. "/summary.json"))
    assert.are.equal("succeeded", summary.status)
    assert.are.equal(TASKS, math.tointeger(summary.succeeded))

    -- the attempts that were running when coral was killed: ended as interrupted by the resume
    local run = journal.load(rdir)
    local in_flight, sessions = {}, #run.sessions
    for _, a in ipairs(run.attempts) do
      if a.outcome == "interrupted" then in_flight[a.task] = (in_flight[a.task] or 0) + 1 end
    end
    local effects = {}
    for id in (H.read_file(dir .. "/effects") or ""):gmatch("[^\n]+") do effects[id] = (effects[id] or 0) + 1 end
    local twice, wrong = 0, {}
    for i = 1, TASKS do
      local id = string.format("t%02d", i)
      local n, may = effects[id] or 0, in_flight[id] or 0
      if n < 1 or n > 1 + may then
        -- what the journal says of it, to see why
        local told = {}
        for _, e in ipairs(journal.read(rdir)) do
          if e.task == id then told[#told + 1] = string.format("%.3f %s %s", e.t, e.event, e.outcome or e.reason or "") end
        end
        wrong[#wrong + 1] = string.format("%s: %d effects, %d attempts in flight at a kill; journal: %s", id, n, may,
          table.concat(told, ", "))
      end
      if n > 1 then twice = twice + 1 end
    end
    assert.are.same({}, wrong)

    -- a joblog row for every attempt
    local rows, attempts = {}, {}
    for line in H.read_file(rdir .. "/joblog.tsv"):gmatch("[^\n]+") do
      local task, n = line:match("^(t%d+)\t(%d+)\t")
      if task then rows[#rows + 1] = task .. "/" .. n end
    end
    for _, a in ipairs(run.attempts) do attempts[#attempts + 1] = a.task .. "/" .. a.n end
    table.sort(rows)
    table.sort(attempts)
    assert.are.same(attempts, rows)

    local in_flight_total = 0
    for _, n in pairs(in_flight) do in_flight_total = in_flight_total + n end
    io.stderr:write(string.format("\n  %d kills, %d sessions, %d attempts in flight at a kill, %d tasks ran twice, " ..
      "%d attempts in all, %.1f s\n", killed, sessions, in_flight_total, twice, #run.attempts, (uv.hrtime() - t0) / 1e9))
    assert.is_true(killed >= KILLS - 2, "the run ended before most kills: they tested nothing")
  end)
end)
