-- Hostile ground, the processes part: no process a task starts outlives the run, however it
-- escapes its process group (setsid, a double fork, an emptied environment, TERM ignored), on
-- a normal end, a timeout or Ctrl-C, and none is left a zombie. The escapee of these specs is
-- the adversarial one: double-forked, setsid'd, ignoring TERM and HUP, sleeping for 1000 s.
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
