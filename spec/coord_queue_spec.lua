-- A held lock of a coordination file never stops or freezes a run (coral.records.coordq): the
-- run ends with its own status, the journal has every task's end, the file falls behind with a
-- warning naming it and its holder, catches up in order once the lock is free, and what is
-- still queued at the end is reported by name.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local uv = require "luv"

-- The three files, and a line each entry leaves in the file, to check their order.
local FILES = {
  { name = "scratchpad.md", path = "scratchpad.md", entry = "%(task (%w+)%)" },
  { name = "activity_tracker.md", path = "activity_tracker.md", entry = "%*%*Task%*%*: task (%w+)" },
  { name = ".coral/project_state.yaml", path = ".coral/project_state.yaml" },
}

-- t1..t3, then a gate that waits for the file `go`, then t4..t6: the spec frees the lock
-- while the gate runs, so the entries of t1..t3 wait and those of t4..t6 do not.
local RECIPE = [[
local coral = require "coral"
local t = coral.task
return function()
  local tasks = {}
  for i = 1, 3 do tasks[#tasks + 1] = t("w", "task t" .. i, { id = "t" .. i, cmd = "sleep 0.0" .. i }) end
  tasks[#tasks + 1] = t("w", "task gate", { id = "gate", depends_on = { "t1", "t2", "t3" },
    cmd = "i=0; while [ ! -f go ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done" })
  for i = 4, 6 do
    tasks[#tasks + 1] = t("w", "task t" .. i, { id = "t" .. i, depends_on = { "gate" }, cmd = "sleep 0.0" .. i })
  end
  return coral.plan(tasks)
end
]]

-- A plan that does not wait for the spec: three short tasks.
local SHORT = [[
local coral = require "coral"
local t = coral.task
return function()
  return coral.plan { t("w", "task t1", { id = "t1", cmd = "sleep 0.2" }),
                      t("w", "task t2", { id = "t2", cmd = "sleep 0.1" }),
                      t("w", "task t3", { id = "t3", cmd = "sleep 0.1", depends_on = { "t1" } }) }
end
]]

-- Another process holding the lock of `path` (through coral.coord and coral.guard, as agents'
-- `coral note` does) until the file `release` exists (or a minute has passed).
local function hold(path, release)
  local code = string.format([[
local coord, guard, uv = require "coral.coord", require "coral.guard", require "luv"
-- the lock every writer of the file takes (coral.guard says where it is)
local path = %q
local project = path:match("^(.*)/%%.coral/[^/]*$") or guard.project_of(path)   -- the state is in .coral
local l = assert(coord.lock(path, guard.coord_opts(project, path)))
assert(io.open(%q, "w")):close()
local deadline = uv.hrtime() + 60e9
while not uv.fs_stat(%q) and uv.hrtime() < deadline do uv.sleep(10) end
l:unlock()
]], path, release .. ".locked", release)
  local holder = H.start({ "-e", code })
  H.wait_until(function() return uv.fs_stat(release .. ".locked") ~= nil or holder.code ~= nil end)
  assert(holder.code == nil, "the holder could not take the lock: " .. table.concat(holder.output))
  return holder
end

local function journal(dir)
  local runs = H.entries(dir .. "/.coral/runs")
  local events = {}
  if #runs == 0 then return events, nil end
  local run_dir = dir .. "/.coral/runs/" .. runs[1]
  for line in (H.read_file(run_dir .. "/journal.jsonl") or ""):gmatch("[^\n]+") do
    events[#events + 1] = cjson.decode(line)
  end
  return events, run_dir
end

local function find(events, pred)
  for _, e in ipairs(events) do if pred(e) then return e end end
end

-- Each of `ids` ended, succeeded, in the journal.
local function assert_ended(events, ids)
  for _, id in ipairs(ids) do
    assert.truthy(find(events, function(e) return e.event == "end" and e.task == id and e.outcome == "succeeded" end),
                  "no end of " .. id .. " in the journal")
  end
end

-- Every task of the plan ended, succeeded, in the journal, and the run is done.
local function assert_complete(events, ids)
  assert_ended(events, ids)
  local done = find(events, function(e) return e.event == "done" end)
  assert.truthy(done, "no done in the journal")
  assert.are.equal("succeeded", done.status)
end

-- The ids in the order their entries appear in `text`.
local function order_in(text, pattern)
  local ids = {}
  for id in text:gmatch(pattern) do ids[#ids + 1] = id end
  return ids
end

-- The ids in the order of the journal's `event` events.
local function order_of(events, event, ids)
  local want, out = {}, {}
  for _, id in ipairs(ids) do want[id] = true end
  for _, e in ipairs(events) do
    if e.event == event and want[e.task] then out[#out + 1] = e.task end
  end
  return out
end

local function output(r)
  return table.concat(r.output)
end

describe("a held coordination lock", function()
  for _, file in ipairs(FILES) do
    describe("of " .. file.name, function()
      it("leaves the run going: the file catches up, in order, once the lock is free", function()
        local dir = H.tmpdir()
        H.write_file(dir .. "/r.lua", RECIPE)
        local holder = hold(dir .. "/" .. file.path, dir .. "/release")
        local run
        finally(function()
          H.write_file(dir .. "/release", "")
          H.write_file(dir .. "/go", "")
          H.wait_for(holder, 10)
          if run then H.wait_for(run, 30) end
        end)
        run = H.start({ dir .. "/r.lua", "x", "--dir", dir, "--max-workers", "3" })
        -- t1..t3 end while the lock is held; their entries wait
        H.wait_until(function()
          local events = journal(dir)
          return find(events, function(e) return e.event == "start" and e.task == "gate" end)
             and find(events, function(e) return e.event == "coord_behind" and e.file == file.name end)
        end)
        local events = journal(dir)
        local behind = find(events, function(e) return e.event == "coord_behind" end)
        assert.are.equal(string.format("%s is behind: its lock is held by pid %d; its entries wait and are " ..
          "written when the lock is free", file.name, holder.pid), behind.message)
        -- the loop goes on: the ends of t1..t3 are in the journal while the lock is held
        assert_ended(events, { "t1", "t2", "t3" })

        H.write_file(dir .. "/release", "")
        assert.are.equal(0, H.wait_for(holder, 10))
        H.wait_until(function()
          return find(journal(dir), function(e) return e.event == "coord_caught_up" and e.file == file.name end)
        end)
        H.write_file(dir .. "/go", "")
        assert.are.equal(0, H.wait_for(run, 30), output(run))

        events = journal(dir)
        local ids = { "t1", "t2", "t3", "gate", "t4", "t5", "t6" }
        assert_complete(events, ids)
        local text = output(run)
        assert.matches("warning   " .. file.name:gsub("%p", "%%%0") .. " is behind: its lock is held by pid " ..
                       holder.pid, text)
        assert.matches(file.name:gsub("%p", "%%%0") .. " caught up: %d+ %a+ written", text)
        assert.not_matches("not written", text)
        local content = assert(H.read_file(dir .. "/" .. file.path))
        if file.name == "scratchpad.md" then
          assert.are.same(order_of(events, "start", ids), order_in(content, file.entry))
        elseif file.name == "activity_tracker.md" then
          assert.are.same(order_of(events, "end", ids), order_in(content, file.entry))
        else
          -- every update applied: each task's history, and the run's end
          for _, id in ipairs(ids) do assert.matches('task_id: "' .. id .. '"', content) end
          assert.matches('\nstatus: "succeeded"', content)
        end
      end)

      it("held past the end: the run ends promptly with its status and names what was not written", function()
        local dir = H.tmpdir()
        H.write_file(dir .. "/r.lua", SHORT)
        local holder = hold(dir .. "/" .. file.path, dir .. "/release")
        finally(function()
          H.write_file(dir .. "/release", "")
          H.wait_for(holder, 10)
        end)
        local t0 = uv.hrtime()
        local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" }, { timeout = 20 })
        local took = (uv.hrtime() - t0) / 1e9
        assert.are.equal(0, r.code, r.stderr)
        assert.is_nil(holder.code, "the holder let go before the run ended")
        -- the end waits for the lock at most 2 s (coordq.END_WAIT), not the lock's 30 s
        assert.is_true(took < 6, string.format("the run took %.1f s", took))
        local events, run_dir = journal(dir)
        assert_complete(events, { "t1", "t2", "t3" })
        -- the loop was never frozen: the run itself took about as long as its tasks
        local started = find(events, function(e) return e.event == "run" end)
        local done = find(events, function(e) return e.event == "done" end)
        assert.is_true(done.t - started.t < 1.5, string.format("the run took %.1f s", done.t - started.t))
        assert.are.equal("succeeded", cjson.decode(H.read_file(run_dir .. "/summary.json")).status)
        local what = file.name == ".coral/project_state.yaml" and "updates?" or "entries"
        assert.matches(string.format("coral: warning: %s: %%d+ %s not written: its lock is held by pid %d\n",
          file.name:gsub("%p", "%%%0"), what, holder.pid), r.stderr)
        assert.matches("coral: warning: " .. file.name:gsub("%p", "%%%0") .. " is behind", r.stderr)
        -- the journal and the summary are there; the file got nothing from this run
        local content = H.read_file(dir .. "/" .. file.path)
        if file.entry then assert.are.same({}, order_in(content or "", file.entry)) end
      end)
    end)
  end

  it("Ctrl-C ends the wait at the end of the run at once, and what waits is reported", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", SHORT)
    local holder = hold(dir .. "/activity_tracker.md", dir .. "/release")
    local run
    finally(function()
      H.write_file(dir .. "/release", "")
      H.wait_for(holder, 10)
      if run then H.wait_for(run, 10) end
    end)
    -- no live report: it is written after the done event, before the wait
    run = H.start({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report" })
    H.wait_until(function() return find(journal(dir), function(e) return e.event == "done" end) end)
    local t0 = uv.hrtime()
    uv.kill(run.pid, "sigint")
    H.wait_for(run, 10)
    local took = (uv.hrtime() - t0) / 1e9
    assert.is_true(took < 1, string.format("coral took %.1f s to end after Ctrl-C", took) .. output(run))
    -- the run had ended: its status stands
    assert.are.equal(0, run.code, output(run))
    assert.matches("coral: warning: activity_tracker.md: 3 entries not written: its lock is held by pid " .. holder.pid,
                   output(run))
    assert.is_nil(holder.code)
  end)

  it("coral note still waits for the lock, and Ctrl-C ends it", function()
    local dir = H.tmpdir()
    local holder = hold(dir .. "/scratchpad.md", dir .. "/release")
    local note
    finally(function()
      H.write_file(dir .. "/release", "")
      H.wait_for(holder, 10)
      if note then H.wait_for(note, 10) end
    end)
    note = H.start({ "note", "hello", "--dir", dir })
    uv.sleep(300)
    uv.run("nowait")
    assert.is_nil(note.code, "coral note did not wait for the lock")
    uv.kill(note.pid, "sigint")
    assert.are.equal(130, H.wait_for(note, 5))
  end)
end)
