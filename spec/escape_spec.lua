-- Hostile ground, the processes and records part: no process a task starts outlives the run,
-- however it escapes its process group (setsid, a double fork, an emptied environment, TERM
-- ignored), on a normal end, a timeout or Ctrl-C, and none is left a zombie; a journal cut
-- mid-record by a crash resumes on a fresh line; unreadable journal lines are reported; every
-- attempt has its joblog row; a kept-aside state file never replaces another; a full disk is
-- named ENOSPC. The escapee of these specs is the adversarial one: double-forked, setsid'd,
-- ignoring TERM and HUP, sleeping for 1000 s.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"

-- A shell snippet that starts the escapee and waits until it runs (its pid in `pidfile`,
-- relative to the project dir): `sh -c` in a new session whose parent exits at once, so it
-- is orphaned, and that ignores TERM and HUP, then becomes `sleep 1000`. `prefix` runs it
-- under another command (`env -i` empties its environment).
local function escapee(pidfile, prefix)
  return string.format([[(%s setsid sh -c 'trap "" TERM HUP; echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 1000' ]] ..
    [[</dev/null >/dev/null 2>&1 &); while [ ! -s %s ]; do sleep 0.01; done]],
    prefix or "", pidfile, pidfile, pidfile, pidfile)
end

local function write_plan(dir, tasks_lua)
  H.write_file(dir .. "/plan.lua", "local coral = require 'coral'\nlocal t = coral.task\nreturn coral.plan {\n" ..
    tasks_lua .. "\n}\n")
  return dir .. "/plan.lua"
end

local function run(dir, extra, opts)
  local args = { "run", dir .. "/plan.lua", "x", "--dir", dir, "--quiet", "--no-report" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return H.run(args, opts)
end

-- Is `pid` running (not gone, not a zombie)?
local function alive(pid)
  local stat = H.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %(.*%) [ZX]")
end

local function pid_in(path)
  return assert(tonumber(H.read_file(path)), "no pid in " .. path)
end

local function run_dir(dir)
  local names = H.entries(dir .. "/.coral/runs")
  return dir .. "/.coral/runs/" .. names[#names]
end

local function journal_lines(dir)
  local lines = {}
  for line in (H.read_file(run_dir(dir) .. "/journal.jsonl") or ""):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  return lines
end

local function joblog_rows(dir)
  local rows = {}
  for line in (H.read_file(run_dir(dir) .. "/joblog.tsv") or ""):gmatch("([^\n]*)\n") do
    local task, n, outcome = line:match("^([^\t]*)\t(%d+)\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t([^\t]*)$")
    if task then rows[#rows + 1] = task .. " " .. n .. " " .. outcome end
  end
  table.sort(rows)
  return rows
end

describe("no process outlives the run", function()
  it("kills a double-forked, setsid'd, TERM-ignoring descendant when its task ends", function()
    local dir = H.tmpdir()
    write_plan(dir, string.format([[
      t("w", "a", { id = "a", cmd = %q }),
      t("w", "b", { id = "b", cmd = "echo b", depends_on = { "a" } }),]], escapee("daemon.pid")))
    local t0 = uv.hrtime()
    local r = run(dir)
    assert.are.equal(0, r.code, r.stderr)
    assert.is_true((uv.hrtime() - t0) / 1e9 < 10)
    local pid = pid_in(dir .. "/daemon.pid")
    assert.is_false(alive(pid), "the escapee outlived the run")
    -- its task's stderr file says what was killed
    local err = H.read_file(run_dir(dir) .. "/tasks/a/attempt-1.err")
    assert.matches("%[coral: killed 1 process the task left running: " .. pid .. " %(sleep%)%]", err)
  end)

  it("kills one that emptied its environment when the run ends", function()
    local dir = H.tmpdir()
    -- b runs after a's end: the escapee without coral's marks still lives then (it cannot
    -- be told from another task's), and is gone when the run is
    write_plan(dir, string.format([[
      t("w", "a", { id = "a", cmd = %q }),
      t("w", "b", { id = "b", cmd = "kill -0 $(cat daemon.pid) && echo alive", depends_on = { "a" } }),]],
      escapee("daemon.pid", "env -i")))
    local r = run(dir)
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("alive\n", H.read_file(run_dir(dir) .. "/tasks/b/attempt-1.out"))
    assert.is_false(alive(pid_in(dir .. "/daemon.pid")), "the escapee outlived the run")
  end)

  it("kills the escapees of a task that timed out", function()
    local dir = H.tmpdir()
    write_plan(dir, string.format([[
      t("w", "a", { id = "a", cmd = %q, timeout = 1, retries = 0 }),]],
      escapee("daemon.pid") .. "; trap '' TERM; sleep 100"))
    local t0 = uv.hrtime()
    local r = run(dir, { "--kill-grace", "0.5" })
    assert.are.equal(1, r.code, r.stderr)
    assert.is_true((uv.hrtime() - t0) / 1e9 < 10)
    assert.is_false(alive(pid_in(dir .. "/daemon.pid")), "the escapee outlived the timeout")
    local last = journal_lines(dir)
    assert.matches('"outcome":"timeout"', table.concat(last, "\n"))
  end)

  it("kills the escapees of a run stopped by Ctrl-C", function()
    local dir = H.tmpdir()
    write_plan(dir, string.format([[
      t("w", "a", { id = "a", cmd = %q }),]], escapee("daemon.pid") .. "; sleep 100"))
    local r = H.start({ "run", dir .. "/plan.lua", "x", "--dir", dir, "--quiet", "--no-report" })
    H.wait_until(function() return (H.read_file(dir .. "/daemon.pid") or "") ~= "" end)
    local pid = pid_in(dir .. "/daemon.pid")
    assert.is_true(alive(pid))
    assert(uv.kill(r.pid, "sigint"))
    assert.are.equal(130, H.wait_for(r, 20))
    assert.is_false(alive(pid), "the escapee outlived the interrupted run")
  end)

  it("does not wait for an escapee that holds the task's output pipe", function()
    local dir = H.tmpdir()
    -- with --idle-timeout coral reads the task's output through a pipe, which the escapee
    -- keeps open: the task ends when its process does, not when the pipe closes
    write_plan(dir, [[
      t("w", "a", { id = "a", cmd = "setsid sh -c 'trap \"\" TERM; echo $$ > daemon.pid; exec sleep 1000' & sleep 0.3; echo done" }),]])
    local t0 = uv.hrtime()
    local r = run(dir, { "--idle-timeout", "60" }, { timeout = 30 })
    assert.are.equal(0, r.code, r.stderr)
    assert.is_true((uv.hrtime() - t0) / 1e9 < 10, "the run waited for the escapee")
    assert.is_false(alive(pid_in(dir .. "/daemon.pid")))
  end)

  it("leaves coral no child, running or zombie, after execute_plan, and spares what was there before", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/script.lua", string.format([[
      local coral = require "coral"
      local proc = require "coral.proc"
      local t = coral.task
      -- adopted before the run: not the run's to kill
      proc.spawn { cmd = %q, shell = true, cwd = %q }:wait()
      local summary = coral.runner({ output = "quiet", project_dir = %q }):execute_plan(coral.plan {
        t("w", "a", { id = "a", cmd = %q }),
        t("w", "b", { id = "b", cmd = %q }),
        t("w", "c", { id = "c", cmd = "(sleep 0.2; echo late) & echo early" }),
      })
      assert(summary.status == "succeeded", summary.status)
      local uv = require "luv"
      local before = tonumber(io.open(%q):read("a"))
      local children, me = {}, math.tointeger(uv.os_getpid())
      local tasks = uv.fs_scandir("/proc/" .. me .. "/task")
      for tid in function() return uv.fs_scandir_next(tasks) end do
        for pid in io.open("/proc/" .. me .. "/task/" .. tid .. "/children"):read("a"):gmatch("%%d+") do
          local stat = io.open("/proc/" .. pid .. "/stat"):read("a")
          if tonumber(pid) ~= before then children[#children + 1] = stat:match("^%%d+ (%%(.*%%) %%S)") end
        end
      end
      assert(#children == 0, "children left: " .. table.concat(children, ", "))
      assert(#proc.adopted() == 1 and proc.adopted()[1] == before)
      require("luv").kill(before, "sigkill")
      print("clean")
    ]], escapee("before.pid"), dir, dir, escapee("a.pid"), escapee("b.pid", "env -i"), dir .. "/before.pid"))
    local r = H.run({ dir .. "/script.lua" }, { cwd = dir })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("clean\n", r.stdout)
    for _, name in ipairs { "before", "a", "b" } do
      H.wait_until(function() return not alive(pid_in(dir .. "/" .. name .. ".pid")) end, 5)
    end
  end)
end)

describe("the smaller items", function()
  it("starts a resumed journal on a fresh line when its last record was cut by a crash", function()
    local dir = H.tmpdir()
    write_plan(dir, [[
      t("w", "a", { id = "a", cmd = "echo a" }),
      t("w", "b", { id = "b", cmd = "test -e fixed", depends_on = { "a" }, retries = 0 }),]])
    assert.are.equal(1, run(dir).code)
    -- coral killed while it wrote a record: the line has no end
    local journal = run_dir(dir) .. "/journal.jsonl"
    local f = assert(io.open(journal, "ab"))
    f:write('{"event":"end","task":"b","atte')
    f:close()
    local cut = #journal_lines(dir) + 1
    H.write_file(dir .. "/fixed", "")
    local r = H.run({ "resume", "--dir", dir, "--retry-failed", "--quiet" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("coral: warning: " .. journal:gsub("%p", "%%%0") .. ":" .. cut ..
      ": the last record was cut short %(coral stopped while writing it%); skipped\n", r.stderr)
    -- the cut record stays alone on its line; the resumed run's first record is whole
    local lines = journal_lines(dir)
    assert.are.equal('{"event":"end","task":"b","atte', lines[cut])
    assert.matches('"event":"run"', lines[cut + 1])
    assert.matches('"resumed":true', lines[cut + 1])
    local status = H.run({ "status", "--dir", dir, "--json" })
    assert.matches('"status":"succeeded"', status.stdout)
    -- the warning is the resume's; status names the line again, but only as this line
    assert.matches(":" .. cut .. ": not a journal record; skipped\n", status.stderr)
  end)

  it("has a joblog row for every attempt, interrupted ones included", function()
    local dir = H.tmpdir()
    write_plan(dir, [[
      t("w", "quick", { id = "quick", cmd = "echo quick" }),
      t("w", "slow", { id = "slow", cmd = "test -e resumed || sleep 100" }),]])
    local r = H.start({ "run", dir .. "/plan.lua", "x", "--dir", dir, "--quiet", "--no-report" })
    -- until slow has started and quick has ended
    H.wait_until(function()
      if not uv.fs_stat(dir .. "/.coral/runs") then return false end
      local started = false
      for _, line in ipairs(journal_lines(dir)) do
        if line:find('"task":"slow"', 1, true) and line:find('"event":"start"', 1, true) then started = true end
      end
      return started and (H.read_file(run_dir(dir) .. "/joblog.tsv") or ""):find("quick") ~= nil
    end)
    uv.kill(r.pid, "sigkill")
    H.wait_for(r)
    H.write_file(dir .. "/resumed", "")
    -- the joblog row of quick was lost (coral killed between its two records)
    local joblog = run_dir(dir) .. "/joblog.tsv"
    H.write_file(joblog, (H.read_file(joblog):gsub("quick\t[^\n]*\n", "")))
    local res = H.run({ "resume", "--dir", dir, "--quiet" })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.same({ "quick 1 succeeded", "slow 1 interrupted", "slow 2 succeeded" }, joblog_rows(dir))
  end)

  it("keeps each broken project_state.yaml aside under its own name, even within a second", function()
    local records = require "coral.records"
    local dir = H.tmpdir()
    local rec = records.open(dir)
    local real_date = os.date
    -- every call in the same second
    os.date = function(fmt, t) return real_date(fmt, t or 1767225600) end -- luacheck: ignore 122
    local ok, err = pcall(function()
      local asides = {}
      for i = 1, 3 do
        H.write_file(rec.paths.state, "broken " .. i .. ": [\n")
        local _, warning = rec:update_state(function(state) state.n = i end)
        asides[i] = assert(warning:match("kept aside as (%S+)%)$"), warning)
        assert.are.equal("broken " .. i .. ": [\n", H.read_file(asides[i]))
      end
      assert.are_not.equal(asides[1], asides[2])
      assert.are_not.equal(asides[2], asides[3])
      assert.are.equal(asides[1] .. "-2", asides[2])
    end)
    os.date = real_date   -- luacheck: ignore 122
    rec:close()
    assert(ok, err)
  end)
end)

describe("a full disk", function()
  local mounted

  -- A 1 MiB tmpfs (root only), or nil when it cannot be had.
  local function small_disk()
    local dir = H.tmpdir()
    if not os.execute("mount -t tmpfs -o size=1m coral-spec-full " .. dir .. " 2>/dev/null") then return nil end
    mounted = dir
    return dir
  end

  -- Fills the disk: what is left is less than a page.
  local function fill(dir)
    os.execute("head -c 2000000 /dev/zero > " .. dir .. "/filler 2>/dev/null")
  end

  after_each(function()
    if mounted then
      os.execute("umount -l " .. mounted)   -- -l: even if a failed spec left a file open there
      mounted = nil
    end
  end)

  it("is named ENOSPC, not 'short write', by a whole-file write", function()
    local fsutil = require "coral.fsutil"
    local dir = small_disk()
    if not dir then
      -- not root: /dev/full fails every write at once, which only shows the name
      local ok, err = fsutil.write_file("/dev/full", "x")
      assert.is_nil(ok)
      assert.matches("ENOSPC", err)
      return pending("needs root to mount a small tmpfs: only /dev/full was checked")
    end
    -- 2 MB into 1 MiB: the first write stops short, the second says why
    local ok, err = fsutil.write_file(dir .. "/big", string.rep("x", 2000000))
    assert.is_nil(ok)
    assert.are.equal("write " .. dir .. "/big: ENOSPC: no space left on device", err)
    ok, err = fsutil.write_atomic(dir .. "/big2", string.rep("x", 2000000))
    assert.is_nil(ok)
    assert.matches("^write " .. dir:gsub("%p", "%%%0") .. "/big2: ENOSPC: no space left on device", err)
  end)

  it("is named ENOSPC by the journal, whose record is cut back off", function()
    local dir = small_disk()
    if not dir then return pending("needs root to mount a small tmpfs") end
    local records = require "coral.records"
    local rec = records.open(dir)
    rec:event("first", {})
    local before = H.read_file(rec.journal_path)
    fill(dir)
    -- a record bigger than what is left of the journal's page: written in part, then refused
    local ok, err = pcall(rec.event, rec, "big", { pad = string.rep("x", 8000) })
    assert.is_false(ok)
    assert.are.equal("append " .. rec.journal_path .. ": ENOSPC: no space left on device", err)
    assert.are.equal(before, H.read_file(rec.journal_path))
    rec:close()
  end)

  it("stops a run with a message that names the file and ENOSPC", function()
    local dir = small_disk()
    if not dir then return pending("needs root to mount a small tmpfs") end
    write_plan(dir, [[
      t("w", "fill", { id = "fill", cmd = "head -c 2000000 /dev/zero > filler; echo filled" }),
      t("w", "after", { id = "after", cmd = "echo after", depends_on = { "fill" } }),]])
    local r = run(dir)
    assert.are.equal(1, r.code)
    assert.matches("coral: the run stopped: append " .. dir:gsub("%p", "%%%0") ..
      "/%.coral/runs/[^:]+: ENOSPC: no space left on device", r.stderr)
  end)
end)
