-- The live report's cache: what it keeps from one write to the next (the journal's lines read
-- before, the plan, the parts of the page drawn from settled tasks) must give the page a write
-- without it gives, at every point of a run. Checked on the records of a real run (a retry, a
-- failure, a skip, ids that need escaping), replayed as its journal grew.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local uv = require "luv"

local journal = require "coral.records.journal"
local report = require "coral.view.report"
local timeline = require "coral.view.timeline"

local RECIPE = [[
local coral = require "coral"
local t = coral.task
local function sh(script) return { "sh", "-c", script } end
return coral.plan({
  { t("w", "first", { id = "a&b", cmd = sh("sleep 0.05") }),
    t("w", "second <one>", { id = "c<d>", cmd = sh("sleep 0.03") }) },
  { t("w", "fails once", { id = "flaky", cmd = sh("test -e once || { touch once; exit 3; }"), retries = 1,
                           depends_on = { "a&b" } }),
    t("w", "fails", { id = "broken", cmd = sh("exit 1"), retries = 0, depends_on = { "c<d>" } }),
    t("w", "   spaced\n  text  ", { id = "it's", cmd = sh("sleep 0.02"), depends_on = { "a&b", "c<d>" } }) },
  { t("w", "after flaky", { id = "last", cmd = sh("true"), depends_on = { "flaky", "it's" } }),
    t("w", "skipped", { id = "after", cmd = sh("true"), depends_on = { "broken" } }) },
}, { name = "live-report" })
]]

local WRITTEN = '<p class="note">Written by coral at [^<]*</p>\n'

-- A real run of RECIPE in a new project dir: its run dir.
local function run_recipe()
  local dir = H.tmpdir()
  H.write_file(dir .. "/plan.lua", RECIPE)
  local r = H.run({ dir .. "/plan.lua", "x", "--dir", dir, "--quiet", "--max-workers", "2" }, { cwd = dir })
  assert.are.equal(1, r.code, r.stderr)   -- broken failed
  local ids = require("coral.records").run_ids(dir)
  assert.are.equal(1, #ids)
  return dir, dir .. "/.coral/runs/" .. ids[1]
end

-- A run dir whose journal is rewritten by the spec: the run's plan, and its tasks/ (linked).
local function replica(run_dir)
  local dir = H.tmpdir()
  local copy = dir .. "/.coral/runs/" .. run_dir:match("[^/]+$")
  require("coral.fsutil").mkdirs(copy)
  H.write_file(copy .. "/plan.json", assert(H.read_file(run_dir .. "/plan.json")))
  assert(uv.fs_symlink(run_dir .. "/tasks", copy .. "/tasks"))
  return copy
end

describe("the live report", function()
  it("reads only the journal's new lines, and gets the events a whole read gets", function()
    local _, run_dir = run_recipe()
    local copy = replica(run_dir)
    local full = assert(H.read_file(run_dir .. "/journal.jsonl"))
    local state, steps, at = {}, 0, 0
    -- (each cut line is warned of once: not here)
    local stderr = io.stderr
    io.stderr = { write = function() end } -- luacheck: ignore 122
    finally(function() io.stderr = stderr end) -- luacheck: ignore 122
    local sizes = { 97, 611, 1409, 33 }   -- most steps end inside a line; some take several
    while at < #full do
      at = math.min(#full, at + sizes[steps % #sizes + 1])
      H.write_file(copy .. "/journal.jsonl", full:sub(1, at))
      local new = journal.read_new(copy, state)
      assert.are.same(journal.read(copy), new)
      assert.are.equal(#full:sub(1, at):gsub("[^\n]", ""), state.lines)   -- complete lines only
      steps = steps + 1
    end
    assert.is_true(steps > 5)
    -- A line read before is not read again: one changed in place stays as it was read.
    local first = full:match("^[^\n]*")
    local changed = first:gsub('"event":"run"', '"event":"xyz"')
    assert.are_not.equal(first, changed)
    H.write_file(copy .. "/journal.jsonl", changed .. full:sub(#first + 1))
    assert.are.equal("xyz", journal.read(copy)[1].event)
    assert.are.same(journal.read(run_dir), journal.read_new(copy, state))
    -- A shorter journal is a new one: read from its start.
    H.write_file(copy .. "/journal.jsonl", first .. "\n")
    assert.are.equal(1, #journal.read_new(copy, state))
  end)

  it("draws with its cache the page it draws without, at every point of a run", function()
    local _, run_dir = run_recipe()
    local copy = replica(run_dir)
    local full = assert(H.read_file(run_dir .. "/journal.jsonl"))
    local lines = {}
    for line in full:gmatch("[^\n]*\n") do lines[#lines + 1] = line end
    local cache = {}
    for n = 1, #lines do
      H.write_file(copy .. "/journal.jsonl", table.concat(lines, "", 1, n))
      -- running attempts are drawn up to `now`: the same for both pages
      local now = cjson.decode(lines[n]).t + 0.25
      for _, live in ipairs { true, false } do
        local cached = timeline.load(copy, { live = live, now = now, cache = cache })
        local a = report.html(cached, copy, { cache = cache }):gsub(WRITTEN, "")
        local b = report.html(timeline.load(copy, { live = live, now = now }), copy):gsub(WRITTEN, "")
        assert.are.equal(b, a, string.format("line %d, %s", n, live and "live" or "killed"))
      end
    end
    -- kept parts were used: a settled task's row is kept, with what it was made of
    assert.truthy(cache.view and next(cache.view.rows))
  end)

  it("writes the same final report as `coral report`", function()
    local dir, run_dir = run_recipe()
    local own = assert(H.read_file(run_dir .. "/report.html"))   -- the live report's last write
    local r = H.run({ "report", "-o", run_dir .. "/again.html", "--dir", dir })
    assert.are.equal(0, r.code, r.stderr)
    local again = assert(H.read_file(run_dir .. "/again.html"))
    assert.truthy(own:find('data-task="it&#39;s"', 1, true))
    assert.truthy(own:find('<a href="tasks/flaky/attempt-2.out">output</a>', 1, true))
    assert.are.equal(again:gsub(WRITTEN, ""), (own:gsub(WRITTEN, "")))
  end)
end)
