-- Ctrl-C while coral waits for a coordination lock: `coral note` and `coral log` blocked by
-- another holder of the file's lock end at once, write nothing, exit 130, and say so in one
-- line (src/coord.c gives up the wait, src/main.c reports the interruption).
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local coord = require "coral.coord"

-- Starts coral with `args` and separate stdout and stderr; `env` (a table) is added to the
-- environment. The result gets pid, and once it exited code, signal, exited_at (uv.hrtime()),
-- stdout and stderr.
local function start(args, env)
  local result, out, err = {}, {}, {}
  local stdout, stderr = uv.new_pipe(), uv.new_pipe()
  local environment
  if env then
    environment = {}
    for k, v in pairs(uv.os_environ()) do
      if env[k] == nil then environment[#environment + 1] = k .. "=" .. v end
    end
    for k, v in pairs(env) do environment[#environment + 1] = k .. "=" .. v end
  end
  local handle, pid
  handle, pid = uv.spawn(H.coral, { args = args, env = environment, stdio = { nil, stdout, stderr } },
    function(code, signal)
      result.exited_at = uv.hrtime()
      result.code, result.signal = code, signal
      handle:close()
    end)
  assert(handle, pid)
  stdout:read_start(function(_, d) if d then out[#out + 1] = d else stdout:close() end end)
  stderr:read_start(function(_, d) if d then err[#err + 1] = d else stderr:close() end end)
  result.pid = pid
  -- Waits for the exit; a coral still running after `seconds` is killed and the spec fails.
  result.finish = function(seconds)
    seconds = seconds or 5
    local timer, killed = uv.new_timer(), false
    timer:start(seconds * 1000, 0, function() killed = true; uv.kill(pid, "sigkill") end)
    while result.code == nil or not stdout:is_closing() or not stderr:is_closing() do
      uv.run("once")
    end
    timer:close()
    uv.run("nowait")
    result.stdout, result.stderr = table.concat(out), table.concat(err)
    assert(not killed, "coral did not exit within " .. seconds .. " s of the signal")
    return result
  end
  return result
end

-- Has process `pid` opened `path`? (coord opens the lock file, then waits for its lock.)
local function has_open(pid, path)
  local dir = uv.fs_scandir("/proc/" .. pid .. "/fd")
  while dir do
    local name = uv.fs_scandir_next(dir)
    if not name then return false end
    if uv.fs_readlink("/proc/" .. pid .. "/fd/" .. name) == path then return true end
  end
  return false
end

-- Holds the lock of dir/file, starts `coral <command> hello --dir dir`, lets it block on the
-- lock, sends `signal`; returns the result, the seconds from the signal to the exit, the
-- file's content and dir.
local function interrupt_while_blocked(command, file, signal, env)
  local dir = H.tmpdir()
  local path = dir .. "/" .. file
  -- the lock every writer of the file takes (under .coral/locks/, coral.guard says where)
  local guard = require "coral.guard"
  local lock <close> = assert(coord.lock(path, guard.coord_opts(dir, path)))
  local r = start({ command, "hello", "--dir", dir }, env)
  H.wait_until(function() return r.code ~= nil or has_open(r.pid, guard.lock_path(dir, path)) end)
  uv.sleep(300)                        -- and it has been waiting for a while
  uv.run("nowait")
  assert.is_nil(r.code, "coral exited before the signal: it did not wait for the lock")
  local sent = uv.hrtime()
  assert(uv.kill(r.pid, signal))
  r.finish()
  local took = (r.exited_at - sent) / 1e9
  io.stderr:write(string.format("\n  coral %s blocked on the lock: exited %.1f ms after %s\n",
                                command, took * 1e3, signal:upper()))
  lock:unlock()
  return r, took, H.read_file(path) or "", dir
end

describe("an interrupted lock wait", function()
  it("ends coral note at once: exit 130, one line on stderr, no note written", function()
    local r, took, content = interrupt_while_blocked("note", "scratchpad.md", "sigint")
    assert.are.equal(130, r.code)
    assert.is_true(took < 1, string.format("exited %.3f s after the signal", took))
    assert.are.equal("coral: interrupted by SIGINT\n", r.stderr)
    assert.are.equal("", r.stdout)
    assert.is_nil(content:find("hello", 1, true))
  end)

  it("ends coral log at once: exit 130, one line on stderr, no line written", function()
    local r, took, content = interrupt_while_blocked("log", "activity_tracker.md", "sigint")
    assert.are.equal(130, r.code)
    assert.is_true(took < 1, string.format("exited %.3f s after the signal", took))
    assert.are.equal("coral: interrupted by SIGINT\n", r.stderr)
    assert.is_nil(content:find("hello", 1, true))
  end)

  it("names SIGTERM and SIGHUP as the signal that ended it", function()
    for _, signal in ipairs { "sigterm", "sighup" } do
      local r, took, content = interrupt_while_blocked("log", "activity_tracker.md", signal)
      assert.are.equal(130, r.code)
      assert.is_true(took < 1, string.format("exited %.3f s after the signal", took))
      assert.are.equal("coral: interrupted by " .. signal:upper() .. "\n", r.stderr)
      assert.is_nil(content:find("hello", 1, true))
    end
  end)

  it("shows where it was interrupted with CORAL_DEBUG=1", function()
    local r, _, content = interrupt_while_blocked("note", "scratchpad.md", "sigint", { CORAL_DEBUG = "1" })
    assert.are.equal(130, r.code)
    assert.matches("^[^\n]*interrupted by SIGINT\n", r.stderr)
    assert.matches("stack traceback:", r.stderr)
    assert.matches("in function 'coral.coord.append'", r.stderr, 1, true)
    assert.is_nil(content:find("hello", 1, true))
  end)

  it("leaves the file and its lock to the next writer", function()
    local _, _, _, dir = interrupt_while_blocked("note", "scratchpad.md", "sigint")
    local r = H.run { "note", "after", "--dir", dir }
    assert.are.equal(0, r.code, r.stderr)
    local content = H.read_file(dir .. "/scratchpad.md")
    assert.truthy(content:find("after", 1, true))
    assert.is_nil(content:find("hello", 1, true))
  end)
end)

describe("an interrupted run's setup", function()
  it("exits 130 with one line, as a run interrupted later does", function()
    -- The signal comes while the run checks its plan, before it watches for signals: a driver
    -- whose fields are read there sends it to coral itself.
    local dir = H.tmpdir()
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
local uv = require "luv"
local driver = setmetatable({ name = "x", prepare = function() return { cmd = "true" } end }, {
  __index = function(_, k)
    if k == "program" then uv.kill(uv.os_getpid(), "sigint") end
  end,
})
return coral.plan { coral.task { id = "a", agent = "w", driver = driver } }
]])
    local r = start({ dir .. "/plan.lua", "x", "--dir", dir, "--quiet" }).finish()
    assert.are.equal(130, r.code, r.stderr)
    assert.are.equal("coral: interrupted by SIGINT\n", r.stderr)
    local again = start({ dir .. "/plan.lua", "x", "--dir", dir, "--quiet" }, { CORAL_DEBUG = "1" }).finish()
    assert.are.equal(130, again.code, again.stderr)
    assert.matches("interrupted by SIGINT\n", again.stderr)
    assert.matches("stack traceback:", again.stderr)
  end)
end)
