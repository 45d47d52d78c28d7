-- Back-pressure, through the real binary: a pipeline's memory stays flat whatever flows through
-- it (run/flow.lua), and running short of file descriptors makes tasks wait, not fail
-- (run/resources.lua).
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local uv = require "luv"

local MB = 1000 * 1000

-- A recipe file in a new project dir; returns the dir.
local function project(recipe)
  local dir = H.tmpdir()
  H.write_file(dir .. "/r.lua", "local t = require('coral').task\nreturn require('coral').plan {\n" .. recipe .. "\n}\n")
  return dir
end

local function run_dir(dir)
  local runs = H.entries(dir .. "/.coral/runs")
  assert.are.equal(1, #runs)
  return dir .. "/.coral/runs/" .. runs[1]
end

local function out(dir, id, n)
  return H.read_file(string.format("%s/tasks/%s/attempt-%d.out", run_dir(dir), id, n or 1))
end

local function events(dir)
  local list = {}
  for line in H.read_file(run_dir(dir) .. "/journal.jsonl"):gmatch("[^\n]+") do list[#list + 1] = cjson.decode(line) end
  return list
end

-- A task that ends the plan: it reads its stdin to the end (its upstream has then ended), then
-- prints coral's peak resident set (its parent is coral), in kB.
local PROBE = [[cat >/dev/null; awk '/^VmHWM:/ { print $2 }' /proc/$PPID/status]]

local function peak_kb(dir)
  return assert(tonumber(out(dir, "probe")), "no VmHWM: " .. tostring(out(dir, "probe")))
end

describe("pipeline mode", function()
  it("keeps coral's memory flat: 300 MB into a slow consumer, every byte arrives", function()
    local dir = project([[
  t("up", "produce", { id = "up", cmd = "head -c 300000000 /dev/zero" }),
  t("down", "consume slowly", { id = "down", cmd = "sleep 1; wc -c", depends_on = { "up" } }),
  t("probe", "measure", { id = "probe", cmd = ]] .. string.format("%q", PROBE) .. [[, depends_on = { "down" } }),
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--mode", "pipeline", "--quiet" }, { timeout = 120 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(300 * MB, tonumber(out(dir, "down")))
    -- before back-pressure coral held what the consumer had not read: ~300 MB
    assert.is_true(peak_kb(dir) < 60 * 1000, "coral's peak RSS " .. peak_kb(dir) .. " kB")
    -- the producer's file is still cut to the output cap, once its consumer has ended
    assert.are.equal(64 * 1024 * 1024, #out(dir, "up"):match("^(%z*)"))
  end)

  it("fans out to a slow, a fast and an early-leaving consumer, and fans in, with flat memory", function()
    local dir = project([[
  t("up", "produce", { id = "up", cmd = "head -c 100000000 /dev/zero" }),
  t("slow", "c", { id = "slow", cmd = "sleep 1; wc -c", depends_on = { "up" } }),
  t("fast", "c", { id = "fast", cmd = "wc -c", depends_on = { "up" } }),
  t("early", "c", { id = "early", cmd = "head -c 10 | wc -c", depends_on = { "up" } }),
  t("up2", "produce", { id = "up2", cmd = "head -c 50000000 /dev/zero" }),
  t("both", "fan in", { id = "both", cmd = "sleep 0.5; wc -c", depends_on = { "up", "up2" } }),
  t("probe", "measure", { id = "probe", cmd = ]] .. string.format("%q", PROBE) .. [[,
    depends_on = { "slow", "fast", "early", "both" } }),
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--mode", "pipeline", "--quiet", "--max-workers", "7" },
                    { timeout = 120 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(100 * MB, tonumber(out(dir, "slow")))
    assert.are.equal(100 * MB, tonumber(out(dir, "fast")))
    assert.are.equal(10, tonumber(out(dir, "early")))
    assert.are.equal(150 * MB, tonumber(out(dir, "both")))
    assert.is_true(peak_kb(dir) < 60 * 1000, "coral's peak RSS " .. peak_kb(dir) .. " kB")
  end)

  it("gives a consumer that starts after its upstream ended all of it, from the upstream's file", function()
    -- one worker: the consumers start one by one after the producer ended; the file they read
    -- from is cut to the output cap only once they all have ended
    local dir = project([[
  t("up", "produce", { id = "up", cmd = "seq 1 700000" }),
  t("a", "c", { id = "a", cmd = "md5sum", depends_on = { "up" } }),
  t("b", "c", { id = "b", cmd = "wc -c", depends_on = { "up" } }),
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--mode", "pipeline", "--quiet", "--max-workers", "1",
                      "--output-cap", "1000000" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local p = io.popen("seq 1 700000 | md5sum; seq 1 700000 | wc -c")
    local sum, size = p:read("l"), tonumber(p:read("l"))
    p:close()
    assert.is_true(size > 4 * MB)
    assert.are.equal(sum .. "\n", out(dir, "a"))
    assert.are.equal(size, tonumber(out(dir, "b")))
    local up_end, a_start
    for _, e in ipairs(events(dir)) do
      if e.event == "end" and e.task == "up" then up_end = e.t end
      if e.event == "start" and e.task == "a" then a_start = e.t end
    end
    assert.is_true(a_start >= up_end, "the consumer started after its producer ended")
    assert.matches(string.format("%%[coral: stdout cut at 1000000 bytes; %d more bytes were dropped%%]", size - 1000000),
                   out(dir, "up"))
  end)

  it("does not let a paused producer's idle timeout fire: it waits for coral, it is not silent", function()
    local dir = project([[
  t("up", "produce", { id = "up", cmd = "head -c 20000000 /dev/zero" }),
  t("down", "c", { id = "down", depends_on = { "up" },
    cmd = "for i in 1 2 3 4 5 6; do echo tick >&2; sleep 0.2; done; wc -c" }),
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--mode", "pipeline", "--quiet", "--idle-timeout", "0.5" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(20 * MB, tonumber(out(dir, "down")))
  end)
end)

-- coral under `ulimit -n N` (soft and hard), its output and the run's journal
local function under_ulimit(n, dir, args)
  local argv = { "-c", "ulimit -n " .. n .. ' && exec "$0" "$@"', H.coral, dir .. "/r.lua", "x", "--dir", dir }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return H.run(argv, { exe = "/bin/sh", timeout = 60 })
end

local function fifty()
  return project([[
  (function()
    local tasks = {}
    for i = 1, 50 do tasks[i] = t("w", "work", { id = "w" .. i, cmd = "sleep 0.2; echo " .. i }) end
    return table.unpack(tasks)
  end)()
]])
end

describe("running short of file descriptors", function()
  it("makes tasks wait, not fail: 50 idle-timeout tasks under ulimit -n 64 all succeed", function()
    local dir = fifty()
    local r = under_ulimit(64, dir, { "--idle-timeout", "30", "--max-workers", "50", "--retries", "0" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("Succeeded%s+50\n", r.stdout .. r.stderr)
    -- one line says why, through the progress view
    local text = r.stdout .. r.stderr
    local _, lines = text:gsub("waiting +w%d+ waits to start: not enough file descriptors: %d+ of 64 in use", "")
    assert.are.equal(1, lines, text)
    -- waiting is not an attempt: one start and one end for each task, none failed
    local starts, ends = 0, 0
    for _, e in ipairs(events(dir)) do
      if e.event == "start" then starts = starts + 1; assert.are.equal(1, e.attempt) end
      if e.event == "end" then ends = ends + 1; assert.are.equal("succeeded", e.outcome) end
    end
    assert.are.equal(50, starts)
    assert.are.equal(50, ends)
    -- fewer ran at once than there were workers: the limit held them back
    local summary = cjson.decode(H.read_file(run_dir(dir) .. "/summary.json"))
    assert.is_true(summary.max_parallel < 50 and summary.max_parallel >= 2, tostring(summary.max_parallel))
    for i = 1, 50 do assert.are.equal(i .. "\n", out(dir, "w" .. i)) end
  end)

  it("fails with the reason when no task could ever start under the limit, without hanging", function()
    local dir = fifty()
    local r = under_ulimit(24, dir, { "--idle-timeout", "30", "--max-workers", "50", "--retries", "0" })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("not enough file descriptors: %d+ of 24 in use.*nothing else of the run is running to free it " ..
      "%(raise ulimit %-n%)", r.stdout .. r.stderr)
  end)

  it("stops cleanly on Ctrl-C while tasks wait: they are interrupted, not failed", function()
    local dir = fifty()
    local argv = { "-c", 'ulimit -n 64 && exec "$0" "$@"', H.coral, dir .. "/r.lua", "x", "--dir", dir,
                   "--idle-timeout", "30", "--max-workers", "50" }
    local p = H.start(argv, { exe = "/bin/sh" })
    H.wait_until(function() return table.concat(p.output):find("waits to start") ~= nil end)
    uv.kill(p.pid, "sigint")
    assert.are.equal(130, H.wait_for(p))
    local interrupted = 0
    for _, e in ipairs(events(dir)) do
      if e.event == "end" then
        assert.is_true(e.outcome == "succeeded" or e.outcome == "interrupted", e.outcome)
        if e.outcome == "interrupted" then interrupted = interrupted + 1 end
      end
    end
    assert.is_true(interrupted > 0)
  end)
end)

describe("a shortage outside the run (EAGAIN, ENOMEM)", function()
  local coral = require "coral"
  local journal = require "coral.records.journal"
  local t = coral.task

  -- the local executor, refusing the first `n` starts as fork does when processes or memory run out
  local function refusing(n, code)
    local real = require("coral.exec.local").new()
    local refused = 0
    return {
      name = "refusing", on_this_machine = true, streams = true,
      start = function(_, spec, on_exit)
        if refused < n then
          refused = refused + 1
          return nil, "spawn /bin/sh: " .. code .. ": resource temporarily unavailable", code
        end
        return real:start(spec, on_exit)
      end,
    }, function() return refused end
  end

  it("is waited out with short delays even when nothing else runs; no attempt is spent", function()
    local executor, refused = refusing(4, "EAGAIN")
    local seen = {}
    local s = coral.runner({ project_dir = H.tmpdir(), output = "quiet", executor = executor, retries = 0,
                             on_event = function(e) seen[#seen + 1] = e end })
      :execute_plan(coral.plan { t("w", "one", { id = "one", cmd = "echo hi" }) })
    assert.are.equal(1, s.succeeded)
    assert.are.equal(4, refused())
    local waits = 0
    for _, e in ipairs(seen) do
      if e.event == "wait" then
        waits = waits + 1
        assert.matches("one waits to start: spawn /bin/sh: EAGAIN", e.reason)
      end
    end
    assert.are.equal(1, waits)
    local run = journal.replay(journal.read(s.run_dir))
    assert.are.equal(1, #run.tasks.one.attempts)
  end)

  it("in a pipeline, a consumer that waits to start still gets all of its upstream", function()
    local executor = refusing(3, "ENOMEM")
    local s = coral.runner({ project_dir = H.tmpdir(), output = "quiet", executor = executor, retries = 0,
                             mode = "pipeline" })
      :execute_plan(coral.plan {
        t("p", "up", { id = "up", cmd = "seq 1 200000" }),
        t("c", "down", { id = "down", cmd = "wc -l", depends_on = { "up" } }),
      })
    assert.are.equal(2, s.succeeded)
    assert.are.equal("200000\n", H.read_file(s.results.down.output_file))
  end)
end)
