-- Benchmark of coral.dag at scale: build, validate, phases, critical path and a full drain of a
-- random graph with N tasks and 4 dependencies each (one million and four million by default).
--
--   build/coral scripts/bench-dag.lua [N]            every variant, each in its own process
--   build/coral scripts/bench-dag.lua N VARIANT      one variant, one result line
--
-- Variants (docs/dag.md says what each measures):
--   index    deps given as task indices, drain with ready(nil, "index") and done(index)
--   id       deps given as id strings declared earlier, drain with ids
--   forward  tasks declared from tN down to t1, so every dependency names a task declared
--            later (kept as a name until validate(), then Kahn's algorithm instead of a sweep)
--   half     as index with 2 dependencies per task: with index, gives bytes per task and per edge
--
-- The graph: task i depends on 4 tasks drawn from the 10000 before it (a fixed LCG, so every
-- run builds the same graph). Ids are "t1".."tN", made before the clock starts: the time to
-- make a million Lua strings is reported apart ("ids"). "gen" is the same loop as "build"
-- without the add() calls, so build - gen is the cost of the graph itself.
local uv = require "luv"
local dag = require "coral.dag"

local DEPS, WINDOW = 4, 10000

local function now() return uv.hrtime() / 1e9 end

local function status(field)
  local f = assert(io.open("/proc/self/status"))
  local text = f:read("a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+) kB")) * 1024
end

-- Calls add(i, d, k) for every task with its dependency list d (k entries, reused table);
-- `reverse` declares them from n down to 1.
local function generate(n, deps, add, reverse)
  local d, seed = {}, 12345
  local first, last, step = 1, n, 1
  if reverse then first, last, step = n, 1, -1 end
  for i = first, last, step do
    local k = 0
    if i > 1 and deps > 0 then
      local span = i - 1 < WINDOW and i - 1 or WINDOW
      for _ = 1, deps do
        seed = (seed * 1103515245 + 12345) & 0x7fffffff
        k = k + 1
        d[k] = i - 1 - seed % span
      end
    end
    add(i, d, k)
  end
end

local function run_variant(n, variant)
  collectgarbage("collect")
  local t = {}
  local t0 = now()
  local ids = {}
  local format = string.format
  for i = 1, n do ids[i] = format("t%d", i) end  -- ("t" .. i would make a garbage string each)
  t.ids = now() - t0

  local deps = variant == "half" and 2 or DEPS
  t0 = now()
  generate(n, deps, function() end)
  t.gen = now() - t0

  collectgarbage("collect")
  local rss0 = status("VmRSS")
  local g = dag.new()
  local edges = 0
  t0 = now()
  if variant == "id" then
    local sd = {}
    generate(n, deps, function(i, d, k)
      for j = 1, k do sd[j] = ids[d[j]] end
      for j = k + 1, #sd do sd[j] = nil end
      edges = edges + k
      g:add(ids[i], sd)
    end)
  elseif variant == "forward" then
    local sd = {}
    generate(n, deps, function(i, d, k)
      for j = 1, k do sd[j] = ids[d[j]] end
      for j = k + 1, #sd do sd[j] = nil end
      edges = edges + k
      g:add(ids[i], sd)
    end, true)
  else
    local add = g.add
    generate(n, deps, function(i, d, k)
      for j = k + 1, DEPS do d[j] = nil end
      edges = edges + k
      add(g, ids[i], d)
    end)
  end
  local t1 = now()
  assert(g:validate())
  local t2 = now()
  local phases = g:phases()
  local t3 = now()
  local path, length = g:critical_path()
  local t4 = now()
  local rss1 = status("VmRSS")
  local drained = 0
  if variant == "id" or variant == "forward" then
    while true do
      local batch = g:ready()
      if #batch == 0 then break end
      for i = 1, #batch do g:done(batch[i], true) end
      drained = drained + #batch
    end
  else
    while true do
      local batch = g:ready(nil, "index")
      if #batch == 0 then break end
      for i = 1, #batch do g:done(batch[i], true) end
      drained = drained + #batch
    end
  end
  local t5 = now()
  assert(drained == n and g:counts().done == n)
  t.build, t.validate, t.phases, t.critical, t.drain = t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4
  t.total = t5 - t0
  return string.format(
    "%-8s tasks=%d edges=%d phases=%d path=%d/%g ids=%.3f gen=%.3f build=%.3f validate=%.3f " ..
    "phases=%.3f critical=%.3f drain=%.3f total=%.3f graph_rss=%d peak_rss=%d",
    variant, n, edges, #phases, #path, length, t.ids, t.gen, t.build, t.validate, t.phases,
    t.critical, t.drain, t.total, rss1 - rss0, status("VmHWM"))
end

local function parse(line)
  local r = { variant = line:match("^(%S+)") }
  for k, v in line:gmatch("([%w_]+)=([%d%.]+)") do r[k] = tonumber(v) end
  return r
end

local function run_child(n, variant)
  local out, result = {}, nil
  local stdout = uv.new_pipe()
  local handle
  handle = uv.spawn(uv.exepath(), { args = { arg[0], tostring(n), variant }, stdio = { nil, stdout, 2 } },
    function(code) result = code; handle:close() end)
  stdout:read_start(function(err, chunk)
    assert(not err, err)
    if chunk then out[#out + 1] = chunk else stdout:close() end
  end)
  while result == nil or not stdout:is_closing() do uv.run("once") end
  assert(result == 0, variant .. " failed")
  return table.concat(out)
end

local n = tonumber(arg[1]) or 1000000
if arg[2] then
  print(run_variant(n, arg[2]))
  return
end

local results = {}
for _, variant in ipairs { "index", "id", "forward", "half" } do
  local line = run_child(n, variant)
  io.write(line)
  results[variant] = parse(line)
end
local MB = 1024 * 1024
print()
print(string.format("%-8s %8s %8s %8s %8s %8s %8s %8s %9s", "variant", "build", "validate", "phases",
  "critical", "drain", "total", "peak MB", "graph MB"))
for _, variant in ipairs { "index", "id", "forward", "half" } do
  local r = results[variant]
  print(string.format("%-8s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.1f %9.1f", variant, r.build, r.validate,
    r.phases, r.critical, r.drain, r.total, r.peak_rss / MB, r.graph_rss / MB))
end
local per_edge = (results.index.graph_rss - results.half.graph_rss) / (results.index.edges - results.half.edges)
local per_node = (results.index.graph_rss - per_edge * results.index.edges) / n
print(string.format("graph memory (RSS growth from dag.new() to after critical_path(), the phases list " ..
  "included): %.0f bytes per task, " ..
  "%.1f bytes per dependency", per_node, per_edge))
print(string.format("id strings: %.3f s to make (not in total); gen (LCG loop without add): %.3f s (in build)",
  results.index.ids, results.index.gen))
