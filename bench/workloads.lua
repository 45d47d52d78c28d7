--- The benchmark's workload generator: each workload is one description (tasks with a command,
-- dependencies, a phase and an expected duration), made from a fixed seed, and written out for
-- every runner that is compared: a coral recipe, a Makefile, a build.ninja, a command list for
-- xargs -P and GNU parallel (only where there are no dependencies) and a JSON file for the two
-- Python runners (bench/pyrun.py). Run by the coral binary (bench/bench.lua requires it).
local cjson = require "cjson"

local M = {}

-- A fixed LCG, so every machine and every run builds the same graphs.
local function rng(seed)
  local s = seed
  return function(n)                       -- an integer in [1, n]
    s = (s * 1103515245 + 12345) & 0x7fffffff
    return (s >> 8) % n + 1
  end
end

-- Sleep durations of the full_stack plan (seconds), chosen uneven so that the order matters:
-- longest-remaining-chain-first reaches the lower bound max(critical path, work / W) = 1.95 s at
-- W = 2, 4 and 8; first-come-first-served takes 2.2 s at W = 2 and a phase barrier 2.2 s.
M.SEED_DURATIONS = {
  ["project-architect"] = 0.5, ["technical-writer"] = 0.15, ["database-specialist"] = 0.25,
  ["api-designer"] = 0.45, ["ui-designer"] = 0.2, ["backend-developer"] = 0.2,
  ["frontend-developer"] = 0.7, ["full-stack-engineer"] = 0.1, ["qa-testing"] = 0.2,
  ["devops-deployment"] = 0.2,
}

local function sleep_argv(d) return { "sleep", string.format("%g", d) } end

--- noop-layered: n `true` tasks in `layers` layers, each task after the first layer depending on
-- two distinct tasks of the layer before.
function M.noop_layered(n, layers)
  n, layers = n or 2000, layers or 20
  local per, rand, tasks = n // layers, rng(7), {}
  for l = 1, layers do
    for i = 1, per do
      local deps = {}
      if l > 1 then
        local a = rand(per)
        local b = rand(per - 1)
        if b >= a then b = b + 1 end
        deps = { string.format("l%d_%d", l - 1, a), string.format("l%d_%d", l - 1, b) }
      end
      tasks[#tasks + 1] = { id = string.format("l%d_%d", l, i), argv = { "true" }, deps = deps, phase = l, dur = 0 }
    end
  end
  return { name = "noop-layered", tasks = tasks, phases = layers, noop = true }
end

--- noop-fanout: n independent `true` tasks.
function M.noop_fanout(n)
  local tasks = {}
  for i = 1, n or 5000 do tasks[i] = { id = "t" .. i, argv = { "true" }, deps = {}, phase = 1, dur = 0 } end
  return { name = "noop-fanout", tasks = tasks, phases = 1, noop = true, independent = true }
end

--- sleep-seed: the full_stack recipe's plan (its tasks, dependencies and phases), each task a
-- `sleep` of the uneven duration above; the coral recipe gives that duration as the estimate.
function M.sleep_seed()
  local plan = require("coral.recipes").plan("full_stack", "bench")
  local phase_of = plan:phase_of()
  local tasks = {}
  for _, t in ipairs(plan.tasks) do
    local d = assert(M.SEED_DURATIONS[t.id], t.id)
    tasks[#tasks + 1] = { id = t.id, argv = sleep_argv(d), deps = t.depends_on, phase = phase_of[t.id], dur = d }
  end
  return { name = "sleep-seed", tasks = tasks, phases = #plan:phases() }
end

--- sleep-random: n tasks in `layers` layers, each depending on 1-3 random tasks of any earlier
-- layer, sleeping 5-40 ms.
function M.sleep_random(n, layers)
  n, layers = n or 200, layers or 10
  local per, rand, tasks = n // layers, rng(42), {}
  for l = 1, layers do
    for i = 1, per do
      local deps, seen = {}, {}
      if l > 1 then
        for _ = 1, rand(3) do
          local dl = l - rand(math.min(l - 1, 3))
          local id = string.format("r%d_%d", dl, rand(per))
          if not seen[id] then seen[id] = true; deps[#deps + 1] = id end
        end
      end
      local d = (4 + rand(36)) / 1000
      tasks[#tasks + 1] = { id = string.format("r%d_%d", l, i), argv = sleep_argv(d), deps = deps, phase = l, dur = d }
    end
  end
  return { name = "sleep-random", tasks = tasks, phases = layers }
end

--- Lower bound of a workload's makespan at W workers: max(critical path, total work / W).
function M.lower_bound(w, W)
  local finish, total, cp = {}, 0, 0
  for _, t in ipairs(w.tasks) do            -- tasks are listed after their dependencies
    local start = 0
    for _, d in ipairs(t.deps) do start = math.max(start, (assert(finish[d], d))) end
    finish[t.id] = start + t.dur
    total = total + t.dur
    cp = math.max(cp, finish[t.id])
  end
  return math.max(cp, total / W), cp, total
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function lua_list(list)
  local out = {}
  for i, s in ipairs(list) do out[i] = string.format("%q", s) end
  return "{ " .. table.concat(out, ", ") .. " }"
end

local function shell_line(argv) return table.concat(argv, " ") end

-- The coral recipe: a list of phases, every task with its dependencies given explicitly (so the
-- phases only matter to --mode phased), the command as an argv (no shell) and, for sleeps, the
-- duration as the estimate.
local function recipe(w)
  local out = { "-- generated by bench/workloads.lua: " .. w.name,
    'local coral = require "coral"', "local t = coral.task", "local phases = {}",
    "for i = 1, " .. w.phases .. " do phases[i] = {} end",
    "local function add(p, id, cmd, deps, est) local ph = phases[p]; ph[#ph + 1] = " ..
      "t(\"w\", id, { id = id, cmd = cmd, depends_on = deps, estimate = est }) end" }
  for _, t in ipairs(w.tasks) do
    out[#out + 1] = string.format("add(%d, %q, %s, %s, %s)", t.phase, t.id, lua_list(t.argv), lua_list(t.deps),
      t.dur > 0 and string.format("%g", t.dur) or "nil")
  end
  out[#out + 1] = string.format("return coral.plan(phases, { name = %q })", w.name)
  return table.concat(out, "\n") .. "\n"
end

local function makefile(w)
  local ids = {}
  for i, t in ipairs(w.tasks) do ids[i] = t.id end
  local out = { "all: " .. table.concat(ids, " ") }
  for _, t in ipairs(w.tasks) do
    out[#out + 1] = t.id .. ": " .. table.concat(t.deps, " ") .. "\n\t@" .. shell_line(t.argv)
  end
  out[#out + 1] = ".PHONY: all " .. table.concat(ids, " ")
  return table.concat(out, "\n") .. "\n"
end

local function ninja(w)
  local out = { "rule run", "  command = $cmd", "" }
  local ids = {}
  for i, t in ipairs(w.tasks) do
    ids[i] = t.id
    out[#out + 1] = "build " .. t.id .. ": run" .. (#t.deps > 0 and (" | " .. table.concat(t.deps, " ")) or "")
    out[#out + 1] = "  cmd = " .. shell_line(t.argv)
  end
  out[#out + 1] = "build all: phony " .. table.concat(ids, " ")
  out[#out + 1] = "default all"
  return table.concat(out, "\n") .. "\n"
end

--- Writes the workload's files into `dir` and returns their paths.
function M.write(w, dir)
  local files = { recipe = dir .. "/recipe.lua", make = dir .. "/Makefile", ninja = dir .. "/build.ninja",
                  json = dir .. "/tasks.json", tsv = dir .. "/tasks.tsv" }
  write(files.recipe, recipe(w))
  write(files.make, makefile(w))
  write(files.ninja, ninja(w))
  local jt = {}
  for i, t in ipairs(w.tasks) do
    jt[i] = { id = t.id, argv = t.argv, deps = setmetatable(t.deps, cjson.empty_array_mt), phase = t.phase }
  end
  write(files.json, cjson.encode { name = w.name, tasks = jt })
  -- for bench/c-floor.c, which reads no JSON: id, dependencies, argv (no word has a space)
  local rows = {}
  for i, t in ipairs(w.tasks) do
    rows[i] = t.id .. "\t" .. table.concat(t.deps, " ") .. "\t" .. shell_line(t.argv)
  end
  write(files.tsv, table.concat(rows, "\n") .. "\n")
  if w.independent then
    files.list = dir .. "/tasks.txt"
    local lines = {}
    for i, t in ipairs(w.tasks) do lines[i] = shell_line(t.argv) end
    write(files.list, table.concat(lines, "\n") .. "\n")
  end
  return files
end

return M
