--- coral's benchmark suite (`make bench`, through scripts/bench): coral against the tools users
-- would pick instead, on the same workloads (bench/workloads.lua), in the same run, for W = 2, 4, 8.
--
--   coral bench/bench.lua OUTDIR --measure PATH [--floor PATH] [--c-floor PATH] [--reps N] [--only a,b]
--
-- noop-100k (100,000 tasks at W=4, minutes) runs only with CORAL_BENCH_SCALE=1 or when --only
-- names it. CORAL_BENCH_BASE=path adds a run of another coral binary ("coral-base") to each
-- workload.
--
-- Every command is started through bench/measure.c, which reaps it with wait4: its wall time
-- (spawn to reap), its CPU (user + system, with its children) and its peak RSS (the largest of the
-- process and its reaped children: for coral running `true` tasks, coral's own). Runners are run
-- in turn within each repetition (paired A/B runs): a ratio is the median of the per-repetition
-- ratios, so a slow minute of the machine hits both sides. Prints a table per workload, then the
-- targets, and writes OUTDIR/results.json and OUTDIR/results.md.
local cjson = require "cjson"
local proc = require "coral.proc"
local uv = require "luv"
local workloads = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/workloads.lua")

local HERE = arg[0]:match("^(.*)/[^/]*$") or "."
local LUA_FLOOR = require("coral.fsutil").absolute(HERE .. "/lua-floor.lua")
local CORAL = uv.exepath()
local OUT = assert(arg[1], "usage: coral bench/bench.lua OUTDIR --measure PATH [--floor PATH] [--reps N] [--only a,b]")
local opts = { reps = 2 }
do
  local i = 2
  while arg[i] do
    if arg[i] == "--reps" then opts.reps = tonumber(arg[i + 1]); i = i + 2
    elseif arg[i] == "--only" then opts.only = arg[i + 1]; i = i + 2
    elseif arg[i] == "--floor" then opts.floor = arg[i + 1]; i = i + 2
    elseif arg[i] == "--c-floor" then opts.c_floor = arg[i + 1]; i = i + 2
    elseif arg[i] == "--measure" then opts.measure = arg[i + 1]; i = i + 2
    else error("bench: unknown argument " .. arg[i], 0) end
  end
end
local WS = { 2, 4, 8 }
local TMP = OUT .. "/tmp"

-- {{{ helpers

local function sh(cmd) assert(os.execute(cmd), cmd) end
local function exists(p) return uv.fs_stat(p) ~= nil end
local function which(name)
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    if exists(dir .. "/" .. name) and not dir:find("pyenv") then return dir .. "/" .. name end
  end
end
local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end
local function median(list)
  local t = {}
  for i, v in ipairs(list) do t[i] = v end
  table.sort(t)
  local n = #t
  if n == 0 then return nil end
  if n % 2 == 1 then return t[(n + 1) // 2] end
  return (t[n // 2] + t[n // 2 + 1]) / 2
end
local function fmt(v, f) return v and string.format(f or "%.3f", v) or "-" end
local function out(...) io.write(string.format(...)); io.flush() end

--- Runs argv to the end through the measure program (bench/measure.c); returns
-- { wall, cpu, rss_mb, code }: wall from spawn to reap, CPU and peak RSS from wait4.
local function measure(argv, o)
  o = o or {}
  local full = { opts.measure, "-o", o.stdout or "/dev/null" }
  for _, a in ipairs(argv) do full[#full + 1] = a end
  local p = assert(proc.spawn { argv = full, cwd = o.cwd, stdout = TMP .. "/measure.out",
                                stderr = TMP .. "/last.err" })
  local info = p:wait()
  p:close()
  local wall, cpu, rss, code = (read(TMP .. "/measure.out") or ""):match("^(%S+) (%S+) (%S+) (%S+)")
  code = tonumber(code) or info.code
  if info.code ~= 0 or code ~= 0 then
    io.stderr:write(string.format("bench: %s exited %d: %s\n", table.concat(argv, " "), code,
      (read(TMP .. "/last.err") or ""):sub(1, 400)))
  end
  return { wall = tonumber(wall) or info.duration, cpu = tonumber(cpu) or 0, rss_mb = (tonumber(rss) or 0) / 1024,
           code = code }
end

local function machine()
  local cpu = (read("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "?"
  local mem = tonumber((read("/proc/meminfo") or ""):match("MemTotal:%s*(%d+)")) or 0
  local p = io.popen("uname -srm"); local uname = p:read("l"); p:close()
  return { cpu = cpu, cpus = #uv.cpu_info(), mem_gb = math.floor(mem / 1048576 + 0.5), kernel = uname,
           date = os.date("!%Y-%m-%d %H:%M UTC") }
end

-- }}}
-- {{{ runners

local PY = which("python3")
local function peers_for(w, files, W, n)
  local dir = files.dir
  local r = {}
  local function add(name, argv, o) r[#r + 1] = { name = name, argv = argv, o = o } end
  local function coral(name, extra)
    -- default settings, as the goal is set: no --quiet, so the event lines a CI log gets go to
    -- a file (measure's stderr)
    local argv = { CORAL, files.recipe, "x", "--max-workers", tostring(W), "--dir", "PROJECT",
                   "--retries", "0" }
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    add(name, argv, { project = true })
  end
  if w.noop and opts.floor then add("floor", { opts.floor, tostring(n), tostring(W), "/bin/true" }) end
  coral("coral")
  -- Another coral binary on the same runs (CORAL_BENCH_BASE=path, e.g. a build of the commit
  -- before a change): coral/coral-base is then the change's gain, paired like every ratio.
  local base = os.getenv("CORAL_BENCH_BASE")
  if base and base ~= "" then
    coral("coral-base")
    r[#r].argv[1] = base
  end
  -- The same run with the project dir (so every record) on tmpfs: the gap to "coral" is what the
  -- file system charges for coral's per-task files.
  if w.noop and exists("/dev/shm") then
    local r0 = #r
    coral("coral-tmpfs")
    r[r0 + 1].o.project_root = "/dev/shm"
  end
  if w.name == "sleep-seed" or w.name == "sleep-random" then coral("coral-phased", { "--mode", "phased" }) end
  -- The least a Lua runner on coral's primitives does with the same per-task files and journal
  -- (bench/lua-floor.lua): between it and coral, coral's policy; below it, Lua and the files.
  if w.noop then
    add("lua-floor", { CORAL, LUA_FLOOR, files.json, tostring(W), "PROJECT" }, { project = true })
    -- the same without a task dir and files: between the two rows, what those cost
    add("lua-floor-nofiles", { CORAL, LUA_FLOOR, files.json, tostring(W), "PROJECT", "--no-files" }, { project = true })
  end
  -- The same records in C and nothing else (bench/c-floor.c): the least a runner keeping them
  -- does on this file system; with the task dir alone, and with neither dir nor files.
  if w.noop and opts.c_floor then
    add("c-floor", { opts.c_floor, files.tsv, tostring(W), "PROJECT" }, { project = true })
    add("c-floor-dir", { opts.c_floor, files.tsv, tostring(W), "PROJECT", "--dir-only" }, { project = true })
    add("c-floor-nofiles", { opts.c_floor, files.tsv, tostring(W), "PROJECT", "--no-files" }, { project = true })
  end
  if which("make") then add("make", { "make", "-s", "-f", files.make, "-j" .. W }, { cwd = dir }) end
  if which("ninja") then add("ninja", { "ninja", "-f", files.ninja, "-j", tostring(W), "--quiet" }, { cwd = dir }) end
  if w.independent then
    add("xargs", { "xargs", "-P", tostring(W), "-L", "1", "-a", files.list })
    if which("parallel") then
      add("parallel", { "parallel", "-j", tostring(W), "-a", files.list }, { once = true })
    end
  end
  if PY then
    add("py-dag", { PY, HERE .. "/pyrun.py", "dag", "-j", tostring(W), files.json })
    if w.phases > 1 then
      add("py-phased", { PY, HERE .. "/pyrun.py", "phased", "-j", tostring(W), files.json })
    end
  end
  return r
end

local finished_projects = {}
local projects_made = 0

local function run_one(peer)
  local argv, o = peer.argv, peer.o or {}
  local project
  if o.project then
    -- named by this suite's pid: the dirs an interrupted suite left under TMP are not this
    -- one's (removing them first would charge the next runs for it: see below)
    projects_made = projects_made + 1
    project = string.format("%s/coral-bench-project-%d-%d", o.project_root or TMP, uv.os_getpid(), projects_made)
    sh("mkdir -p " .. project)
    argv = {}
    for i, a in ipairs(peer.argv) do argv[i] = a == "PROJECT" and project or a end
  end
  if o.cwd then sh("rm -f " .. o.cwd .. "/.ninja_log " .. o.cwd .. "/.ninja_deps") end
  local m = measure(argv, { cwd = o.cwd, stdout = project and (TMP .. "/coral.out") or false })
  if project then
    m.records = exists(project .. "/.coral/runs") and true or false
    -- Kept until the suite ends: ext4 will not reuse an inode freed in the last few seconds and
    -- scans past them, so deleting 15,000 files just before the next run charged that run for
    -- the bench's own clean-up (seen in perf as recently_deleted under ext4_create).
    finished_projects[#finished_projects + 1] = project
  end
  return m
end

-- }}}

local results = { machine = machine(), reps = opts.reps, workloads = {} }
local targets = {}
local function target(name, value, limit, ok, note)
  targets[#targets + 1] = { name = name, value = value, limit = limit, ok = ok, note = note }
end

local function wanted(name) return not opts.only or ("," .. opts.only .. ","):find("," .. name .. ",", 1, true) end

-- {{{ process workloads

local function process_workload(w)
  local dir = TMP .. "/" .. w.name
  sh("mkdir -p " .. dir)
  local files = workloads.write(w, dir)
  files.dir = dir
  local n = #w.tasks
  local res = { name = w.name, tasks = n, by_w = {} }
  out("\n== %s: %d tasks, %d phases (coral: default settings, records kept; --retries 0) ==\n", w.name, n, w.phases)
  for _, W in ipairs(WS) do
    local lb = workloads.lower_bound(w, W)
    local peers = peers_for(w, files, W, n)
    local walls, cpus, rss, fails = {}, {}, {}, {}
    for _, p in ipairs(peers) do walls[p.name], cpus[p.name], rss[p.name] = {}, {}, {} end
    for rep = 1, opts.reps do
      for k = 0, #peers - 1 do                 -- rotate the order each repetition
        local p = peers[(k + rep - 1) % #peers + 1]
        if not (p.o and p.o.once and rep > 1) then
          local m = run_one(p)
          if m.code ~= 0 then fails[p.name] = true end
          walls[p.name][rep], cpus[p.name][#cpus[p.name] + 1], rss[p.name][#rss[p.name] + 1] = m.wall, m.cpu, m.rss_mb
        end
      end
    end
    local rows = {}
    local floor_wall = walls.floor and median(walls.floor)
    for _, p in ipairs(peers) do
      local list = {}
      for rep = 1, opts.reps do list[#list + 1] = walls[p.name][rep] end
      local ratios = {}
      for rep = 1, opts.reps do
        if walls[p.name][rep] and walls.coral[rep] then ratios[#ratios + 1] = walls.coral[rep] / walls[p.name][rep] end
      end
      local wall = median(list)
      rows[#rows + 1] = {
        runner = p.name, runs = #list, wall = wall, wall_min = math.min(table.unpack(list)), cpu = median(cpus[p.name]),
        rss_mb = math.max(table.unpack(rss[p.name])), ms_per_task = wall / n * 1000,
        overhead_ms = floor_wall and (wall - floor_wall) / n * 1000 or nil,
        coral_ratio = p.name ~= "coral" and median(ratios) or nil,
        over_lb = (not w.noop) and wall / lb or nil, failed = fails[p.name] or nil,
      }
    end
    res.by_w[tostring(W)] = { lower_bound = not w.noop and lb or nil, rows = rows }
    out("\nW=%d%s\n", W, w.noop and "" or string.format("   lower bound max(critical path, work/W) = %.3f s", lb))
    out("%-17s %4s %8s %8s %7s %7s %9s %9s %11s %8s\n", "runner", "runs", "wall s", "min s", "cpu s", "rss MB",
        "ms/task", "ovh ms", "coral/this", "wall/LB")
    for _, r in ipairs(rows) do
      out("%-17s %4d %8.3f %8.3f %7.2f %7.1f %9.3f %9s %11s %8s%s\n", r.runner, r.runs, r.wall, r.wall_min, r.cpu,
          r.rss_mb, r.ms_per_task, fmt(r.overhead_ms), fmt(r.coral_ratio), fmt(r.over_lb), r.failed and "  FAILED" or "")
    end
    -- Targets.
    local by = {}
    for _, r in ipairs(rows) do by[r.runner] = r end
    local c = by.coral
    if w.noop then
      -- beside each, what the C runner keeping the same records gets (c-floor), and without
      -- its files: whether the target is within reach of any runner that keeps them
      local function bound(peer)
        local f, nf = by["c-floor"], by["c-floor-nofiles"]
        if not (f and nf and by[peer]) then return nil end
        local function ratio(r) return r.wall / by[peer].wall end
        return string.format("c-floor %.2f, c-floor-dir %.2f, c-floor-nofiles %.2f", ratio(f),
          ratio(by["c-floor-dir"]), ratio(nf))
      end
      if by.make then
        target(string.format("%s W=%d: coral / make -j", w.name, W), by.make.coral_ratio, 0.95,
          by.make.coral_ratio <= 0.95, bound("make"))
      end
      if by.floor then
        target(string.format("%s W=%d: coral / spawn floor", w.name, W), by.floor.coral_ratio, 1.05,
          by.floor.coral_ratio <= 1.05, bound("floor"))
      end
      if w.name == "noop-fanout" then
        target(string.format("coral peak RSS, 5000-task plan, W=%d (MB)", W), c.rss_mb, 40, c.rss_mb < 40)
      end
    elseif w.name == "sleep-seed" then
      target(string.format("sleep-seed W=%d: coral makespan (s) <= 1.01 LB + 0.02", W), c.wall, lb * 1.01 + 0.02,
        c.wall <= lb * 1.01 + 0.02)
    else
      local best
      for _, r in ipairs(rows) do
        if not r.runner:match("^coral") and (not best or r.over_lb < best.over_lb) then best = r end
      end
      target(string.format("sleep-random W=%d: coral wall/LB <= best peer's (%s)", W, best.runner), c.over_lb,
        best.over_lb, c.over_lb <= best.over_lb)
    end
  end
  results.workloads[w.name] = res
end

-- }}}
-- {{{ dag-1m

local function dag_1m()
  out("\n== dag-1m: 1,000,000 tasks, 4,000,000 dependencies (coral.dag only, scripts/bench-dag.lua) ==\n")
  local script = HERE .. "/../scripts/bench-dag.lua"
  local rows = {}
  out("%-8s %4s %9s %9s %9s %9s %9s %9s %9s\n", "variant", "runs", "build s", "validate", "drain s",
      "engine s", "process s", "peak MB", "graph MB")
  for _, variant in ipairs { "index", "id" } do
    local totals, walls, peaks, last = {}, {}, {}, nil
    for _ = 1, math.max(1, opts.reps) do
      local m = measure({ CORAL, script, "1000000", variant }, { stdout = TMP .. "/dag.out" })
      local line = read(TMP .. "/dag.out") or ""
      last = {}
      for k, v in line:gmatch("([%w_]+)=([%d%.]+)") do last[k] = tonumber(v) end
      totals[#totals + 1], walls[#walls + 1], peaks[#peaks + 1] = last.total, m.wall, m.rss_mb
    end
    local r = { variant = variant, engine_s = median(totals), process_s = median(walls), peak_mb = math.max(table.unpack(peaks)),
                build = last.build, validate = last.validate, drain = last.drain, graph_mb = last.graph_rss / 1048576 }
    rows[#rows + 1] = r
    out("%-8s %4d %9.3f %9.3f %9.3f %9.3f %9.3f %9.1f %9.1f\n", variant, #totals, r.build, r.validate, r.drain,
        r.engine_s, r.process_s, r.peak_mb, r.graph_mb)
    target("dag-1m " .. variant .. ": engine time (s), build to drain", r.engine_s, 1.5, r.engine_s < 1.5,
      string.format("whole process %.2f s", r.process_s))
    target("dag-1m " .. variant .. ": peak RSS (MB)", r.peak_mb, 250, r.peak_mb < 250)
  end
  results.dag_1m = rows
end

-- }}}
-- {{{ noop-100k

-- The scale target: 100,000 independent `true` tasks at W=4, once, coral (records kept, default
-- settings) and the floor. Its ms/task is set against coral's on the 5,000-task noop-fanout at
-- W=4 (from this suite when it ran, else one run here). Opt-in, as it takes minutes:
-- CORAL_BENCH_SCALE=1, or `--only noop-100k`.
local function noop_100k()
  local n, W = 100000, 4
  out("\n== noop-100k: %d independent `true` tasks at W=%d (coral and the floor, once each) ==\n", n, W)
  local function coral_run(tasks)
    local dir = string.format("%s/noop-%d", TMP, tasks)
    sh("mkdir -p " .. dir)
    local files = workloads.write(workloads.noop_fanout(tasks), dir)
    return run_one { name = "coral", o = { project = true },
      argv = { CORAL, files.recipe, "x", "--max-workers", tostring(W), "--dir", "PROJECT", "--retries", "0" } }
  end
  local big = coral_run(n)
  local floor = opts.floor and run_one { name = "floor", argv = { opts.floor, tostring(n), tostring(W), "/bin/true" } }
  local fanout = results.workloads["noop-fanout"]
  local small_ms
  for _, r in ipairs(fanout and fanout.by_w[tostring(W)].rows or {}) do
    if r.runner == "coral" then small_ms = r.ms_per_task end
  end
  if not small_ms then small_ms = coral_run(5000).wall / 5000 * 1000 end
  local r = { tasks = n, workers = W, wall = big.wall, ms_per_task = big.wall / n * 1000, rss_mb = big.rss_mb,
              floor_ms_per_task = floor and floor.wall / n * 1000, ms_per_task_5000 = small_ms,
              failed = big.code ~= 0 or nil }
  r.ratio = r.ms_per_task / small_ms
  out("coral %.1f s, %.3f ms/task (5,000 tasks: %.3f ms/task, ratio %.2f), peak RSS %.1f MB%s%s\n", r.wall,
      r.ms_per_task, small_ms, r.ratio, r.rss_mb, floor and string.format("; floor %.3f ms/task", r.floor_ms_per_task) or "",
      r.failed and "  FAILED" or "")
  target("noop-100k W=4: coral ms/task / its 5,000-task ms/task", r.ratio, 1.10, r.ratio <= 1.10)
  target("noop-100k W=4: coral peak RSS (MB)", r.rss_mb, 200, r.rss_mb < 200)
  results.noop_100k = r
end

-- }}}
-- {{{ coord

local function coord_bench()
  out("\n== coord: 8 processes at once through coral.coord (locked appends; read-modify-write of the project state) ==\n")
  local N = 8
  local function batch(args_of)
    local procs = {}
    for i = 1, N do
      procs[i] = assert(proc.spawn { argv = args_of(i), stdout = TMP .. "/coord-" .. i .. ".out",
                                     stderr = TMP .. "/coord-" .. i .. ".err" })
    end
    local t0, t1, ok = math.huge, 0, true
    for i = 1, N do
      local info = procs[i]:wait()
      procs[i]:close()
      if info.code ~= 0 then ok = false; io.stderr:write(read(TMP .. "/coord-" .. i .. ".err") or "", "\n") end
      local a, b = (read(TMP .. "/coord-" .. i .. ".out") or ""):match("([%d%.]+) ([%d%.]+)")
      if a then t0, t1 = math.min(t0, tonumber(a)), math.max(t1, tonumber(b)) end
    end
    return ok, t1 - t0
  end
  local rows = {}
  out("%-34s %8s %9s %10s %8s\n", "case", "records", "seconds", "per sec", "lost")
  for _, case in ipairs {
    { name = "append, small (100 B)", count = 4000, sizes = "100" },
    { name = "append, mixed (40 B - 64 KiB)", count = 600, sizes = "40,100,300,1000,4000,100,200,65536,16000,100" },
  } do
    local path = TMP .. "/coord-append.txt"
    sh("rm -f " .. path .. " " .. path .. ".lock")
    local ok, secs = batch(function(i)
      return { CORAL, HERE .. "/coord-worker.lua", "append", path, tostring(case.count), tostring(i), case.sizes }
    end)
    -- Every record whole, once, in order per writer.
    local text = read(path) or ""
    local seen, bad, total = {}, 0, 0
    local pos = 1
    while pos <= #text do
      local w, seq, size, fill, stop = text:match("^<(%d+):(%d+):(%d+)|([a-z]*)>\n()", pos)
      if not w then bad = bad + 1; break end
      w, seq, size = tonumber(w), tonumber(seq), tonumber(size)
      -- the filler: as long as the writer made it, all of the writer's letter
      local want = math.max(0, size - #string.format("<%d:%%d:%d|", w, size) - 6)
      if #fill ~= want or fill:find("[^" .. string.char(string.byte("a") + w % 26) .. "]") then bad = bad + 1 end
      if seq ~= (seen[w] or 0) + 1 then bad = bad + 1 end
      seen[w] = seq
      total = total + 1
      pos = stop
    end
    local lost = N * case.count - total + bad
    local r = { case = case.name, records = total, seconds = secs, per_second = total / secs, lost_or_torn = lost, ok = ok }
    rows[#rows + 1] = r
    out("%-34s %8d %9.3f %10.0f %8d\n", case.name, total, secs, r.per_second, lost)
    if case.sizes == "100" then
      target("coord: small locked appends/s across 8 processes", r.per_second, 20000, r.per_second >= 20000 and lost == 0)
    end
    target("coord: " .. case.name .. ", lost or torn records", lost, 0, lost == 0 and ok)
  end
  do
    local count = 40
    local dir = TMP .. "/coord-state"
    sh("rm -rf " .. dir .. " && mkdir -p " .. dir .. "/.coral")
    local ok, secs = batch(function(i)
      return { CORAL, HERE .. "/coord-worker.lua", "update", dir, tostring(count), tostring(i) }
    end)
    local state = require("coral.records").read_state(dir .. "/.coral/project_state.yaml") or {}
    local got = state.bench and state.bench.count or 0
    local lost = N * count - got
    local r = { case = "update of project_state.yaml", records = got, seconds = secs, per_second = got / secs,
                lost_or_torn = lost, ok = ok }
    rows[#rows + 1] = r
    out("%-34s %8d %9.3f %10.0f %8d\n", r.case, got, secs, r.per_second, lost)
    target("coord: project state read-modify-writes lost", lost, 0, lost == 0 and ok,
      string.format("%.0f updates/s, each fsynced", r.per_second))
  end
  results.coord = rows
end

-- }}}
-- {{{ startup

local function startup()
  out("\n== startup ==\n")
  local proj = TMP .. "/startup"
  sh("mkdir -p " .. proj)
  -- A run of one `true` task, from exec to exit, every record kept: what a run costs besides its
  -- tasks (its records' fsyncs, the final report), which decides the short sleep workloads at
  -- high W; make running the same task is the reference.
  write(proj .. "/one.lua", 'local coral = require "coral"\n' ..
    'return coral.plan { coral.task("w", "one", { id = "one", cmd = { "true" } }) }\n')
  write(proj .. "/Makefile", "all:\n\ttrue\n")
  local rows = {}
  out("%-44s %5s %9s %9s %8s\n", "command", "runs", "median ms", "min ms", "rss MB")
  for _, c in ipairs {
    { name = "coral -e ''", argv = { CORAL, "-e", "" }, runs = 40, limit = 5 },
    { name = "coral run full_stack x --show-plan", argv = { CORAL, "run", "full_stack", "x", "--show-plan" }, runs = 20, limit = 20 },
    { name = "lua5.4 -e '' (reference)", argv = { which("lua5.4") or "lua5.4", "-e", "" }, runs = 40 },
    { name = "coral one.lua x (a run of one true task)", argv = { CORAL, "one.lua", "x", "--dir", proj }, runs = 20 },
    { name = "make -s (the same task, reference)", argv = { "make", "-s" }, runs = 20 },
  } do
    local walls, rss = {}, 0
    for i = 1, c.runs do
      local m = measure(c.argv, { cwd = proj })
      walls[i] = m.wall * 1000
      rss = math.max(rss, m.rss_mb)
    end
    local r = { command = c.name, runs = c.runs, median_ms = median(walls), min_ms = math.min(table.unpack(walls)), rss_mb = rss }
    rows[#rows + 1] = r
    out("%-44s %5d %9.2f %9.2f %8.1f\n", c.name, c.runs, r.median_ms, r.min_ms, rss)
    if c.limit then target("startup: " .. c.name .. " (ms)", r.median_ms, c.limit, r.median_ms < c.limit) end
  end
  results.startup = rows
end

-- }}}

sh("mkdir -p " .. TMP)
local m = results.machine
out("coral benchmark: %s, %d CPUs, %d GB, %s; %d repetitions; coral %s\n", m.cpu, m.cpus, m.mem_gb, m.kernel,
    opts.reps, CORAL)
local clock0 = uv.hrtime()
if wanted("noop-layered") then process_workload(workloads.noop_layered()) end
if wanted("noop-fanout") then process_workload(workloads.noop_fanout()) end
if (opts.only and wanted("noop-100k")) or os.getenv("CORAL_BENCH_SCALE") == "1" then noop_100k() end
if wanted("sleep-seed") then process_workload(workloads.sleep_seed()) end
if wanted("sleep-random") then process_workload(workloads.sleep_random()) end
if wanted("dag-1m") then dag_1m() end
if wanted("coord") then coord_bench() end
if wanted("startup") then startup() end

out("\n== targets ==\n")
local md = { "| target | measured | limit | met | beside it |", "|---|---|---|---|---|" }
for _, t in ipairs(targets) do
  out("%-66s %10s %10s  %s%s\n", t.name, fmt(t.value), fmt(t.limit), t.ok and "met" or "MISSED",
      t.note and ("  (" .. t.note .. ")") or "")
  md[#md + 1] = string.format("| %s | %s | %s | %s | %s |", t.name, fmt(t.value), fmt(t.limit),
    t.ok and "met" or "**missed**", t.note or "")
end
results.targets = targets
results.seconds = (uv.hrtime() - clock0) / 1e9
local f = assert(io.open(OUT .. "/results.json", "w"))
f:write(cjson.encode(results), "\n")
f:close()
f = assert(io.open(OUT .. "/results.md", "w"))
f:write(string.format("Machine: %s, %d CPUs, %d GB, %s; %s; %d repetitions, %.0f s.\n\n", m.cpu, m.cpus, m.mem_gb,
  m.kernel, m.date, opts.reps, results.seconds), table.concat(md, "\n"), "\n")
f:close()
for _, project in ipairs(finished_projects) do sh("rm -rf " .. project) end
sh("rm -rf " .. TMP)
out("\nbench: %.0f s; wrote %s/results.json and %s/results.md\n", results.seconds, OUT, OUT)
