--- Work that runs on the event loop in slices: a job (a function) runs in a coroutine, and at
-- its pause points (slice.point(), in its loops) gives the loop back once it has run SLICE_MS,
-- and goes on at the loop's next turn. So a view that takes tens of milliseconds to draw (the
-- live report) does not hold up the run's work: a task that ends meanwhile is recorded and its
-- successor started between two slices. Outside a job, or in a coroutine that is not the job's,
-- a pause point does nothing: `coral report` draws the same page in one go.
local uv = require "luv"

local M = {}

--- How long a slice runs before its job gives the loop back (milliseconds).
M.SLICE_MS = 2

-- The points between two looks at the clock: a point is cheap, a clock read less so.
local POINTS_PER_LOOK = 16

local running, deadline, points = nil, 0, 0   -- the job's coroutine during its slice

--- A place where the job running now may give the loop back.
function M.point()
  if running == nil then return end
  points = points + 1
  if points < POINTS_PER_LOOK then return end
  points = 0
  if coroutine.running() == running and uv.hrtime() >= deadline then coroutine.yield() end
end

local Job = {}
Job.__index = Job

local function stop_idle(job)
  if job.idle and not job.idle:is_closing() then job.idle:close() end
  job.idle = nil
end

--- Stops a job that has not ended: it is not resumed again, and its `done` is not called.
-- Idempotent.
function Job:cancel()
  self.cancelled = true
  stop_idle(self)
end

--- Runs `fn` in slices, the first now. `done(job, ok, ...)` gets what it returned (ok true) or
-- the error it raised (ok false); the job's `spent` is then the time its slices took (seconds).
-- The loop goes round without waiting while a job has slices to run (an idle handle), and a
-- job never keeps it alive by itself.
function M.run(fn, done)
  local job = setmetatable({ co = coroutine.create(fn), spent = 0 }, Job)
  local function step()
    if job.cancelled then return end
    local started = uv.hrtime()
    running, deadline, points = job.co, started + M.SLICE_MS * 1e6, 0
    local result = table.pack(coroutine.resume(job.co))
    running = nil
    job.spent = job.spent + (uv.hrtime() - started) / 1e9
    if coroutine.status(job.co) ~= "dead" then
      if not job.idle then
        job.idle = uv.new_idle()
        job.idle:unref()
        job.idle:start(step)
      end
      return
    end
    stop_idle(job)
    job.ended = true
    done(job, table.unpack(result, 1, result.n))
  end
  step()
  return job
end

return M
