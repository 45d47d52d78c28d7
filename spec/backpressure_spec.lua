-- Back-pressure, through the real binary: a pipeline's memory stays flat whatever flows through
-- it (run/flow.lua).
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"

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
