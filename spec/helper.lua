--- Loaded by busted before the specs (see .busted) and required by each spec file. Gives specs the coral binary, temp
-- dirs, and a way to run coral; and after every spec it checks that nothing was left behind:
-- no process started by the spec (children, or grandchildren that were orphaned), no open
-- luv handle, no new open file descriptor, and the same working directory.
local uv = require "luv"

local H = {}

--- The binary under test (set by scripts/run-tests), as an absolute path.
H.coral = assert(os.getenv("CORAL_BIN"), "CORAL_BIN is not set: run the specs with `make test`")
H.root = uv.cwd()

-- Every process started from this run inherits the mark, so one left behind is found even
-- after it has been orphaned and adopted by init.
local MARK = "CORAL_SPEC_MARK"
local mark_value = string.format("%d-%d", uv.os_getpid(), uv.hrtime())
uv.os_setenv(MARK, mark_value)
local self_pid = uv.os_getpid()

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("a")
  f:close()
  return data
end
H.read_file = read_file

function H.write_file(path, data, mode)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  if mode then uv.fs_chmod(path, mode) end
end

--- Processes other than this one that carry the mark, plus our own unreaped children.
-- Returns a list of "pid (command) state" strings.
function H.leftover_processes()
  local found = {}
  local dir = uv.fs_scandir("/proc")
  while dir do
    local name = uv.fs_scandir_next(dir)
    if not name then break end
    local pid = tonumber(name)
    if pid and pid ~= self_pid then
      local stat = read_file("/proc/" .. name .. "/stat")
      if stat then
        local comm, state, ppid = stat:match("^%d+ %((.*)%) (%S) (%d+)")
        local environ = read_file("/proc/" .. name .. "/environ") or ""
        local ours = environ:find(MARK .. "=" .. mark_value, 1, true) ~= nil
        if ours or tonumber(ppid) == self_pid then
          found[#found + 1] = string.format("%d (%s) %s", pid, comm, state)
        end
      end
    end
  end
  return found
end

local function open_fds()
  local n, dir = 0, uv.fs_scandir("/proc/self/fd")
  while dir and uv.fs_scandir_next(dir) do n = n + 1 end
  return n
end

local function live_handles()
  local list = {}
  uv.walk(function(h)
    if not h:is_closing() then list[#list + 1] = tostring(h) end
  end)
  return list
end

local temp_dirs = {}

--- A new empty directory, removed after the spec.
function H.tmpdir()
  local base = os.getenv("TMPDIR") or "/tmp"
  local path = assert(uv.fs_mkdtemp(base .. "/coral-spec-XXXXXX"))
  temp_dirs[#temp_dirs + 1] = path
  return path
end

local function remove_tree(path)
  local stat = uv.fs_lstat(path)
  if not stat then return end
  if stat.type == "directory" then
    local dir = uv.fs_scandir(path)
    while dir do
      local name = uv.fs_scandir_next(dir)
      if not name then break end
      remove_tree(path .. "/" .. name)
    end
    uv.fs_rmdir(path)
  else
    uv.fs_unlink(path)
  end
end
H.remove_tree = remove_tree

--- Runs the coral binary (or opts.exe) with `args`; waits for it. Returns a table with code,
-- signal, stdout, stderr. opts: stdin (string), env (list of "K=V", replaces the environment),
-- cwd, timeout (seconds, default 60: the process is killed and the spec fails).
--- This process's environment with `extra` (name -> value) set, as H.run's opts.env takes it.
function H.env(extra)
  local env = uv.os_environ()
  for k, v in pairs(extra or {}) do env[k] = v end
  local list = {}
  for k, v in pairs(env) do list[#list + 1] = k .. "=" .. v end
  return list
end

function H.run(args, opts)
  opts = opts or {}
  local stdin, stdout, stderr = uv.new_pipe(), uv.new_pipe(), uv.new_pipe()
  local out, err = {}, {}
  local result = {}
  local handle, pid_or_err
  handle, pid_or_err = uv.spawn(opts.exe or H.coral, {
    args = args, stdio = { stdin, stdout, stderr }, cwd = opts.cwd, env = opts.env,
  }, function(code, signal)
    result.code, result.signal = code, signal
    handle:close()
  end)
  assert(handle, pid_or_err)
  stdout:read_start(function(e, chunk) assert(not e, e); if chunk then out[#out + 1] = chunk else stdout:close() end end)
  stderr:read_start(function(e, chunk) assert(not e, e); if chunk then err[#err + 1] = chunk else stderr:close() end end)
  if opts.stdin then stdin:write(opts.stdin) end
  stdin:shutdown(function() stdin:close() end)
  local timer = uv.new_timer()
  local timed_out = false
  timer:start(math.floor((opts.timeout or 60) * 1000), 0, function()
    timed_out = true
    uv.kill(pid_or_err, "sigkill")
  end)
  while result.code == nil or not stdout:is_closing() or not stderr:is_closing() do
    uv.run("once")
  end
  timer:close()
  uv.run("nowait")
  assert(not timed_out, "coral did not finish within the timeout: " .. table.concat(args, " "))
  result.stdout, result.stderr = table.concat(out), table.concat(err)
  return result
end

-- libuv opens its signal pipe with the first child it starts and keeps it: start one now, so
-- the descriptor count before the first spec already includes it.
H.run({ "-e", "" })

--- The names in a directory, sorted.
function H.entries(dir)
  local names, it = {}, uv.fs_scandir(dir)
  while it do
    local name = uv.fs_scandir_next(it)
    if not name then break end
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

--- Starts coral (or opts.exe) in the background, for specs that signal or kill it. Returns a
-- table that gets pid, output (chunks of stdout and stderr as they come) and, once it exited,
-- code and signal; wait for it with H.wait_for.
function H.start(args, opts)
  opts = opts or {}
  local result = {}
  local out, err = uv.new_pipe(), uv.new_pipe()
  local chunks = {}
  local handle, pid
  handle, pid = uv.spawn(opts.exe or H.coral, { args = args, cwd = opts.cwd, stdio = { nil, out, err } },
    function(code, signal) result.code, result.signal = code, signal; handle:close() end)
  assert(handle, pid)
  out:read_start(function(_, d) if d then chunks[#chunks + 1] = d else out:close() end end)
  err:read_start(function(_, d) if d then chunks[#chunks + 1] = d else err:close() end end)
  result.pid, result.output = pid, chunks
  return result
end

--- Runs the loop until a process from H.start has exited (at most `seconds`, default 30);
-- returns its exit code (nil if it is still running).
function H.wait_for(result, seconds)
  local deadline = uv.hrtime() + (seconds or 30) * 1e9
  while result.code == nil and uv.hrtime() < deadline do uv.run("once") end
  uv.run("nowait")
  return result.code
end

--- Waits until pred() is true, running the loop meanwhile; fails after `seconds` (default 20).
function H.wait_until(pred, seconds)
  local deadline = uv.hrtime() + (seconds or 20) * 1e9
  while not pred() do
    assert(uv.hrtime() < deadline, "timed out waiting")
    uv.sleep(20)
    uv.run("nowait")
  end
end

--- Installs the checks around every spec of the calling file and returns H. Each spec file
-- starts with `local H = require("spec.helper").guard(_ENV)`.
function H.guard(env)
  local before = {}
  env.before_each(function()
    before.cwd = uv.cwd()
    before.fds = open_fds()
  end)
  env.after_each(function()
    for i = #temp_dirs, 1, -1 do
      remove_tree(temp_dirs[i])
      temp_dirs[i] = nil
    end
    -- Give a process that was just killed a moment to be reaped before calling it left over.
    -- This host is a child subreaper once it has loaded coral.proc, as coral is: orphans come
    -- to it, and proc.adopted() reaps those that exited (the loop may have nothing to run).
    local deadline = uv.hrtime() + 2e9
    local function reap()
      uv.run("nowait")
      if package.loaded["coral.proc"] then package.loaded["coral.proc"].adopted() end
    end
    reap()
    local left = H.leftover_processes()
    while #left > 0 and uv.hrtime() < deadline do
      -- a proc that only garbage holds (a spec dropped it running) is killed and reaped once
      -- collected: collect now rather than when the allocations of this loop get there
      collectgarbage()
      uv.sleep(20)
      reap()
      left = H.leftover_processes()
    end
    assert(#left == 0, "processes left behind: " .. table.concat(left, ", "))
    local handles = live_handles()
    assert(#handles == 0, "luv handles left open: " .. table.concat(handles, ", "))
    assert(uv.cwd() == before.cwd, "working directory changed to " .. uv.cwd())
    local fds = open_fds()
    assert(fds <= before.fds, string.format("file descriptors leaked: %d open, %d before", fds, before.fds))
  end)
  return H
end

package.loaded["spec.helper"] = H
return H
