-- coral.slice: work run on the loop in slices, which gives the loop back at its pause points
-- (the live report draws its page so, between the run's task ends).
require("spec.helper").guard(_ENV)
local uv = require "luv"

local slice = require "coral.slice"

-- Busy for `ms` milliseconds, with a pause point in the loop.
local function busy(ms)
  local deadline = uv.hrtime() + ms * 1e6
  local rounds = 0
  while uv.hrtime() < deadline do
    rounds = rounds + 1
    slice.point()
  end
  return rounds
end

-- Runs the loop until `cond()`: a job never keeps the loop alive by itself, a ticking timer does.
local function run_until(cond)
  local tick = uv.new_timer()
  tick:start(1, 1, function() end)
  while not cond() do uv.run("once") end
  tick:close()
end

describe("coral.slice", function()
  it("runs a job between the loop's other work, and hands its result to done", function()
    -- a timer due in 5 ms fires while a 60 ms job runs, not after it
    local fired_at, ended_at, result
    local timer = uv.new_timer()
    timer:start(5, 0, function() fired_at = uv.hrtime() end)
    local job = slice.run(function() return "drawn", busy(60) end, function(job, ok, text, rounds)
      ended_at = uv.hrtime()
      result = { ok = ok, text = text, rounds = rounds, spent = job.spent }
    end)
    assert.is_false(job.ended or false)
    run_until(function() return result end)
    timer:close()
    assert.truthy(fired_at)
    assert.is_true(fired_at < ended_at, "the timer waited for the job")
    assert.is_true(result.ok)
    assert.are.equal("drawn", result.text)
    assert.is_true(result.rounds > 0)
    assert.is_true(result.spent >= 0.055, tostring(result.spent))
    assert.is_true(job.ended)
  end)

  it("gives done the error a job raised", function()
    local got
    slice.run(function() busy(5); error("no room", 0) end, function(_, ok, err) got = { ok, err } end)
    run_until(function() return got end)
    assert.are.same({ false, "no room" }, got)
  end)

  it("ends a short job at once, in its first slice", function()
    local got
    local job = slice.run(function() return 42 end, function(_, ok, v) got = { ok, v } end)
    assert.are.same({ true, 42 }, got)
    assert.is_true(job.ended)
  end)

  it("does not resume a cancelled job, nor call its done", function()
    local called, after = false, 0
    local job = slice.run(function() busy(30); after = after + 1 end, function() called = true end)
    job:cancel()
    job:cancel()   -- (idempotent)
    local t0 = uv.hrtime()
    run_until(function() return uv.hrtime() - t0 > 50e6 end)
    assert.is_false(called)
    assert.are.equal(0, after)
  end)

  it("pauses nothing outside a job: a point in plain code or another coroutine goes on", function()
    assert.is_true(busy(3) > 0)
    local co = coroutine.create(function() return busy(3) end)
    local ok, rounds = coroutine.resume(co)
    assert.is_true(ok)
    assert.are.equal("dead", coroutine.status(co))
    assert.is_true(rounds > 0)
  end)
end)
