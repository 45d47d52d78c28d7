-- The runner with real processes: scheduling, modes, policies, records, summary.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local cjson = require "cjson"

local coral = require "coral"
local t = coral.task

-- Runs `plan` in a fresh project dir; returns summary, project dir, and the events seen.
local function run(plan, opts)
  local dir = H.tmpdir()
  local events = {}
  local ropts = { project_dir = dir, output = "quiet", max_workers = 4,
                  backoff = { base = 0.05, factor = 2, max = 1, jitter = 0 },
                  on_event = function(e)
                    e.mono = uv.hrtime() / 1e9
                    events[#events + 1] = e
                  end }
  for k, v in pairs(opts or {}) do ropts[k] = v end
  local summary = coral.runner(ropts):execute_plan(plan)
  return summary, dir, events
end

local function first(events, name, task)
  for _, e in ipairs(events) do
    if e.event == name and e.task == task then return e end
  end
end

local function sleeper(id, seconds, opts)
  opts = opts or {}
  opts.id = id
  opts.cmd = { "sleep", tostring(seconds) }
  return t("worker", "sleep " .. seconds, opts)
end

-- Runs 8 sleepers of `seconds` at `workers`; returns the summary and the most tasks the events
-- (start, end) ever showed running at once.
local function peak_running(workers, seconds)
  local tasks = {}
  for i = 1, 8 do tasks[i] = sleeper("s" .. i, seconds) end
  local running, peak = 0, 0
  local summary = run(coral.plan(tasks), { max_workers = workers, on_event = function(e)
    if e.event == "start" then running = running + 1; peak = math.max(peak, running)
    elseif e.event == "end" then running = running - 1 end
  end })
  return summary, peak
end

local function joblog_rows(summary)
  local rows = {}
  for line in io.lines(summary.run_dir .. "/joblog.tsv") do
    local task, attempt, start, duration, exit, signal, outcome =
      line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
    if task ~= "task" then
      rows[#rows + 1] = { task = task, attempt = tonumber(attempt), start = tonumber(start),
        duration = tonumber(duration), exit = tonumber(exit), signal = signal, outcome = outcome }
    end
  end
  return rows
end

describe("the runner", function()
  it("never runs more than max_workers tasks at once, and reaches it", function()
    local summary, peak = peak_running(3, 0.2)
    assert.are.equal(8, summary.succeeded)
    assert.are.equal(3, peak)
    assert.are.equal(3, summary.max_parallel)
  end)

  it("starts a task right after its own dependencies in dependency mode, and waits in phased mode", function()
    local function make()
      return coral.plan {
        { sleeper("a", 0.1), sleeper("b", 0.8) },
        { sleeper("c", 0.1, { depends_on = { "a" } }), sleeper("d", 0.1, { depends_on = { "b" } }) },
      }
    end
    local _, _, ev = run(make(), { mode = "dependency" })
    local c_start, b_end = first(ev, "start", "c").mono, first(ev, "end", "b").mono
    assert.is_true(c_start < b_end - 0.4, "c should start long before b ends")
    local _, _, ev2 = run(make(), { mode = "phased" })
    assert.is_true(first(ev2, "start", "c").mono >= first(ev2, "end", "b").mono, "phased: c waits for the phase")
  end)

  it("runs one task at a time in sequential mode, in dependency order", function()
    local plan = coral.plan { sleeper("x", 0.05), sleeper("y", 0.05, { depends_on = { "x" } }), sleeper("z", 0.05) }
    local summary, _, ev = run(plan, { mode = "sequential" })
    assert.are.equal(1, summary.max_parallel)
    assert.is_true(first(ev, "start", "y").mono >= first(ev, "end", "x").mono)
  end)

  it("ignores dependencies in parallel mode", function()
    local plan = coral.plan { sleeper("x", 0.3), sleeper("y", 0.05, { depends_on = { "x" } }) }
    local summary, _, ev = run(plan, { mode = "parallel" })
    assert.are.equal(2, summary.succeeded)
    assert.is_true(first(ev, "start", "y").mono < first(ev, "end", "x").mono)
  end)

  it("kills a task that times out, with its grandchildren", function()
    local plan = coral.plan { t("worker", "hang", { id = "hang", timeout = 0.5,
      cmd = "sleep 30 & sleep 30; wait" }) }
    local t0 = uv.hrtime()
    local summary = run(plan, { retries = 0, kill_grace = 0.5 })
    assert.is_true((uv.hrtime() - t0) / 1e9 < 5)
    assert.are.equal(1, summary.failed)
    assert.matches("timed out after 0.5s", summary.results.hang.error)
    assert.are.equal("timeout", joblog_rows(summary)[1].outcome)
    -- the helper's after_each checks that neither sleep is left running
  end)

  it("times a task out on time while short tasks keep ending around it", function()
    local tasks = { t("worker", "hang", { id = "hang", timeout = 0.5, cmd = "sleep 30" }) }
    for i = 1, 3000 do tasks[#tasks + 1] = t("worker", "n" .. i, { id = "n" .. i, cmd = "true" }) end
    local summary, _, ev = run(coral.plan(tasks), { retries = 0, kill_grace = 0.2, max_workers = 4 })
    assert.are.equal(3000, summary.succeeded)
    local start, last_end = first(ev, "start", "hang").mono, 0
    for _, e in ipairs(ev) do if e.event == "end" and e.mono > last_end then last_end = e.mono end end
    assert.is_true(last_end - start > 1.5, "the short tasks were over too soon to show anything")
    local took = first(ev, "end", "hang").mono - start
    assert.is_true(took < 1.5, string.format("a 0.5 s timeout ended the task after %.2f s", took))
  end)

  it("kills a task that prints nothing for idle_timeout seconds", function()
    local plan = coral.plan { t("worker", "quiet", { id = "quiet", idle_timeout = 0.3, cmd = "echo hi; sleep 30" }) }
    local summary = run(plan, { retries = 0, kill_grace = 0.5 })
    assert.are.equal("idle-timeout", joblog_rows(summary)[1].outcome)
  end)

  it("retries a flaky task with growing backoff until its third attempt succeeds", function()
    local dir = H.tmpdir()
    local counter = dir .. "/count"
    local script = string.format("n=$(cat %s 2>/dev/null || echo 0); n=$((n+1)); echo $n > %s; [ $n -ge 3 ]", counter, counter)
    local summary, _, ev = run(coral.plan { t("worker", "flaky", { id = "flaky", cmd = script }) }, { retries = 2 })
    assert.are.equal(1, summary.succeeded)
    assert.are.equal(3, summary.results.flaky.attempts)
    local rows = joblog_rows(summary)
    assert.are.same({ "failed", "failed", "succeeded" }, { rows[1].outcome, rows[2].outcome, rows[3].outcome })
    local delays = {}
    for _, e in ipairs(ev) do if e.event == "retry" then delays[#delays + 1] = e.delay end end
    assert.are.equal(2, #delays)
    assert.is_true(delays[2] > delays[1])
    -- the second attempt waited for its backoff
    assert.is_true(rows[2].start - (rows[1].start + rows[1].duration) >= delays[1] - 0.01)
  end)

  it("does not retry when retry_failed is false", function()
    local summary = run(coral.plan { t("worker", "fail", { id = "f", cmd = "exit 3" }) }, { retry_failed = false })
    assert.are.equal(1, summary.results.f.attempts)
    assert.are.equal(3, summary.results.f.exit_code)
  end)

  describe("on_failure", function()
    local function plan()
      return coral.plan {
        t("worker", "fails", { id = "bad", cmd = "exit 1" }),
        t("worker", "after bad", { id = "after", cmd = "true", depends_on = { "bad" } }),
        t("worker", "after after", { id = "after2", cmd = "true", depends_on = { "after" } }),
        t("worker", "independent", { id = "other", cmd = "sleep 0.5" }),
      }
    end

    it("skip: skips the dependents and lets independent branches finish", function()
      local s = run(plan(), { on_failure = "skip", retries = 0 })
      assert.are.equal("failed", s.results.bad.status)
      assert.are.equal("skipped", s.results.after.status)
      assert.are.equal("skipped", s.results.after2.status)
      assert.are.equal("succeeded", s.results.other.status)
      assert.matches("dependency 'bad' failed", s.results.after.error)
    end)

    it("stop: starts nothing new and terminates running tasks", function()
      local s = run(plan(), { on_failure = "stop", retries = 0, kill_grace = 0.5 })
      assert.are.equal("failed", s.results.bad.status)
      assert.are.equal("failed", s.results.other.status)
      assert.matches("cancelled", s.results.other.error)
      assert.are.equal("skipped", s.results.after.status)
    end)

    it("continue: runs the dependents anyway", function()
      local s = run(plan(), { on_failure = "continue", retries = 0 })
      assert.are.equal("succeeded", s.results.after.status)
      assert.are.equal("succeeded", s.results.after2.status)
    end)
  end)

  it("streams upstream output to a dependent's stdin in pipeline mode", function()
    local dir = H.tmpdir()
    local plan = coral.plan {
      t("producer", "produce", { id = "up", cmd = "echo first; sleep 1; echo second" }),
      t("consumer", "consume", { id = "down", depends_on = { "up" },
        cmd = string.format("read line; date +%%s.%%N > %s/first; echo \"got $line\"; cat", dir) }),
    }
    local s, _, ev = run(plan, { mode = "pipeline" })
    assert.are.equal(2, s.succeeded)
    local got_first = tonumber(H.read_file(dir .. "/first"))
    local up_end = first(ev, "end", "up").t
    assert.is_true(got_first < up_end - 0.5, "the dependent read its first line while the upstream ran")
    local out = H.read_file(s.results.down.output_file)
    assert.are.equal("got first\nsecond\n", out)
  end)

  it("keeps the coordination files intact when 8 tasks each call coral note 200 times", function()
    local tasks = {}
    for i = 1, 8 do
      tasks[i] = t("noter", "notes", { id = "n" .. i,
        cmd = 'i=0; while [ $i -lt 200 ]; do i=$((i+1)); coral note "note $CORAL_TASK_ID $i" || exit 1; done' })
    end
    local s, dir = run(coral.plan(tasks), { max_workers = 8, timeout = 120 })
    assert.are.equal(8, s.succeeded)
    local pad = H.read_file(dir .. "/scratchpad.md")
    local seen = {}
    local n = 0
    for id, k in pad:gmatch("%- %[[^%]]+%] noter: note (n%d) (%d+)\n") do
      n = n + 1
      seen[id .. ":" .. k] = true
    end
    assert.are.equal(1600, n)
    for i = 1, 8 do for k = 1, 200 do assert.truthy(seen["n" .. i .. ":" .. k]) end end
  end)

  it("writes the records, and a summary consistent with the joblog", function()
    local plan = coral.plan {
      { t("a1", "first", { cmd = "echo one" }) },
      { t("a2", "second", { cmd = "echo two; exit 1", retries = 1 }), t("a3", "third", { cmd = "sleep 0.1" }) },
    }
    local s, dir = run(plan)
    local rows = joblog_rows(s)
    local sum = 0
    for _, r in ipairs(rows) do sum = sum + r.duration end
    assert.are.equal(4, #rows)               -- a1, a2 twice, a3
    assert.is_true(math.abs(sum - s.sequential_estimate_seconds) < 0.01)
    assert.are.near(s.sequential_estimate_seconds - s.total_time_seconds, s.time_saved_seconds, 1e-9)
    assert.are.equal(3, s.tasks)
    assert.are.equal(2, s.succeeded)
    assert.are.equal(1, s.failed)
    local stored = cjson.decode(H.read_file(s.run_dir .. "/summary.json"))
    assert.are.equal(s.succeeded, stored.succeeded)
    assert.are.equal("one\n", H.read_file(s.results.a1.output_file))
    -- the journal: one JSON object per line, starts and ends of every attempt
    local starts, ends = 0, 0
    for line in io.lines(s.run_dir .. "/journal.jsonl") do
      local e = cjson.decode(line)
      if e.event == "start" then starts = starts + 1; assert.is_number(e.pid) end
      if e.event == "end" then ends = ends + 1 end
    end
    assert.are.equal(4, starts)
    assert.are.equal(4, ends)
    -- activity entries in the documented format
    local activity = H.read_file(dir .. "/activity_tracker.md")
    assert.matches("### %[%d+%-%d+%-%d+ %d+:%d+%] a1 %(PARALLEL%)\n%*%*Task%*%*: first\n%*%*Group%*%*: Phase 1\n" ..
                   "%*%*Dependencies%*%*: none\n%*%*Status%*%*: ✅ Succeeded\n%*%*Duration%*%*: ", activity)
    assert.matches("%*%*Status%*%*: ❌ Failed: exit code 1", activity)
    assert.matches("%*%*Dependencies%*%*: a1\n", activity)
    -- the project state is valid YAML with each agent's history
    local state = require("lyaml").load(H.read_file(dir .. "/.coral/project_state.yaml"))
    assert.are.equal("succeeded", state.agents.a1.history[1].status)
    assert.are.equal("failed", state.agents.a2.history[1].status)
    -- private records, readable coordination files
    assert.are.equal(tonumber("700", 8), uv.fs_stat(s.run_dir).mode & tonumber("777", 8))
    assert.are.equal(tonumber("644", 8), uv.fs_stat(dir .. "/scratchpad.md").mode & tonumber("777", 8))
  end)

  it("returns only the tasks that did not succeed when asked, and writes every task to summary.json", function()
    local plan = coral.plan {
      { t("a1", "first", { cmd = "echo one" }), t("a2", "second", { cmd = "exit 3" }) },
      { t("a3", "third", { cmd = "true", depends_on = { "a2" } }) },
    }
    local runner = coral.runner { project_dir = H.tmpdir(), output = "quiet", retry_failed = false }
    local s = runner:execute_plan(plan, { results = "unsuccessful" })
    assert.are.equal(1, s.succeeded)
    assert.is_nil(s.results.a1)
    assert.are.equal("failed", s.results.a2.status)
    assert.are.equal(3, s.results.a2.exit_code)
    assert.are.equal("skipped", s.results.a3.status)
    local stored = cjson.decode(H.read_file(s.run_dir .. "/summary.json"))
    assert.are.equal("succeeded", stored.results.a1.status)
    assert.are.equal("one\n", H.read_file(stored.results.a1.output_file))
    assert.are.equal("failed", stored.results.a2.status)
    assert.are.equal("skipped", stored.results.a3.status)
    local err = select(2, pcall(runner.execute_plan, runner, plan, { results = "some" }))
    assert.matches("execute_plan: option 'results' must be one of all, unsuccessful, got 'some'", err, 1, true)
  end)

  it("keeps what another process wrote to the project state between its own writes", function()
    -- coral writes the state again from the table it last wrote while the file holds that
    -- text; an edit in between (here: after the first flush, about a second in) is read back
    local plan = coral.plan {
      t("first", "x", { id = "a", cmd = "true" }),
      t("editor", "x", { id = "edit", depends_on = { "a" },
        cmd = "sleep 1.5 && printf 'note: \"kept\"\\n' >> \"$CORAL_PROJECT_DIR/.coral/project_state.yaml\"" }),
      t("last", "x", { id = "b", depends_on = { "edit" }, cmd = "true" }),
    }
    local s, dir = run(plan)
    assert.are.equal(3, s.succeeded)
    local state = require("lyaml").load(H.read_file(dir .. "/.coral/project_state.yaml"))
    assert.are.equal("kept", state.note)
    assert.are.equal("succeeded", state.agents.first.history[1].status)
    assert.are.equal("succeeded", state.agents.last.history[1].status)
  end)

  it("gives agents the CORAL_* environment", function()
    local plan = coral.plan { t("envy", "print env", { id = "e", cmd = "env | grep ^CORAL_ | sort" }) }
    local s, dir = run(plan)
    local out = H.read_file(s.results.e.output_file)
    for _, k in ipairs { "CORAL_NON_INTERACTIVE=1", "CORAL_RUN_ID=" .. s.run_id, "CORAL_TASK_ID=e",
                         "CORAL_AGENT=envy", "CORAL_PROJECT_DIR=" .. dir, "CORAL_RUN_DIR=" .. s.run_dir,
                         "CORAL_SCRATCHPAD=" .. dir .. "/scratchpad.md",
                         "CORAL_ACTIVITY=" .. dir .. "/activity_tracker.md", "CORAL_BIN=" } do
      assert.truthy(out:find(k, 1, true), "missing " .. k)
    end
  end)

  it("readies the dir and inputs of a task waiting for a worker while it waits", function()
    -- one worker: b and c wait for it while a runs, then c while b runs; b waits for c's
    -- inputs.json to appear (coral writes it just after b's start), then reads it
    local plan = coral.plan {
      t("w", "first", { id = "a", cmd = "echo from-a" }),
      t("w", "peek", { id = "b", depends_on = { "a" },
                       cmd = 'f="$CORAL_RUN_DIR/tasks/c/inputs.json"; for i in $(seq 250); do ' ..
                             'test -s "$f" && break; sleep 0.02; done; cat "$f"' }),
      t("w", "read", { id = "c", depends_on = { "a" }, priority = -1, cmd = 'cat "$CORAL_INPUTS"' }),
    }
    local s = run(plan, { max_workers = 1 })
    assert.are.equal(3, s.succeeded)
    local seen_by_b, read_by_c = H.read_file(s.results.b.output_file), H.read_file(s.results.c.output_file)
    assert.truthy(seen_by_b:find(s.results.a.output_file, 1, true), seen_by_b)
    assert.are.equal(H.read_file(s.run_dir .. "/tasks/c/inputs.json"), read_by_c)
    assert.are.same(cjson.decode(seen_by_b), cjson.decode(read_by_c))
  end)

  it("writes nothing through a link planted in a waiting task's dir, nor when it cuts the output", function()
    -- a waits for b's dir and files (made just after a's start, opened ahead of b's start) and
    -- puts a link in the place of b's stdout file: b writes to the file opened before, and the
    -- cut of its output to the cap does not follow the link
    local outside = H.tmpdir()
    H.write_file(outside .. "/v.txt", "keep\n")
    local recipe = H.tmpdir() .. "/recipe.lua"
    H.write_file(recipe, string.format([[
local coral = require "coral"
return coral.plan {
  coral.task("w", "plant", { id = "a",
    cmd = 'f="$CORAL_RUN_DIR/tasks/b/attempt-1.out"; for i in $(seq 250); do test -f "$f" && break; sleep 0.02; done; ' ..
          'rm "$f" && ln -s %s/v.txt "$f"' }),
  coral.task("w", "victim", { id = "b", cmd = "echo written-through-and-longer-than-the-cap" }),
}
]], outside))
    local dir = H.tmpdir()
    local r = H.run { recipe, "x", "--dir", dir, "--max-workers", "1", "--quiet", "--no-report", "--output-cap", "3" }
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("keep\n", H.read_file(outside .. "/v.txt"))
  end)

  it("opens the files of the task next in line while its worker is busy, and closes them if it never starts", function()
    -- W=1: while `first` runs, `second` is next in line; its files are opened ahead and its
    -- process writes through them. `third` is armed while `second` runs, which fails and
    -- stops the run: `third` never starts, its files are closed (the helper counts the
    -- descriptors after each spec) and left empty.
    local plan = coral.plan {
      t("w", "first", { id = "first", cmd = { "sleep", "0.2" } }),
      t("w", "second", { id = "second", cmd = "echo out; echo err >&2; sleep 0.2; exit 3" }),
      t("w", "third", { id = "third", cmd = "echo never" }),
    }
    local s, _, events = run(plan, { max_workers = 1, on_failure = "stop", retries = 0 })
    assert.are.equal("succeeded", s.results.first.status)
    assert.are.equal("failed", s.results.second.status)
    assert.are.equal("skipped", s.results.third.status)
    local tasks = s.run_dir .. "/tasks/"
    assert.are.equal("out\n", H.read_file(tasks .. "second/attempt-1.out"))
    assert.are.equal("err\n", H.read_file(tasks .. "second/attempt-1.err"))
    assert.is_nil(first(events, "start", "third"))
    assert.are.equal("", H.read_file(tasks .. "third/attempt-1.out"))
  end)

  it("uses the durations of earlier runs as estimates", function()
    local function plan() return coral.plan { t("slowpoke", "work", { id = "w", cmd = "sleep 0.2" }) } end
    local dir = H.tmpdir()
    run(plan(), { project_dir = dir })
    local p = plan()
    run(p, { project_dir = dir })
    assert.is_true(math.abs(p:estimate(p.by_id.w) - 0.2) < 0.15)
  end)
end)

describe("the records at a run's end", function()
  it("has every attempt's end in the journal before summary.json and the project state are written", function()
    -- The last task's end waits in memory for the records' next flush when the loop ends (a
    -- command's end is batched): summary.json and the project state, made from it, come after
    -- it is in the journal, so that a kill between them leaves records that agree.
    local Records = require("coral.records").Records
    local real_summary, real_state = Records.write_summary, Records.update_state
    local seen = {}
    local function journal_ends(self)
      local ends = 0
      for line in (H.read_file(self.dir .. "/journal.jsonl") or ""):gmatch("[^\n]+") do
        if cjson.decode(line).event == "end" then ends = ends + 1 end
      end
      return ends
    end
    Records.write_summary = function(self, ...)
      seen.summary = journal_ends(self)
      return real_summary(self, ...)
    end
    Records.update_state = function(self, ...)
      seen.state = journal_ends(self)
      return real_state(self, ...)
    end
    local ok, err = pcall(run, coral.plan { t("w", "one", { id = "one", cmd = "true" }),
                                            t("w", "two", { id = "two", cmd = "true", depends_on = { "one" } }) })
    Records.write_summary, Records.update_state = real_summary, real_state
    assert(ok, err)
    assert.are.same({ summary = 2, state = 2 }, seen)
  end)
end)

describe("the project state during a run", function()
  it("says the run is on a moment after it starts, not before its first ends", function()
    -- `quick` ends long before 0.2 s: the state is not written by then (its fsyncs would hold
    -- that end back); by the end of `slow` (0.4 s) it says the run is on.
    local Records = require("coral.records").Records
    local real = Records.update_state
    local writes, at_quick, at_slow = 0, nil, nil
    Records.update_state = function(...)
      writes = writes + 1
      return real(...)
    end
    local dir = H.tmpdir()
    local ok, err = pcall(run, coral.plan { t("w", "quick", { id = "quick", cmd = "true" }),
                                            t("w", "slow", { id = "slow", cmd = "sleep 0.4" }) },
      { project_dir = dir, max_workers = 2, on_event = function(e)
        if e.event == "end" and e.task == "quick" then at_quick = writes end
        if e.event == "end" and e.task == "slow" then
          at_slow = require("coral.records").read_state(dir .. "/.coral/project_state.yaml")
        end
      end })
    Records.update_state = real
    assert(ok, err)
    assert.are.equal(0, at_quick)
    assert.are.equal("running", at_slow.status)
    assert.are.equal(2, writes)   -- that one, and the last
  end)
end)

describe("the standby", function()
  -- The journal's lines in order: the most attempts open at once (spawned or started, not ended).
  local function most_open(run_dir)
    local open, most = {}, 0
    for line in io.lines(run_dir .. "/journal.jsonl") do
      local e = cjson.decode(line)
      local key = e.task and (e.task .. "#" .. tostring(e.attempt))
      if e.event == "spawn" then open[key] = true
      elseif e.event == "end" then open[key] = nil end
      local n = 0
      for _ in pairs(open) do n = n + 1 end
      if n > most then most = n end
    end
    return most
  end

  it("starts the next task at a clean exit, before the end is recorded, never beyond max_workers", function()
    local summary, peak = peak_running(2, 0.05)
    assert.are.equal(8, summary.succeeded)
    assert.are.equal(2, peak)
    assert.are.equal(2, summary.max_parallel)
    -- a next task's spawn written at the exit, ahead of that exit's end: a third open in the file
    assert.are.equal(3, most_open(summary.run_dir))
    -- and its records are whole: each task spawned, started (with its pid) and ended once
    local seen = {}
    for _, e in ipairs(require("coral.records.journal").read(summary.run_dir)) do
      if e.task then
        seen[e.task] = seen[e.task] or {}
        seen[e.task][e.event] = (seen[e.task][e.event] or 0) + 1
        if e.event == "start" then assert.truthy(e.pid) end
      end
    end
    for i = 1, 8 do assert.are.same({ spawn = 1, start = 1, ["end"] = 1 }, seen["s" .. i]) end
    assert.are.equal(8, #joblog_rows(summary))
  end)

  it("does not start a task ahead of a longer chain that a running task's end releases", function()
    -- w1, w2 first (long enough for the standby); then long1 (whose dependent `crit` has a
    -- long chain behind it) and long2 run, and f1, f2 wait. At long1's end, crit must start,
    -- not f1 (which the standby would have started at that exit, whatever it released).
    local function est(id, secs, estimate, deps)
      return t("w", id, { id = id, cmd = { "sleep", tostring(secs) }, estimate = estimate, depends_on = deps })
    end
    local _, _, events = run(coral.plan {
      est("w1", 0.02, 5), est("w2", 0.02, 5), est("long1", 0.15, 0.1), est("long2", 0.4, 0.3),
      est("crit", 0.01, 1.0, { "long1" }), est("f1", 0.01, 0.05), est("f2", 0.01, 0.05),
    }, { max_workers = 2 })
    local order = {}
    for _, e in ipairs(events) do if e.event == "start" then order[#order + 1] = e.task end end
    assert.are.same({ "w1", "w2", "long1", "long2", "crit", "f1", "f2" }, order)
  end)

  it("does not start at an exit that is not a success, nor at one whose success is not its status", function()
    -- one worker, on_failure = stop: what is next in line never starts after a failure, whether
    -- the process said so (exit 1) or the runner did (a declared output missing after exit 0)
    for _, failing in ipairs {
      t("w", "fails", { id = "a", cmd = { "sh", "-c", "sleep 0.05; exit 1" } }),
      t("w", "misses its output", { id = "a", cmd = { "sleep", "0.05" }, outputs = { "never.txt" } }),
    } do
      local summary, _, events = run(coral.plan { failing, sleeper("b", 0.01), sleeper("c", 0.01) },
        { max_workers = 1, on_failure = "stop", retries = 0 })
      assert.are.equal("failed", summary.status)
      assert.is_nil(first(events, "start", "b"))
      assert.is_nil(first(events, "start", "c"))
      assert.are.equal(1, most_open(summary.run_dir))
    end
  end)
end)

describe("the collector during a run", function()
  it("collects a run's garbage from its start, however large the heap it started with", function()
    -- Lua 5.4.4 makes no minor collection after the switch to the generational collector
    -- until a first major one, when the heap has grown by 60-100 %: over a 39 MB heap, the
    -- ~50 MB of garbage below would pile up to 60 MB or more first. The run starts the minor
    -- cycles at the switch (run/init.lua), so the heap stays within a fifth of its size.
    local old = {}
    for i = 1, 400000 do old[i] = { i } end
    collectgarbage("collect")
    local start_kb, peak_kb = collectgarbage("count"), 0
    local tasks = {}
    for i = 1, 40 do tasks[i] = t("w", "noop " .. i, { id = "n" .. i, cmd = { "true" } }) end
    local summary = run(coral.plan(tasks), { on_event = function()
      for _ = 1, 80 do local _ = string.rep("x", 4000 + math.random(100)) end   -- ~320 KB of garbage
      peak_kb = math.max(peak_kb, collectgarbage("count"))
    end })
    assert.are.equal(40, summary.succeeded)
    assert.is_true(#old == 400000)
    assert.is_true(peak_kb < start_kb * 1.35, string.format("the heap went from %.1f to %.1f MB",
      start_kb / 1024, peak_kb / 1024))
  end)
end)

describe("coral's scheduling policy during a run", function()
  -- field 41 of a process's stat: 0 SCHED_OTHER, 3 SCHED_BATCH
  local function policy_in(stat)
    local fields = {}
    for f in stat:match("^%d+ %b() (.*)$"):gmatch("%S+") do fields[#fields + 1] = f end
    return tonumber(fields[39])
  end

  -- A chain: the `before` tasks, then one that reads its own policy and coral's (its shell's parent).
  local function policies(before)
    local tasks = {}
    for i, cmd in ipairs(before) do
      tasks[i] = t("w", "step " .. i, { id = "s" .. i, cmd = cmd, depends_on = i > 1 and { "s" .. (i - 1) } or nil })
    end
    tasks[#tasks + 1] = t("w", "policies", { id = "p", depends_on = { "s" .. #before },
                                             cmd = "cat /proc/self/stat; cat /proc/$PPID/stat" })
    local summary, dir = run(coral.plan(tasks), { max_workers = 1 })
    assert.are.equal(#tasks, summary.succeeded)
    local task_stat, coral_stat = H.read_file(dir .. "/.coral/runs/" .. summary.run_id ..
      "/tasks/p/attempt-1.out"):match("^([^\n]*)\n([^\n]*)\n$")
    return policy_in(task_stat), policy_in(coral_stat)
  end

  it("yields to its tasks once they are long enough, runs them with the normal policy, and comes back", function()
    -- after tasks of 20 ms (run/standby.lua's worth): coral SCHED_BATCH, the task not
    assert.are.same({ 0, 3 }, { policies { { "sleep", "0.02" }, { "sleep", "0.02" } } })
    assert.are.equal(0, policy_in(H.read_file("/proc/thread-self/stat")))
    -- after tasks of a millisecond, coral's CPU counts more: it keeps the normal policy
    assert.are.same({ 0, 0 }, { policies { "true", "true" } })
    -- and after a run stopped by an error
    local broken = { name = "broken", prepare = function() error("driver exploded") end }
    assert.is_false(pcall(run, coral.plan { sleeper("a", 0.02), sleeper("b", 0.02, { depends_on = { "a" } }),
                                            t("x", "breaks", { id = "x", driver = broken, depends_on = { "b" } }) },
                          { max_workers = 1 }))
    assert.are.equal(0, policy_in(H.read_file("/proc/thread-self/stat")))
  end)
end)

describe("a run stopped by an error", function()
  it("raises it and leaves no process, handle or lock behind", function()
    local dir = H.tmpdir()
    local broken = { name = "broken", prepare = function() error("driver exploded") end }
    local plan = coral.plan {
      t("slow", "runs meanwhile", { id = "slow", cmd = "sleep 30" }),
      t("x", "breaks", { id = "x", driver = broken, depends_on = {} }),
    }
    local ok, err = pcall(coral.runner({ project_dir = dir, output = "quiet" }).execute_plan,
                          coral.runner({ project_dir = dir, output = "quiet" }), plan)
    assert.is_false(ok)
    assert.matches("driver exploded", tostring(err))
    -- the lock is free again: a new run in the project starts
    local s = coral.runner({ project_dir = dir, output = "quiet" }):execute_plan(coral.plan { t("y", "ok", { cmd = "true" }) })
    assert.are.equal(1, s.succeeded)
    -- and the helper checks that the sleep, the signal handles and the timers are gone
  end)
end)

describe("plans", function()
  it("make a task without depends_on depend on the whole previous phase", function()
    local p = coral.plan { { t("a", "x"), t("b", "y") }, { t("c", "z") } }
    assert.are.same({ "a", "b" }, p.by_id.c.depends_on)
    assert.are.same({ { "a" , "b" }, { "c" } }, p:phases())
  end)

  it("make ids unique from agent names", function()
    local p = coral.plan { t("rev", "1"), t("rev", "2"), t("rev", "3") }
    assert.are.same({ "rev", "rev-2", "rev-3" }, { p.tasks[1].id, p.tasks[2].id, p.tasks[3].id })
  end)

  local function err_of(f)
    local ok, e = pcall(f)
    assert.is_false(ok)
    return tostring(e)
  end

  it("blame the recipe line of a bad task", function()
    local line = debug.getinfo(1, "l").currentline
    local e = err_of(function() return coral.plan { t("a", "x", { depends_on = { "nope" } }) } end)
    assert.are.equal(string.format("spec/runner_spec.lua:%d: task 'a' depends on unknown task 'nope'", line + 1), e)
    e = err_of(function() return coral.plan { t("a", "x", { id = "same" }), t("b", "y", { id = "same" }) } end)
    assert.matches("duplicate task id 'same' %(first declared at spec/runner_spec.lua:%d+%)", e)
    e = err_of(function() return coral.plan { t("a", "x", { depends_on = { "a" } }) } end)
    assert.matches("task 'a' depends on itself", e)
    e = err_of(function() return coral.plan { t("a", "x", { depends_on = { "b" } }), t("b", "y", { depends_on = { "a" } }) } end)
    assert.matches("dependency cycle: a %-> b %-> a", e)
    e = err_of(function() local _ = t("a", "x", { timeout = "soon" }) end)
    assert.matches("^spec/runner_spec.lua:%d+: coral.task: option 'timeout' must be number, got string", e)
    e = err_of(function() local _ = t("a", "x", { tiemout = 3 }) end)
    assert.matches("^spec/runner_spec.lua:%d+: coral.task: unknown option 'tiemout'", e)
    e = err_of(function() return coral.runner { max_wrokers = 3 } end)
    assert.matches("unknown option 'max_wrokers'", e)
  end)
end)

describe("pipeline mode", function()
  it("copes with a consumer that leaves before its producer ends", function()
    local dir = H.tmpdir()
    local plan = coral.plan {
      t("producer", "produce", { id = "up", cmd = "echo first; sleep 0.5; echo second" }),
      t("consumer", "first line only", { id = "down", depends_on = { "up" }, cmd = "head -1" }),
      t("after", "after down", { id = "after", depends_on = { "down" }, cmd = "cat" }),
    }
    local s = coral.runner({ project_dir = dir, output = "quiet", mode = "pipeline" }):execute_plan(plan)
    assert.are.equal(3, s.succeeded)
    assert.are.equal("first\n", H.read_file(s.results.down.output_file))
    assert.are.equal("first\n", H.read_file(s.results.after.output_file))
  end)
end)
