-- coral.records.journal: the one reader of a run's journal. Journals are written by hand here
-- (JSON lines with exact times), so every replayed state, time and outcome is checkable.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"

local journal = require "coral.records.journal"

-- A run dir holding `events` as a journal, plus `tail` (raw text) after the last line.
local function write_journal(events, tail)
  local dir = H.tmpdir()
  local lines = {}
  for _, e in ipairs(events) do lines[#lines + 1] = cjson.encode(e) .. "\n" end
  H.write_file(dir .. "/journal.jsonl", table.concat(lines) .. (tail or ""))
  return dir
end

-- The attempts of a task as comparable rows.
local function attempts(run, id)
  local out = {}
  for _, a in ipairs(run.tasks[id].attempts) do
    out[#out + 1] = { n = a.n, start = a.start, finish = a.finish, duration = a.duration, outcome = a.outcome,
                      open = a.open }
  end
  return out
end

-- Runs fn() with io.stderr replaced; returns what was written to it.
local function stderr_of(fn)
  local real, written = io.stderr, {}
  io.stderr = { write = function(self, ...) -- luacheck: ignore 122
    for _, v in ipairs { ... } do written[#written + 1] = v end
    return self
  end }
  local ok, err = pcall(fn)
  io.stderr = real -- luacheck: ignore 122
  assert(ok, err)
  return table.concat(written)
end

describe("journal.read", function()
  it("gives no events for a run dir without a journal", function()
    assert.are.same({}, journal.read(H.tmpdir()))
    assert.are.same({}, journal.read(H.tmpdir() .. "/missing"))
  end)

  it("reads the integer fields back as integers and leaves times and durations alone", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/journal.jsonl", table.concat({
      '{"event":"run","t":100,"tasks":3,"max_workers":4,"mode":"dependency"}',
      '{"event":"start","t":100.25,"task":"a","attempt":1,"pid":4242,"pgid":4242}',
      '{"event":"end","t":101.5,"task":"a","attempt":1,"exit":0,"signal":15,"duration":1.25,"outcome":"failed"}',
      '{"event":"end","t":102,"task":"b","attempt":2.5,"exit":1.5}',
    }, "\n") .. "\n")
    local events = journal.read(dir)
    assert.are.equal(4, #events)
    local run, start, e = events[1], events[2], events[3]
    assert.are.equal("integer", math.type(run.tasks))
    assert.are.equal("integer", math.type(run.max_workers))
    assert.are.equal(3, run.tasks)
    for _, k in ipairs { "attempt", "pid", "pgid" } do assert.are.equal("integer", math.type(start[k]), k) end
    assert.are.equal(4242, start.pid)
    for _, k in ipairs { "attempt", "exit", "signal" } do assert.are.equal("integer", math.type(e[k]), k) end
    assert.are.equal(15, e.signal)
    -- not integer fields: as JSON gave them
    assert.are.equal("float", math.type(run.t))
    assert.are.equal(100.25, start.t)
    assert.are.equal(1.25, e.duration)
    -- a number with a fraction stays as it is
    assert.are.equal(2.5, events[4].attempt)
    assert.are.equal(1.5, events[4].exit)
  end)

  it("ignores a last line cut short by a crash, and lines that are not events", function()
    local dir = write_journal({
      { event = "run", t = 100, tasks = 1 },
      { event = "start", t = 101, task = "a", attempt = 1 },
    }, '[]\n"text"\n\n{"t":102}\n{"event":"end"}\n{"event":7,"t":103}\n{"event":"end","t":"late"}\n' ..
       '{"event":"end","t":104,"task":"a","attempt":1,"outc')
    local events
    local warnings = stderr_of(function() events = journal.read(dir) end)
    assert.are.equal(2, #events)
    assert.are.equal("run", events[1].event)
    assert.are.equal("start", events[2].event)
    -- each skipped line is named, once (the blank line is no record, and no harm either)
    local path = dir .. "/journal.jsonl"
    local want = {}
    for _, n in ipairs { 3, 4, 6, 7, 8, 9 } do
      want[#want + 1] = string.format("coral: warning: %s:%d: not a journal record; skipped\n", path, n)
    end
    want[#want + 1] = string.format("coral: warning: %s:10: the last record was cut short " ..
      "(coral stopped while writing it); skipped\n", path)
    assert.are.equal(table.concat(want), warnings)
    -- a view that reads the journal again (a redraw) does not say it again
    assert.are.equal("", stderr_of(function() events = journal.read(dir) end))
    assert.are.equal(2, #events)
    -- the cut end never happened: the attempt is still open
    local run = journal.replay(events)
    assert.are.equal("running", run.tasks.a.status)
    assert.is_true(run.tasks.a.attempts[1].open)
  end)

  it("reads the words of earlier versions as today's", function()
    local dir = write_journal {
      { event = "run", t = 100, tasks = 2 },
      { event = "end", t = 101, task = "a", attempt = 1, outcome = "success", duration = 1 },
      { event = "end", t = 102, task = "b", attempt = 1, outcome = "completed", duration = 1 },
      { event = "end", t = 103, task = "c", attempt = 1, outcome = "timeout", duration = 1 },
      { event = "done", t = 104, status = "completed" },
    }
    local events = journal.read(dir)
    assert.are.equal("succeeded", events[2].outcome)
    assert.are.equal("succeeded", events[3].outcome)
    assert.are.equal("timeout", events[4].outcome)
    assert.are.equal("succeeded", events[5].status)
    local run = journal.load(dir)
    assert.are.equal("succeeded", run.tasks.a.status)
    assert.are.equal("succeeded", run.tasks.b.status)
    assert.are.equal("failed", run.tasks.c.status)
    assert.are.equal("timeout", run.tasks.c.error)
    assert.are.equal("succeeded", run.status)
  end)
end)

describe("journal.replay", function()
  it("replays one session: the run, each task's state and attempts, retries and skips", function()
    local run = journal.load(write_journal {
      { event = "run", t = 100, run_id = "r1", plan = "p", project = "build it", tasks = 4, mode = "phased",
        max_workers = 2 },
      { event = "start", t = 100, task = "a", agent = "arch", attempt = 1, pid = 11 },
      { event = "start", t = 101, task = "b", agent = "dev", attempt = 1, pid = 12 },
      { event = "end", t = 103, task = "a", agent = "arch", attempt = 1, outcome = "succeeded", exit = 0, duration = 2.5,
        output = "/o/a.md" },
      { event = "end", t = 104, task = "b", agent = "dev", attempt = 1, outcome = "failed", exit = 1,
        error = "exit code 1" },
      { event = "retry", t = 104, task = "b", attempt = 2, delay = 0.5, reason = "exit code 1" },
      { event = "start", t = 105, task = "b", agent = "dev", attempt = 2, pid = 13 },
      { event = "end", t = 107, task = "b", agent = "dev", attempt = 2, outcome = "timeout", exit = 143, signal = 15,
        duration = 2, error = "timed out after 2s" },
      { event = "skip", t = 107, task = "c", agent = "qa", reason = "dependency 'b' failed" },
      { event = "stopping", t = 107, reason = "a task failed" },
      { event = "done", t = 108, status = "failed" },
    })
    assert.are.same({ "a", "b", "c" }, run.order)
    assert.are.equal(100, run.started)
    assert.are.equal(108, run.ended)
    assert.are.equal(108, run.last_event)
    assert.are.equal("failed", run.status)
    assert.are.equal("a task failed", run.stopping)
    assert.are.equal("p", run.plan)
    assert.are.equal("build it", run.project)
    assert.are.equal("phased", run.mode)
    assert.are.equal(2, run.max_workers)
    assert.are.equal(4, run.total)
    assert.are.same({ { start = 100, last = 108 } }, run.sessions)
    assert.are.equal(8, journal.session_time(run))

    local a, b, c = run.tasks.a, run.tasks.b, run.tasks.c
    assert.are.equal("succeeded", a.status)
    assert.are.equal("arch", a.agent)
    assert.are.equal("/o/a.md", a.output)
    assert.is_nil(a.error)
    assert.are.equal(100, a.first_start)
    assert.are.equal(103, a.finish)
    -- the duration the event gives wins over finish - start
    assert.are.same({ { n = 1, start = 100, finish = 103, duration = 2.5, outcome = "succeeded" } }, attempts(run, "a"))
    assert.are.equal(11, a.attempts[1].pid)
    assert.are.equal(0, a.attempts[1].exit)

    assert.are.equal("failed", b.status)
    assert.are.equal("timed out after 2s", b.error)
    assert.are.equal(101, b.first_start)
    assert.are.equal(107, b.finish)
    -- no duration in the event: finish - start
    assert.are.same({
      { n = 1, start = 101, finish = 104, duration = 3, outcome = "failed" },
      { n = 2, start = 105, finish = 107, duration = 2, outcome = "timeout" },
    }, attempts(run, "b"))
    assert.are.equal("exit code 1", b.attempts[1].error)
    assert.are.equal(143, b.attempts[2].exit)
    assert.are.equal(15, b.attempts[2].signal)
    assert.are.equal("dev", b.attempts[2].agent)
    assert.are.same({ { task = "b", attempt = 2, delay = 0.5, reason = "exit code 1" } }, run.retries)

    assert.are.equal("skipped", c.status)
    assert.are.equal("qa", c.agent)
    assert.are.equal("dependency 'b' failed", c.error)
    assert.are.same({}, c.attempts)
    assert.are.equal("skip", c.last.event)

    -- every attempt, in the order they began
    local all = {}
    for _, x in ipairs(run.attempts) do all[#all + 1] = x.task .. x.n end
    assert.are.same({ "a1", "b1", "b2" }, all)
  end)

  it("says retrying between a failed attempt and the next start, running while one runs", function()
    local events = {
      { event = "run", t = 100, tasks = 1 },
      { event = "start", t = 100, task = "a", agent = "x", attempt = 1 },
      { event = "end", t = 101, task = "a", agent = "x", attempt = 1, outcome = "rate-limited" },
      { event = "retry", t = 101, task = "a", attempt = 2, delay = 3 },
    }
    local run = journal.replay(events)
    assert.are.equal("retrying", run.tasks.a.status)
    assert.are.equal("rate-limited", run.tasks.a.error)
    assert.is_nil(run.ended)
    events[#events + 1] = { event = "start", t = 104, task = "a", agent = "x", attempt = 2 }
    run = journal.replay(events)
    assert.are.equal("running", run.tasks.a.status)
    assert.are.same({
      { n = 1, start = 100, finish = 101, duration = 1, outcome = "rate-limited" },
      { n = 2, start = 104, open = true },
    }, attempts(run, "a"))
  end)

  it("reads an end without an outcome as failed", function()
    local run = journal.replay {
      { event = "start", t = 10, task = "a", attempt = 1 },
      { event = "end", t = 12, task = "a", attempt = 1 },
    }
    assert.are.equal("failed", run.tasks.a.status)
    assert.are.equal("failed", run.tasks.a.error)
    assert.are.equal("failed", run.tasks.a.attempts[1].outcome)
    -- no run event: no session, and the agent is the task's id
    assert.are.same({}, run.sessions)
    assert.is_nil(run.started)
    assert.are.equal("a", run.tasks.a.agent)
  end)

  it("places an end without a start from its duration", function()
    local run = journal.replay {
      { event = "run", t = 100, tasks = 2 },
      { event = "end", t = 110, task = "a", agent = "x", attempt = 1, outcome = "succeeded", duration = 4 },
      { event = "end", t = 111, task = "b", agent = "x", attempt = 1, outcome = "failed" },
    }
    assert.are.same({ { n = 1, start = 106, finish = 110, duration = 4, outcome = "succeeded" } }, attempts(run, "a"))
    assert.are.equal(106, run.tasks.a.first_start)
    assert.are.equal(110, run.tasks.a.finish)
    -- no duration either: a point at its end
    assert.are.same({ { n = 1, start = 111, finish = 111, duration = 0, outcome = "failed" } }, attempts(run, "b"))
    assert.are.equal(2, #run.attempts)
  end)

  it("lists a task's attempts by number and takes the agent from the first event that names it", function()
    local run = journal.replay {
      { event = "run", t = 100, tasks = 1 },
      { event = "end", t = 110, task = "a", attempt = 2, outcome = "succeeded", duration = 2 },
      { event = "end", t = 105, task = "a", agent = "writer", attempt = 1, outcome = "failed", duration = 5 },
    }
    local t = run.tasks.a
    assert.are.equal("writer", t.agent)
    assert.are.same({ 1, 2 }, { t.attempts[1].n, t.attempts[2].n })
    -- the state is the last event's, as recorded
    assert.are.equal("failed", t.status)
    assert.are.same({ 100, 108 }, { t.attempts[1].start, t.attempts[2].start })
  end)

  it("keeps an attempt of the last session open, with no end", function()
    local run = journal.replay {
      { event = "run", t = 100, tasks = 1 },
      { event = "start", t = 101, task = "a", agent = "x", attempt = 1, pid = 7 },
      { event = "submit", t = 101, task = "a", attempt = 1, job_id = "j1" },
    }
    local a = run.tasks.a.attempts[1]
    assert.is_true(a.open)
    assert.is_nil(a.finish)
    assert.is_nil(a.outcome)
    assert.are.equal("j1", a.job_id)
    assert.are.equal("j1", run.tasks.a.job_id)
    assert.are.equal("running", run.tasks.a.status)
    -- submit and adopt are not the task's last event
    assert.are.equal("start", run.tasks.a.last.event)
    assert.are.same({ { start = 100, last = 101 } }, run.sessions)
  end)

  it("begins an attempt at its spawn, which its start completes: a spawn alone was in flight", function()
    local run = journal.replay {
      { event = "run", t = 100, tasks = 2 },
      { event = "spawn", t = 101, task = "a", agent = "x", attempt = 1 },
      { event = "start", t = 101.5, task = "a", agent = "x", attempt = 1, pid = 42 },
      { event = "end", t = 103, task = "a", agent = "x", attempt = 1, outcome = "succeeded", duration = 1.5 },
      -- coral was killed after b's spawn, before its start: b's process may have run
      { event = "spawn", t = 104, task = "b", agent = "x", attempt = 1 },
      { event = "run", t = 200, tasks = 2, resumed = true },
    }
    assert.are.same({ { n = 1, start = 101.5, finish = 103, duration = 1.5, outcome = "succeeded" } }, attempts(run, "a"))
    assert.are.equal(42, run.tasks.a.attempts[1].pid)
    assert.are.equal("end", run.tasks.a.last.event)
    assert.are.same({ { n = 1, start = 104, finish = 104, duration = 0, outcome = "interrupted" } }, attempts(run, "b"))
    assert.are.equal("interrupted", run.tasks.b.status)
    assert.are.equal(2, #run.attempts)
    -- and a spawn that failed has its end at once
    run = journal.replay {
      { event = "run", t = 100, tasks = 1 },
      { event = "spawn", t = 101, task = "a", attempt = 1 },
      { event = "end", t = 101, task = "a", attempt = 1, outcome = "failed", error = "spawn nope: ENOENT", duration = 0 },
    }
    assert.are.same({ { n = 1, start = 101, finish = 101, duration = 0, outcome = "failed" } }, attempts(run, "a"))
    assert.are.equal("failed", run.tasks.a.status)
  end)

  it("closes an attempt open when its session ended as interrupted at that session's last event", function()
    local run = journal.replay {
      { event = "run", t = 100, tasks = 2, mode = "dependency", max_workers = 4 },
      { event = "start", t = 100, task = "a", agent = "x", attempt = 1 },
      { event = "start", t = 101, task = "b", agent = "x", attempt = 1 },
      { event = "end", t = 105, task = "b", agent = "x", attempt = 1, outcome = "succeeded", duration = 4 },
      -- coral was killed here; the run is resumed
      { event = "run", t = 200, tasks = 2, resumed = true, max_workers = 2 },
      { event = "done", t = 230, status = "failed" },
    }
    assert.are.same({ { n = 1, start = 100, finish = 105, duration = 5, outcome = "interrupted" } }, attempts(run, "a"))
    assert.are.equal("interrupted", run.tasks.a.status)
    assert.are.equal(105, run.tasks.a.finish)
    assert.are.equal("succeeded", run.tasks.b.status)
    assert.are.equal(2, #run.sessions)
    assert.are.same({ 100, 105 }, { run.sessions[1].start, run.sessions[1].last })
    assert.are.same({ 200, 230, true }, { run.sessions[2].start, run.sessions[2].last, run.sessions[2].resumed })
    assert.are.equal(5 + 30, journal.session_time(run))
    -- the first run event's start, the last one's settings (the mode kept from the first)
    assert.are.equal(100, run.started)
    assert.are.equal(2, run.max_workers)
    assert.are.equal("dependency", run.mode)
    assert.are.equal(230, run.ended)
  end)

  it("reruns an interrupted task in the next session: the new attempt decides its state", function()
    local run = journal.replay {
      { event = "run", t = 100, tasks = 1 },
      { event = "start", t = 100, task = "a", agent = "x", attempt = 1 },
      { event = "start", t = 102, task = "b", agent = "x", attempt = 1 },
      { event = "end", t = 103, task = "b", agent = "x", attempt = 1, outcome = "succeeded" },
      { event = "run", t = 200, tasks = 1, resumed = true },
      { event = "start", t = 201, task = "a", agent = "x", attempt = 2 },
      { event = "end", t = 209, task = "a", agent = "x", attempt = 2, outcome = "succeeded", duration = 8 },
      { event = "done", t = 210, status = "succeeded" },
    }
    assert.are.same({
      { n = 1, start = 100, finish = 103, duration = 3, outcome = "interrupted" },
      { n = 2, start = 201, finish = 209, duration = 8, outcome = "succeeded" },
    }, attempts(run, "a"))
    assert.are.equal("succeeded", run.tasks.a.status)
    assert.are.equal(209, run.tasks.a.finish)
    assert.are.equal(100, run.tasks.a.first_start)
  end)

  it("keeps an attempt that the next session adopted, and ends it with its end event", function()
    local events = {
      { event = "run", t = 100, tasks = 1 },
      { event = "start", t = 100, task = "a", agent = "x", attempt = 1 },
      { event = "submit", t = 100, task = "a", attempt = 1, job_id = "41" },
      { event = "start", t = 102, task = "b", agent = "x", attempt = 1 },
      { event = "run", t = 200, tasks = 1, resumed = true },
      { event = "adopt", t = 200, task = "a", agent = "x", attempt = 1, job_id = "42" },
    }
    local run = journal.replay(events)
    local a = run.tasks.a.attempts[1]
    assert.are.equal("running", run.tasks.a.status)
    assert.is_true(a.open)
    assert.is_nil(a.outcome)
    assert.is_nil(a.finish)
    assert.are.equal("42", a.job_id)
    -- b was not adopted: interrupted at the first session's last event
    assert.are.same({ { n = 1, start = 102, finish = 102, duration = 0, outcome = "interrupted" } }, attempts(run, "b"))
    assert.are.equal("interrupted", run.tasks.b.status)

    events[#events + 1] = { event = "end", t = 250, task = "a", agent = "x", attempt = 1, outcome = "succeeded" }
    run = journal.replay(events)
    assert.are.same({ { n = 1, start = 100, finish = 250, duration = 150, outcome = "succeeded" } }, attempts(run, "a"))
    assert.are.equal("succeeded", run.tasks.a.status)
    assert.are.equal(2, #run.attempts)   -- a's one attempt and b's
  end)

  it("closes a lost attempt that the next session did not adopt at the end of the session that lost it", function()
    -- a is lost when session 1 ends and not adopted by session 2; session 3 starts later.
    local run = journal.replay {
      { event = "run", t = 100, tasks = 2 },
      { event = "start", t = 100, task = "a", agent = "x", attempt = 1 },
      { event = "start", t = 104, task = "b", agent = "x", attempt = 1 },
      { event = "run", t = 200, tasks = 2, resumed = true },
      { event = "end", t = 210, task = "b", agent = "x", attempt = 1, outcome = "succeeded" },
      { event = "run", t = 300, tasks = 2, resumed = true },
    }
    assert.are.same({ { n = 1, start = 100, finish = 104, duration = 4, outcome = "interrupted" } }, attempts(run, "a"))
    -- b ended in session 2 (a cluster job that outlived coral): not interrupted
    assert.are.same({ { n = 1, start = 104, finish = 210, duration = 106, outcome = "succeeded" } }, attempts(run, "b"))
    assert.are.equal(3, #run.sessions)
    assert.are.equal(4 + 10 + 0, journal.session_time(run))
  end)

  it("says running for a task restarted in a resumed session while its new attempt runs", function()
    local run = journal.replay {
      { event = "run", t = 100, tasks = 2 },
      { event = "start", t = 100, task = "a", agent = "x", attempt = 1 },
      { event = "start", t = 103, task = "b", agent = "x", attempt = 1 },
      { event = "run", t = 200, tasks = 2, resumed = true },
      { event = "start", t = 201, task = "a", agent = "x", attempt = 2 },
    }
    assert.are.same({
      { n = 1, start = 100, finish = 103, duration = 3, outcome = "interrupted" },
      { n = 2, start = 201, open = true },
    }, attempts(run, "a"))
    assert.are.equal("running", run.tasks.a.status)
    assert.is_nil(run.tasks.a.finish)
  end)

  it("ends a task killed in two sessions at its last attempt's interruption", function()
    local run = journal.replay {
      { event = "run", t = 100, tasks = 2 },
      { event = "start", t = 100, task = "a", agent = "x", attempt = 1 },
      { event = "start", t = 103, task = "b", agent = "x", attempt = 1 },
      { event = "run", t = 200, tasks = 2, resumed = true },
      { event = "start", t = 201, task = "a", agent = "x", attempt = 2 },
      { event = "end", t = 204, task = "b", agent = "x", attempt = 1, outcome = "succeeded" },
      { event = "run", t = 300, tasks = 2, resumed = true },
    }
    assert.are.same({
      { n = 1, start = 100, finish = 103, duration = 3, outcome = "interrupted" },
      { n = 2, start = 201, finish = 204, duration = 3, outcome = "interrupted" },
    }, attempts(run, "a"))
    assert.are.equal("interrupted", run.tasks.a.status)
    assert.are.equal(204, run.tasks.a.finish)
  end)
end)

describe("journal.interrupt", function()
  it("closes an open attempt at a time, never before its start, and marks a running task interrupted", function()
    local run = journal.replay {
      { event = "run", t = 100, tasks = 2 },
      { event = "start", t = 100, task = "a", agent = "x", attempt = 1 },
      { event = "start", t = 101, task = "b", agent = "x", attempt = 1 },
    }
    local a, b = run.tasks.a.attempts[1], run.tasks.b.attempts[1]
    journal.interrupt(run, a, 130.5)
    assert.are.same({ n = 1, start = 100, finish = 130.5, duration = 30.5, outcome = "interrupted" },
                    attempts(run, "a")[1])
    assert.are.equal("interrupted", run.tasks.a.status)
    assert.are.equal(130.5, run.tasks.a.finish)
    journal.interrupt(run, b, 90)
    assert.are.same({ n = 1, start = 101, finish = 101, duration = 0, outcome = "interrupted" }, attempts(run, "b")[1])
  end)

  it("leaves the state of a task that is not running", function()
    local run = journal.replay {
      { event = "start", t = 100, task = "a", attempt = 1 },
      { event = "end", t = 101, task = "a", attempt = 2, outcome = "succeeded", duration = 1 },
    }
    journal.interrupt(run, run.tasks.a.attempts[1], 105)
    assert.are.equal("interrupted", run.tasks.a.attempts[1].outcome)
    assert.are.equal("succeeded", run.tasks.a.status)
    assert.are.equal(101, run.tasks.a.finish)
  end)
end)
