--- Resource exhaustion is back-pressure, not failure. A task whose process cannot start for
-- want of something that frees up (file descriptors: EMFILE, ENFILE; processes or memory:
-- EAGAIN, ENOMEM) waits, keeping its worker slot, and starts when another task of the run ends
-- or, for a shortage outside the run, after a short delay. It is not an attempt that failed:
-- its attempt starts when its process does. One line says why, the first time a task of the run
-- waits for each kind of shortage.
--
-- A waiting task fails only when waiting cannot help: nothing else of the run is running, and
-- either the shortage is the run's own (EMFILE: coral's descriptor limit) or it lasted
-- GIVE_UP seconds.
local uv = require "luv"

local M = {}

local SHORT = { EMFILE = true, ENFILE = true, EAGAIN = true, ENOMEM = true }
local FIRST_DELAY, MAX_DELAY = 0.1, 2   -- seconds between tries while nothing else ends
local GIVE_UP = 60

--- Whether a start that failed with `code` (a libuv error name) should wait instead.
function M.short(code)
  return SHORT[code] == true
end

local function waits(run)
  run.resource_waits = run.resource_waits or {}
  return run.resource_waits
end

--- The run's tasks that wait for a resource (they count among run.running).
function M.waiting(run)
  return run.resource_waits and #run.resource_waits or 0
end

local function remove(run, w)
  local list = waits(run)
  for i = #list, 1, -1 do
    if list[i] == w then table.remove(list, i) end
  end
  if #list == 0 and run.resource_timer then
    run.resource_timer:close()
    run.resource_timer = nil
  end
end

local retry

local function arm(run, delay)
  if not run.resource_timer then run.resource_timer = uv.new_timer() end
  run.resource_delay = delay
  run.resource_timer:start(math.floor(delay * 1000), 0, function()
    if run.aborted then
      run.resource_timer:close()
      run.resource_timer = nil
      return
    end
    run.resource_delay = math.min(delay * 2, MAX_DELAY)
    retry(run)
  end)
end

-- Nothing else of the run runs: no task will end to free what is short.
local function alone(run)
  return run.running <= #waits(run)
end

-- Waiting cannot help: the run is alone, and the shortage is coral's own limit or has lasted
-- too long.
local function hopeless(run, w)
  return alone(run) and (w.code == "EMFILE" or uv.hrtime() - w.since > GIVE_UP * 1e9)
end

-- Tries the waiting starts in order; the first that is still short keeps its place and those
-- behind it wait on.
retry = function(run)
  if run.resource_retrying then run.resource_again = true; return end
  run.resource_retrying = true
  repeat
    run.resource_again = false
    local list = waits(run)
    while #list > 0 and not run.stopping do
      local w = list[1]
      local ok, err, code = w.launch(true)
      if ok then
        remove(run, w)
        run.resource_delay = nil
      else
        if M.short(code) then w.code = code end
        if M.short(code) and not hopeless(run, w) then break end
        if M.short(code) then
          err = err .. "; nothing else of the run is running to free it" ..
            (code == "EMFILE" and " (raise ulimit -n)" or "")
        end
        remove(run, w)
        w.st.handle = nil
        w.give_up(err, code)
      end
    end
  until not run.resource_again
  run.resource_retrying = false
  if #waits(run) > 0 then arm(run, run.resource_delay or FIRST_DELAY) end
end

--- A task's process could not start for want of a resource (`err`, `code` from the executor):
-- it waits. `launch(again)` tries again: true once started, else nil, err, code;
-- `give_up(err, code)` ends the attempt as failed; `cancel()` ends it as the run's stop or a
-- failed dependency wants (st.cancelled says why). Each is called from the loop.
function M.wait(run, st, err, code, launch, give_up, cancel)
  local list = waits(run)
  local w = { st = st, code = code, launch = launch, give_up = give_up, since = uv.hrtime() }
  -- Something to cancel while it waits: Run:stop, Run:skip and Run:abort call st.handle:cancel().
  st.handle = {
    waiting = true,
    cancel = function()
      remove(run, w)
      st.handle = nil
      local timer = uv.new_timer()
      timer:start(0, 0, function()
        timer:close()
        if not run.aborted then cancel() end
      end)
    end,
  }
  list[#list + 1] = w
  run.resource_announced = run.resource_announced or {}
  if not run.resource_announced[code] then
    run.resource_announced[code] = true
    run:emit("wait", { task_id = st.task.id, code = code, reason = string.format(
      "%s waits to start: %s; tasks wait for this, instead of failing, until running ones end%s", st.task.id, err,
      code == "EMFILE" and "" or " or it passes") })
  end
  if hopeless(run, w) then
    retry(run)   -- gives up, in order, unless one starts after all
  elseif not run.resource_timer then
    arm(run, FIRST_DELAY)
  end
end

--- A task of the run ended: what it held is free, the waiting ones try again.
function M.ended(run)
  if M.waiting(run) > 0 then
    run.resource_delay = nil
    retry(run)
  end
end

return M
