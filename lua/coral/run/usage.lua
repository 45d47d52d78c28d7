--- Live usage of a running attempt: what its driver's watch reports while the agent streams
-- (coral.drivers: watch, ctx.on_usage). The last report is kept on the attempt (a.live, which
-- the live view reads) and journalled as a `usage` event { task, attempt, usage, cost_usd }: at
-- most once a second per attempt, and the one held back, if any, when the attempt ends (flush,
-- before its end event). The attempt's result stays the authority for its usage and cost.
local uv = require "luv"

local M = {}

--- Seconds between two `usage` events of one attempt.
M.INTERVAL = 1

local function emit(run, st, a, live)
  live.at, live.pending = uv.hrtime() / 1e9, nil
  run:emit("usage", { task = st.task.id, attempt = a.n, usage = live.usage, cost_usd = live.cost_usd })
end

local function stop_timer(live)
  if live.timer then
    if not live.timer:is_closing() then live.timer:close() end
    live.timer = nil
  end
end

--- Attempt `a` of `st`'s task has used `usage` (totals so far in the attempt: input_tokens,
-- output_tokens, cache_*...) and `cost_usd` (nil when the CLI does not say it yet: the last
-- cost known stays). A report within a second of the last one waits for the rest of that
-- second (the latest then goes), so the journal is never more than a second behind.
function M.report(run, st, a, usage, cost_usd)
  local live = a.live or {}
  a.live = live
  live.usage, live.cost_usd = usage, cost_usd or live.cost_usd
  local since = live.at and uv.hrtime() / 1e9 - live.at
  if not since or since >= M.INTERVAL then return emit(run, st, a, live) end
  live.pending = true
  if live.timer then return end
  live.timer = uv.new_timer()
  live.timer:unref()   -- a run that is done does not wait for it
  live.timer:start(math.max(1, math.ceil((M.INTERVAL - since) * 1000)), 0, function()
    stop_timer(live)
    if live.pending and not live.ended and not run.aborted then emit(run, st, a, live) end
  end)
end

--- The attempt has ended: the report held back, if any, goes to the journal now.
function M.flush(run, st, a)
  local live = a.live
  if not live then return end
  stop_timer(live)
  live.ended = true
  if live.pending then emit(run, st, a, live) end
end

--- The spend of `st`'s task so far: its ended attempts' usage and cost plus its running one's
-- live report. Returns tokens (input + output, or nil when none is known) and cost (or nil).
function M.spent(st)
  local tokens, cost
  for _, a in ipairs(st.attempts) do
    local usage, c = a.usage, a.cost_usd
    if not a.outcome and a.live then usage, c = a.live.usage, a.live.cost_usd end
    if type(usage) == "table" then
      tokens = (tokens or 0) + (usage.input_tokens or 0) + (usage.output_tokens or 0)
    end
    if c then cost = (cost or 0) + c end
  end
  return tokens, cost
end

return M
