--- Git as workspaces use it: each command through coral.proc (an argv, never a shell), in an
-- environment of its own — coral's identity for the commits it makes, no prompt, and none of
-- the user's GIT_DIR / GIT_INDEX_FILE / GIT_WORK_TREE, which would point git elsewhere.
-- Two ways to run one: blocking, before or after a run's loop (M.run), and on the loop inside
-- a coroutine (M.async, M.await), so that preparing one task's worktree never stalls the others.
local proc = require "coral.proc"

local M = {}

--- The environment changes of every git command coral runs.
M.ENV = {
  GIT_DIR = false, GIT_WORK_TREE = false, GIT_INDEX_FILE = false, GIT_OBJECT_DIRECTORY = false,
  GIT_TERMINAL_PROMPT = "0", GIT_EDITOR = "true", GIT_MERGE_AUTOEDIT = "no",
  GIT_AUTHOR_NAME = "coral", GIT_AUTHOR_EMAIL = "coral@localhost",
  GIT_COMMITTER_NAME = "coral", GIT_COMMITTER_EMAIL = "coral@localhost",
  LC_ALL = "C",   -- messages and conflict lines in one language, as the parsing below expects
}

local function environment(extra)
  local env = {}
  for k, v in pairs(M.ENV) do env[k] = v end
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

-- "git -C dir merge x: exit 1: CONFLICT (content): ..." — the command, how it ended, and the
-- first lines of what it said.
local function failure(dir, args, info, stdout, stderr)
  local said = (stderr ~= "" and stderr or stdout):gsub("%s+$", "")
  local lines, n = {}, 0
  for line in said:gmatch("[^\n]+") do
    n = n + 1
    if n <= 4 then lines[#lines + 1] = line end
  end
  local how = info.signal and ("signal " .. tostring(info.signal)) or ("exit " .. tostring(info.code))
  return string.format("git -C %s %s: %s%s", dir, table.concat(args, " "), how,
                       #lines > 0 and (": " .. table.concat(lines, " / ")) or "")
end

local function options(dir, args, env, out)
  -- no automatic gc or maintenance: git would detach it as a daemon, which coral, the
  -- subreaper of its run, kills when the run ends; the user's own git does it later
  -- a worktree of 10,000 files or more is written by one worker per core (50,000 files on 2
  -- cores: 3.8 s against 2.2 s; below that, the workers cost more than they save:
  -- docs/PERFORMANCE.md)
  local argv = { "git", "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "checkout.workers=0",
                 "-c", "checkout.thresholdForParallelism=10000", "-C", dir }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  out.stdout, out.stderr = {}, {}
  return {
    argv = argv, env = environment(env),
    stdout = function(d) out.stdout[#out.stdout + 1] = d end,
    stderr = function(d) out.stderr[#out.stderr + 1] = d end,
  }
end

-- The result of a finished command: stdout, or nil, the error and the exit code.
local function result(dir, args, info, out)
  local stdout, stderr = table.concat(out.stdout), table.concat(out.stderr)
  if info.code == 0 then return stdout end
  return nil, failure(dir, args, info, stdout, stderr), info.code
end

--- Runs `git -C dir args...` to its end, blocking (not from a loop callback: the run's loop
-- is not running then). Returns its stdout, or nil, an error naming the command, and its exit
-- code. `env`: more environment changes.
function M.run(dir, args, env)
  local out = {}
  local p <close>, err = proc.spawn(options(dir, args, env, out))
  if not p then return nil, "git: " .. err end
  return result(dir, args, p:wait(), out)
end

--- Runs `git -C dir args...` on the loop from inside a coroutine started by M.async: the
-- coroutine waits, the loop goes on. Returns as M.run.
function M.await(dir, args, env)
  local co = assert(coroutine.running(), "git.await: not inside coral.workspace.git.async")
  local out = {}
  local opts = options(dir, args, env, out)
  local finished
  opts.on_exit = function(info)
    finished = { result(dir, args, info, out) }
    if coroutine.status(co) == "suspended" then assert(coroutine.resume(co)) end
  end
  local p, err = proc.spawn(opts)
  if not p then return nil, "git: " .. err end
  if not finished then coroutine.yield() end
  return table.unpack(finished, 1, 3)
end

--- Runs fn() in a coroutine in which M.await may be called; done(...) gets what fn returned,
-- or nil and the error fn raised.
function M.async(fn, done)
  local co = coroutine.create(function()
    local ok, a, b, c = pcall(fn)
    if ok then done(a, b, c) else done(nil, tostring(a)) end
  end)
  assert(coroutine.resume(co))
end

--- One thing at a time: git commands that change what every worktree of a repository shares
-- (worktree add and remove, refs) queue here, so that two never meet on git's own locks
-- (index.lock, packed-refs.lock). One coral run per project, so one queue per process suffices.
local Mutex = {}
Mutex.__index = Mutex

function M.mutex()
  return setmetatable({ held = false, waiting = {} }, Mutex)
end

--- Inside a coroutine: runs fn() holding the mutex, and returns what it returns.
function Mutex:with(fn)
  if self.held then
    self.waiting[#self.waiting + 1] = coroutine.running()
    coroutine.yield()
  end
  self.held = true
  local results = table.pack(pcall(fn))
  self.held = false
  local nxt = table.remove(self.waiting, 1)
  if nxt then assert(coroutine.resume(nxt)) end
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

return M
