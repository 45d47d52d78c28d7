--- One process of the coord workload, run by the coral binary (bench/bench.lua starts 8 at once).
--   coral bench/coord-worker.lua append PATH COUNT WORKER SIZES   COUNT locked appends to PATH
--   coral bench/coord-worker.lua update DIR COUNT WORKER          COUNT read-modify-writes of DIR's
--                                                                 project state, as the runner does
-- SIZES is a comma list of record sizes in bytes, used in turn. Every record is
-- "<worker:seq:size|" .. filler .. ">\n", so the reader can tell a lost, torn or doubled one.
-- Prints "start end" (epoch seconds) of the loop.
local coord = require "coral.coord"
local records = require "coral.records"
local uv = require "luv"

local function now()
  local s, us = uv.gettimeofday()
  return s + us / 1e6
end

local mode, path, count, worker = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
local t0, t1
if mode == "append" then
  local sizes = {}
  for s in arg[5]:gmatch("%d+") do sizes[#sizes + 1] = tonumber(s) end
  local fill = string.char(string.byte("a") + worker % 26)
  local recs = {}
  for i = 1, #sizes do
    local head = string.format("<%d:%%d:%d|", worker, sizes[i])
    recs[i] = { head = head, body = fill:rep(math.max(0, sizes[i] - #head - 6)) .. ">\n" }
  end
  t0 = now()
  for seq = 1, count do
    local r = recs[(seq - 1) % #recs + 1]
    assert(coord.append(path, r.head:format(seq) .. r.body))
  end
  t1 = now()
else
  local rec = setmetatable({ paths = records.paths(path) }, records.Records)
  t0 = now()
  for seq = 1, count do
    assert(rec:update_state(function(state)
      state.bench = state.bench or {}
      state.bench.count = (state.bench.count or 0) + 1
      state.agents = state.agents or {}
      local a = state.agents["worker-" .. worker] or { history = {} }
      state.agents["worker-" .. worker] = a
      a.history[#a.history + 1] = { task = "bench update", status = "succeeded", duration = seq / 1000 }
      while #a.history > 50 do table.remove(a.history, 1) end
      a.last_seq = seq
    end))
  end
  t1 = now()
end
print(string.format("%.6f %.6f", t0, t1))
