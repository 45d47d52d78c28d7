-- The Slurm executor against a real one-node Slurm on localhost (scripts/slurm-up, started by
-- scripts/run-tests before busted and stopped after: its daemons are not this spec's processes).
-- Slurm jobs inherit coral's environment, so a job left running is caught by the helper's
-- leftover check like any other process of the spec.
local H = require("spec.helper").guard(_ENV)
local start, wait_for, wait_until = H.start, H.wait_for, H.wait_until
local uv = require "luv"
local cjson = require "cjson"

local function sh(cmd)
  local f = io.popen(cmd .. " 2>&1")
  local out = f:read("a")
  local ok = f:close()
  return ok, out
end

local conf = os.getenv("SLURM_CONF")
local up = conf and select(2, sh("sinfo -h -o %t")):find("idle") ~= nil
if not up then
  describe("slurm executor", function()
    pending("no local Slurm cluster: scripts/run-tests starts one with scripts/slurm-up " ..
            "(needs root and the slurmctld slurmd slurm-client munge packages)")
  end)
  return
end

local function run_dir(dir)
  local runs = uv.fs_scandir(dir .. "/.coral/runs")
  local run = runs and uv.fs_scandir_next(runs)
  return run and (dir .. "/.coral/runs/" .. run)
end

local function journal(dir)
  local rd = run_dir(dir)
  local events = {}
  for line in ((rd and H.read_file(rd .. "/journal.jsonl")) or ""):gmatch("[^\n]+") do
    events[#events + 1] = cjson.decode(line)
  end
  return events
end

local function count(events, pred)
  local n = 0
  for _, e in ipairs(events) do if pred(e) then n = n + 1 end end
  return n
end

-- The run's jobs Slurm still has as pending or running (found by the comment coral gives them).
local function live_jobs(run_id)
  local _, out = sh("squeue -h --states=PENDING,RUNNING,COMPLETING,CONFIGURING -O 'JobID:|,State:|,Comment:|'")
  local ids = {}
  for id, comment in out:gmatch("(%d+)|[^|]*|([^|\n]*)") do
    if comment:find("coral:" .. run_id .. ":", 1, true) then ids[#ids + 1] = id end
  end
  return ids
end

local function job_state(id)
  local _, out = sh("squeue -h --states=all -j " .. id .. " -O 'State:|'")
  return out:match("^(%u+)")
end

local TEN = [[
local coral = require "coral"
local t = coral.task
local function task(id, deps, cmd)
  return t("worker", "step " .. id, { id = id, depends_on = deps,
    cmd = cmd or ("echo out-$CORAL_TASK_ID; echo err-$CORAL_TASK_ID >&2; echo $CORAL_TASK_ID >> " .. %q) })
end
return coral.plan {
  task("a", {}), task("b", { "a" }), task("c", { "a" }), task("d", { "a" }),
  task("e", { "b", "c" }), task("f", { "c", "d" }), task("g", { "e" }), task("h", { "f" }),
  task("i", { "g", "h" }), task("j", {}, "coral note from-j; echo j"),
}
]]
-- TEN's dependencies, to check the order of its journal against.
local TEN_DEPS = { b = { "a" }, c = { "a" }, d = { "a" }, e = { "b", "c" }, f = { "c", "d" }, g = { "e" },
                   h = { "f" }, i = { "g", "h" } }

describe("slurm executor", function()
  it("runs a ten-task plan with dependencies to the same records as a local run", function()
    local records = {}
    for _, executor in ipairs { "local", "slurm" } do
      local dir = H.tmpdir()
      H.write_file(dir .. "/r.lua", TEN:format(dir .. "/ran"))
      local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report",
                        "--executor", executor, "--max-workers", "4" }, { timeout = 60 })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      local rd = run_dir(dir)
      local summary = cjson.decode(H.read_file(rd .. "/summary.json"))
      local rec = { succeeded = summary.succeeded, failed = summary.failed, skipped = summary.skipped,
                    tasks = {}, ran = {}, order = {} }
      for id, res in pairs(summary.results) do
        rec.tasks[id] = { status = res.status, attempts = res.attempts, exit_code = res.exit_code,
          signal = res.signal, output = H.read_file(res.output_file),
          out = H.read_file(rd .. "/tasks/" .. id .. "/attempt-1.out"),
          err = H.read_file(rd .. "/tasks/" .. id .. "/attempt-1.err") }
      end
      for id in H.read_file(dir .. "/ran"):gmatch("%S+") do rec.ran[id] = (rec.ran[id] or 0) + 1 end
      -- every task starts after its dependencies ended (journal order)
      local ended = {}
      for _, e in ipairs(journal(dir)) do
        if e.event == "end" then ended[e.task] = true end
        if e.event == "start" then
          for _, dep in ipairs(TEN_DEPS[e.task] or {}) do
            assert.is_true(ended[dep], string.format("%s: %s started before %s ended", executor, e.task, dep))
          end
          rec.order[#rec.order + 1] = e.task
        end
      end
      assert.matches("worker: from%-j", H.read_file(dir .. "/scratchpad.md"))
      if executor == "slurm" then
        local events = journal(dir)
        assert.are.equal(10, count(events, function(e) return e.event == "submit" and math.type(e.job_id) end))
      end
      records[executor] = rec
    end
    table.sort(records["local"].order); table.sort(records.slurm.order)
    assert.are.same(records["local"], records.slurm)
    assert.are.equal(10, records.slurm.succeeded)
  end)

  it("skips the dependents of a failing task and reports its exit code from Slurm", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("a", "fails", { id = "bad", cmd = "echo broken >&2; exit 7" }),
  t("b", "needs bad", { id = "after", cmd = "true", depends_on = { "bad" } }),
  t("c", "independent", { id = "other", cmd = "true", slurm = { cpus = 2, time = 5 } }),
}
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report", "--executor", "slurm",
                      "--retries", "0" }, { timeout = 60 })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local summary = cjson.decode(H.read_file(run_dir(dir) .. "/summary.json"))
    assert.are.equal("failed", summary.results.bad.status)
    assert.are.equal(7, summary.results.bad.exit_code)
    assert.are.equal("exit code 7: broken", summary.results.bad.error)
    assert.are.equal("skipped", summary.results.after.status)
    assert.are.equal("succeeded", summary.results.other.status)
    assert.are.equal(0, count(journal(dir), function(e) return e.event == "submit" and e.task == "after" end))
  end)

  it("refuses a task's unknown slurm option with its name", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
return coral.plan { coral.task("a", "x", { id = "a", cmd = "true", slurm = { partiton = "x" } }) }
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report", "--executor", "slurm" })
    assert.are.equal(1, r.code)
    assert.matches("task 'a': slurm: unknown option 'partiton'", r.stdout)
  end)

  it("cancels the job when the task times out", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
return coral.plan { coral.task("a", "x", { id = "slow", cmd = "echo started; sleep 60", timeout = 1.5 }) }
]])
    local t0 = uv.hrtime()
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report", "--executor", "slurm",
                      "--retries", "0" }, { timeout = 60 })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.is_true((uv.hrtime() - t0) / 1e9 < 15, "the timeout was enforced by coral, not Slurm's minutes")
    local summary = cjson.decode(H.read_file(run_dir(dir) .. "/summary.json"))
    assert.matches("^timed out after 1.5s", summary.results.slow.error)
    local job
    for _, e in ipairs(journal(dir)) do if e.event == "submit" then job = e.job_id end end
    assert.are.equal("CANCELLED", job_state(math.tointeger(job)))
    assert.are.same({}, live_jobs(summary.run_id))
    assert.matches("timeout", H.read_file(run_dir(dir) .. "/joblog.tsv"))
  end)

  it("cancels all of the run's jobs on Ctrl-C, and no other job", function()
    local ok, other = sh("sbatch --parsable -o /dev/null -J not-coral --wrap 'sleep 60'")
    assert(ok, other)
    other = other:match("%d+")
    finally(function()
      sh("scancel " .. other)
      wait_until(function() local st = job_state(other); return st ~= "RUNNING" and st ~= "PENDING" end)
    end)
    wait_until(function() return job_state(other) == "RUNNING" end)
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("a", "x", { id = "a", cmd = "sleep 60" }), t("b", "x", { id = "b", cmd = "sleep 60" }),
  t("c", "x", { id = "c", cmd = "sleep 60" }), t("d", "x", { id = "d", cmd = "true", depends_on = { "a" } }),
}
]])
    local r = start({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report", "--executor", "slurm" })
    wait_until(function() return count(journal(dir), function(e) return e.event == "submit" end) >= 3 end)
    local run_id = journal(dir)[1].run_id
    wait_until(function() return #live_jobs(run_id) == 3 end)
    uv.kill(r.pid, "sigint")
    assert.are.equal(130, wait_for(r, 30), table.concat(r.output))
    assert.are.same({}, live_jobs(run_id))
    assert.are.equal("RUNNING", job_state(other))
    local summary = cjson.decode(H.read_file(run_dir(dir) .. "/summary.json"))
    assert.are.equal("interrupted", summary.status)
    assert.are.equal("skipped", summary.results.d.status)
  end)

  it("adopts the jobs of a killed coral on resume instead of submitting them again, and cancels strays", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", ([[
local coral = require "coral"
local t = coral.task
local log = %q
local function task(id, secs, deps)
  return t("w", id, { id = id, depends_on = deps, cmd = "sleep " .. secs .. "; echo $CORAL_TASK_ID >> " .. log .. "; echo done-" .. id })
end
return coral.plan {
  task("quick", 0), task("ends_while_dead", 1, { "quick" }), task("still_running", 5, { "quick" }),
  task("after", 0, { "ends_while_dead", "still_running" }),
}
]]):format(dir .. "/ran"))
    local args = { dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report", "--executor", "slurm" }
    local r = start(args)
    wait_until(function()
      return count(journal(dir), function(e) return e.event == "submit" end) >= 3
    end)
    uv.kill(r.pid, "sigkill")
    wait_for(r)
    local run_id = journal(dir)[1].run_id
    assert.are.equal(2, #live_jobs(run_id), "two jobs live on after coral was killed")
    wait_until(function() return (H.read_file(dir .. "/ran") or ""):find("ends_while_dead") end)
    -- A job of the run that the journal does not expect (as if submitted just before coral
    -- died): resume cancels it.
    local ok, stray = sh("sbatch --parsable -o /dev/null -J stray --comment=coral:" .. run_id ..
                         ":9:still_running --wrap 'sleep 60'")
    assert(ok, stray)
    stray = stray:match("%d+")
    local resumed = H.run({ "resume", "--dir", dir, "--quiet" }, { timeout = 60 })
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    wait_until(function() return job_state(stray) == "CANCELLED" end)
    local events = journal(dir)
    for _, id in ipairs { "quick", "ends_while_dead", "still_running", "after" } do
      assert.are.equal(1, count(events, function(e) return e.event == "submit" and e.task == id end),
        id .. " was submitted once")
    end
    assert.are.equal(2, count(events, function(e) return e.event == "adopt" end))
    local ran = {}
    for id in H.read_file(dir .. "/ran"):gmatch("%S+") do ran[id] = (ran[id] or 0) + 1 end
    assert.are.same({ quick = 1, ends_while_dead = 1, still_running = 1, after = 1 }, ran)
    local summary = cjson.decode(H.read_file(run_dir(dir) .. "/summary.json"))
    assert.are.equal(4, summary.succeeded)
    assert.are.equal(1, summary.results.still_running.attempts)
    assert.matches("done%-still_running", H.read_file(summary.results.still_running.output_file))
  end)

  it("runs worktree tasks as jobs: each in its worktree on the shared file system, merged as a local run does", function()
    local dir = H.tmpdir()
    assert(sh("cd '" .. dir .. "' && git init -q -b main . && echo base > readme.txt && git add . && " ..
              "git -c user.name=u -c user.email=u@x commit -qm init"))
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan({
  t("a", "a", { id = "a", cmd = "echo a > a.txt; pwd" }),
  t("b", "b", { id = "b", cmd = "echo b > b.txt" }),
  t("c", "c", { id = "c", depends_on = { "a", "b" }, cmd = "cat a.txt b.txt > c.txt" }),
}, { workspace = "worktree" })
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report", "--executor", "slurm" },
                    { timeout = 90 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local summary = cjson.decode(H.read_file(run_dir(dir) .. "/summary.json"))
    assert.matches("/%.coral/worktrees/[^/]+/a\n$", H.read_file(summary.results.a.output_file))
    local ok, shown = sh("git -C '" .. dir .. "' show " .. summary.workspace.result_branch .. ":c.txt")
    assert.is_true(ok, shown)
    assert.are.equal("a\nb\n", shown)
  end)

  it("cancels one task's job through scancel (coral ctl cancel) while the others go on", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
return { coral.task{ id = "long", cmd = "sleep 60" }, coral.task{ id = "short", cmd = "sleep 4; echo short" } }
]])
    local run = start({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report", "--executor", "slurm" })
    local job
    wait_until(function()
      for _, e in ipairs(journal(dir)) do
        if e.event == "submit" and e.task == "long" then job = tostring(math.tointeger(e.job_id)) end
      end
      return job and job_state(job) == "RUNNING"
    end, 30)
    local r = H.run({ "ctl", "cancel", "long", "--dir", dir })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(1, wait_for(run, 60))
    assert.are_not.equal("RUNNING", job_state(job))
    local summary = cjson.decode(H.read_file(run_dir(dir) .. "/summary.json"))
    assert.are.equal("failed", summary.results.long.status)
    assert.matches("cancelled by coral ctl", summary.results.long.error)
    assert.are.equal("succeeded", summary.results.short.status)
    assert.are.same({}, live_jobs(summary.run_id))
  end)
end)
