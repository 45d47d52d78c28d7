--- What one task costs coral, in measures the machine's load does not change: system calls
-- (strace) and instructions (valgrind's callgrind), each the difference between two runs of the
-- noop-fanout plan (N1 and N2 `true` tasks, default 1200 and 2000: both above the live report's
-- limit of 1000 tasks, as the bench's plans are) divided by N2 - N1, so that startup and the
-- run's end cancel out. Not part of `make test`; see docs/PERFORMANCE.md.
--
--   coral bench/pertask.lua OUTDIR [--n N1,N2] [--w W] [--tools strace,callgrind,chain] [--quiet] [-- EXTRA...]
--
-- System calls are split by who makes them: coral's own process (every thread), the spawned
-- child before its execve (glibc's posix_spawn setup), and the program itself (`true`, the same
-- as under the spawn floor). Instructions are coral's own process only (--trace-children=no).
-- coral runs as the bench runs it, with stderr to a file (the event lines of a CI log), unless
-- --quiet is given.
local uv = require "luv"
local workloads = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/workloads.lua")

local CORAL = uv.exepath()
local OUT = assert(arg[1], "usage: coral bench/pertask.lua OUTDIR [--n N1,N2] [--w W] [--tools LIST] [--quiet]")
local opts = { n = { 1200, 2000 }, w = 2, tools = "strace,callgrind", extra = {} }
do
  local i = 2
  while arg[i] do
    if arg[i] == "--n" then
      local a, b = arg[i + 1]:match("^(%d+),(%d+)$")
      opts.n = { tonumber(a), tonumber(b) }
      i = i + 2
    elseif arg[i] == "--w" then opts.w = tonumber(arg[i + 1]); i = i + 2
    elseif arg[i] == "--tools" then opts.tools = arg[i + 1]; i = i + 2
    elseif arg[i] == "--quiet" then opts.quiet = true; i = i + 1
    elseif arg[i] == "--" then
      for j = i + 1, #arg do opts.extra[#opts.extra + 1] = arg[j] end
      break
    else error("pertask: unknown argument " .. arg[i], 0) end
  end
end

local function sh(cmd) assert(os.execute(cmd), cmd) end
local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local read = require("coral.fsutil").read

sh("mkdir -p " .. quote(OUT))

-- The command line of a coral run of the n-task plan, project dir fresh.
local function coral_cmd(n, tag)
  local dir = string.format("%s/plan-%d", OUT, n)
  sh("mkdir -p " .. quote(dir))
  local files = workloads.write(workloads.noop_fanout(n), dir)
  local project = string.format("%s/project-%s-%d", OUT, tag, n)
  sh("rm -rf " .. quote(project) .. " && mkdir -p " .. quote(project))
  local argv = { CORAL, files.recipe, "x", "--max-workers", tostring(opts.w), "--dir", project, "--retries", "0" }
  if opts.quiet then argv[#argv + 1] = "--quiet" end
  for _, a in ipairs(opts.extra) do argv[#argv + 1] = a end
  local q = {}
  for i, a in ipairs(argv) do q[i] = quote(a) end
  return table.concat(q, " ") .. " >" .. quote(OUT .. "/coral.out") .. " 2>" .. quote(OUT .. "/coral.err")
end

-- {{{ strace

-- Counts the system calls of one strace -ff output file: {name = count} for the calls before the
-- first execve (and the execve itself) and after it.
local function count_file(path, before, after)
  local seen_exec = false
  for line in io.lines(path) do
    local name = line:match("^([%w_]+)%(") or line:match("^<%.%.%. ([%w_]+) resumed>")
    if name and not line:match("^<%.%.%.") then
      local into = seen_exec and after or before
      into[name] = (into[name] or 0) + 1
      if name == "execve" then seen_exec = true end
    end
  end
  return seen_exec
end

local function strace_run(n)
  local prefix = string.format("%s/strace-%d/s", OUT, n)
  sh("rm -rf " .. quote(OUT .. "/strace-" .. n) .. " && mkdir -p " .. quote(OUT .. "/strace-" .. n))
  -- strace runs coral; coral's pid is the one whose file starts with coral's execve
  sh("strace -qq -f -ff -o " .. quote(prefix) .. " " .. coral_cmd(n, "strace"))
  local groups = { coral = {}, child = {}, program = {} }
  local coral_pid
  for name in io.popen("ls " .. quote(OUT .. "/strace-" .. n)):lines() do
    local pid = tonumber(name:match("^s%.(%d+)$"))
    if pid and (not coral_pid or pid < coral_pid) then
      local first = io.open(OUT .. "/strace-" .. n .. "/" .. name):read("l") or ""
      if first:find(CORAL, 1, true) then coral_pid = pid end
    end
  end
  -- threads of coral (libuv's pool) share its pid's thread group: their files begin without an
  -- execve and never call one; children begin in coral's posix_spawn and execve the program
  for name in io.popen("ls " .. quote(OUT .. "/strace-" .. n)):lines() do
    local pid = tonumber(name:match("^s%.(%d+)$"))
    if pid then
      local path = OUT .. "/strace-" .. n .. "/" .. name
      if pid == coral_pid then
        local pre, post = {}, {}
        count_file(path, pre, post)
        for k, v in pairs(post) do groups.coral[k] = (groups.coral[k] or 0) + v end
      else
        local pre, post = {}, {}
        if count_file(path, pre, post) then
          for k, v in pairs(pre) do groups.child[k] = (groups.child[k] or 0) + v end
          for k, v in pairs(post) do groups.program[k] = (groups.program[k] or 0) + v end
        else
          for k, v in pairs(pre) do groups.coral[k] = (groups.coral[k] or 0) + v end
        end
      end
    end
  end
  sh("rm -rf " .. quote(OUT .. "/strace-" .. n))
  return groups
end

local function strace_report()
  local a, b = strace_run(opts.n[1]), strace_run(opts.n[2])
  local dn = opts.n[2] - opts.n[1]
  print(string.format("system calls per task (strace -f, (N=%d - N=%d) / %d, W=%d):", opts.n[2], opts.n[1], dn, opts.w))
  for _, g in ipairs { "coral", "child", "program" } do
    local names, total = {}, 0
    for k in pairs(b[g]) do names[#names + 1] = k end
    for k in pairs(a[g]) do if not b[g][k] then names[#names + 1] = k end end
    local rows = {}
    for _, k in ipairs(names) do
      local per = ((b[g][k] or 0) - (a[g][k] or 0)) / dn
      total = total + per
      if math.abs(per) >= 0.05 then rows[#rows + 1] = { k, per } end
    end
    table.sort(rows, function(x, y) return x[2] > y[2] end)
    local parts = {}
    for _, r in ipairs(rows) do parts[#parts + 1] = string.format("%s %.2f", r[1], r[2]) end
    print(string.format("  %-8s %6.2f: %s", g, total, table.concat(parts, ", ")))
  end
end

-- }}}
-- {{{ callgrind

local function callgrind_run(n)
  local file = string.format("%s/callgrind-%d.out", OUT, n)
  sh("valgrind -q --tool=callgrind --trace-children=no --callgrind-out-file=" .. quote(file) .. " " ..
     coral_cmd(n, "callgrind"))
  local text = read(file) or ""
  local total = tonumber(text:match("\nsummary: (%d+)") or text:match("\ntotals: (%d+)"))
  return assert(total, "no total in " .. file), file
end

local function callgrind_report()
  local a = callgrind_run(opts.n[1])
  local b, file = callgrind_run(opts.n[2])
  local dn = opts.n[2] - opts.n[1]
  print(string.format("instructions per task (callgrind, coral alone, (N=%d - N=%d) / %d, W=%d): %.0f",
    opts.n[2], opts.n[1], dn, opts.w, (b - a) / dn))
  print(string.format("  N=%d: %.1fM, N=%d: %.1fM; profile: callgrind_annotate %s", opts.n[1], a / 1e6, opts.n[2],
    b / 1e6, file))
end

-- The instructions from a child's exit to the next spawn, alone: callgrind collecting only
-- inside coral.proc's exit handling (proc_check_done: the Lua of the ended attempt, its records,
-- the release and the next start all run in it), divided by the tasks. Nothing that runs on a
-- timer is counted (the batched flushes, the project state, the live report), so the figure
-- repeats to a few hundred instructions whatever the machine's load, unlike the totals above,
-- in which a slower run (valgrind on a busy machine) fires those timers more often a task.
local function chain_report()
  local n = opts.n[2]
  local file = string.format("%s/chain-%d.out", OUT, n)
  sh("valgrind -q --tool=callgrind --trace-children=no --toggle-collect=proc_check_done --callgrind-out-file=" ..
     quote(file) .. " " .. coral_cmd(n, "chain"))
  local text = read(file) or ""
  local total = assert(tonumber(text:match("\nsummary: (%d+)") or text:match("\ntotals: (%d+)")), "no total in " .. file)
  print(string.format("instructions per task from an exit to the next start (callgrind inside proc_check_done, N=%d, W=%d): %.0f",
    n, opts.w, total / n))
end

-- }}}

if opts.tools:find("strace", 1, true) then strace_report() end
if opts.tools:find("callgrind", 1, true) then callgrind_report() end
if opts.tools:find("chain", 1, true) then chain_report() end
