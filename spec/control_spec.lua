-- Live control, through the real binary: a run in the background, `coral ctl` and `coral
-- attach` talking to its control socket, and what the run's records say afterwards.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local uv = require "luv"

local function write_plan(dir, body)
  H.write_file(dir .. "/plan.lua", 'local coral = require "coral"\nreturn {\n' .. body .. "\n}\n")
end

local function start_run(dir, extra)
  local args = { dir .. "/plan.lua", "x", "--dir", dir, "--quiet", "--no-report" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return H.start(args)
end

local function run_dir(dir)
  local ids = H.entries(dir .. "/.coral/runs")
  return dir .. "/.coral/runs/" .. ids[#ids]
end

local function ctl(dir, ...)
  local args = { "ctl", ... }
  args[#args + 1] = "--dir"
  args[#args + 1] = dir
  return H.run(args)
end

local function status(dir)
  local r = ctl(dir, "status", "--json")
  assert(r.code == 0, r.stderr)
  local s = cjson.decode(r.stdout)
  s.by_id = {}
  for _, t in ipairs(s.tasks) do s.by_id[t.id] = t end
  return s
end

-- Waits until the run serves its socket and `pred(status)` holds.
local function wait_status(dir, pred, seconds)
  local s
  H.wait_until(function()
    if not uv.fs_stat(dir .. "/.coral/runs") or #H.entries(dir .. "/.coral/runs") == 0 then return false end
    if not uv.fs_stat(run_dir(dir) .. "/control.sock") then return false end
    s = status(dir)
    return pred(s)
  end, seconds or 20)
  return s
end

local function journal(dir)
  local events = {}
  for line in io.lines(run_dir(dir) .. "/journal.jsonl") do events[#events + 1] = cjson.decode(line) end
  return events
end

local function summary(dir)
  local s = cjson.decode((assert(H.read_file(run_dir(dir) .. "/summary.json"))))
  s.by_id = s.results
  return s
end

describe("coral ctl", function()
  local dir, run
  before_each(function() dir = H.tmpdir() end)
  after_each(function()
    if run and run.code == nil then uv.kill(run.pid, "sigkill"); H.wait_for(run, 5) end
    run = nil
  end)

  it("lists the running tasks, cancels one while the others go on, and retries it with what it blocked", function()
    write_plan(dir, [[
  coral.task{ id = "slow", cmd = "if [ -f again ]; then echo second; else sleep 30; fi" },
  coral.task{ id = "other", cmd = "sleep 1.5; echo other" },
  coral.task{ id = "after", cmd = "echo after", depends_on = { "slow" } },]])
    run = start_run(dir)
    local s = wait_status(dir, function(st) return (st.counts.running or 0) == 2 end)
    assert.equal("running", s.by_id.slow.status)
    assert.is_true(math.tointeger(s.by_id.slow.pid) > 0)
    assert.is_true(s.by_id.other.elapsed >= 0)
    assert.equal("pending", s.by_id.after.status)
    local text = ctl(dir, "status")
    assert.equal(0, text.code)
    assert.matches("slow%s+running%s+pid %d+", text.stdout)

    local r = ctl(dir, "cancel", "slow")
    assert.equal(0, r.code, r.stderr)
    s = wait_status(dir, function(st) return st.by_id.slow.status == "failed" end)
    assert.matches("cancelled by coral ctl", s.by_id.slow.error)
    assert.equal("skipped", s.by_id.after.status)
    assert.equal("running", s.by_id.other.status)   -- the others go on

    -- refusals: exit 1 with the reason
    r = ctl(dir, "cancel", "slow")
    assert.equal(1, r.code)
    assert.matches("task 'slow' already ended %(failed%)", r.stderr)
    r = ctl(dir, "retry", "other")
    assert.equal(1, r.code)
    assert.matches("only a failed, cancelled or skipped task can be retried", r.stderr)
    r = ctl(dir, "cancel", "nope")
    assert.equal(1, r.code)
    assert.matches("no task 'nope' in the run", r.stderr)

    H.write_file(dir .. "/again", "")
    r = ctl(dir, "retry", "after")   -- a skipped task: the failure that skipped it runs again
    assert.equal(0, r.code, r.stderr)
    assert.equal("runs again: slow, after\n", r.stdout)
    assert.equal(0, H.wait_for(run, 20))
    local sum = summary(dir)
    assert.equal("succeeded", sum.by_id.slow.status)
    assert.equal("succeeded", sum.by_id.after.status)
    assert.equal(2, math.tointeger(sum.by_id.slow.attempts))
    local outcomes = {}
    for _, e in ipairs(journal(dir)) do
      if e.event == "end" and e.task == "slow" then outcomes[#outcomes + 1] = e.outcome end
    end
    assert.same({ "cancelled", "succeeded" }, outcomes)
    assert.is_nil(uv.fs_stat(run_dir(dir) .. "/control.sock"))   -- gone with the run
    local actions = {}
    for _, e in ipairs(journal(dir)) do
      if e.event == "control" then
        actions[#actions + 1] = e.action .. " " .. tostring(e.target)
        assert.equal(uv.getuid(), math.tointeger(e.uid))
        assert.is_true(math.tointeger(e.pid) > 0)
      end
    end
    assert.same({ "cancel slow", "retry after" }, actions)
  end)

  it("workers 1 mid-run: the tasks that start after it run one at a time", function()
    local tasks = {}
    for i = 1, 8 do tasks[#tasks + 1] = string.format('  coral.task{ id = "t%d", cmd = "sleep 0.4" },', i) end
    write_plan(dir, table.concat(tasks, "\n"))
    run = start_run(dir, { "--max-workers", "4" })
    wait_status(dir, function(st) return (st.counts.running or 0) == 4 end)
    local r = ctl(dir, "workers", "1")
    assert.equal(0, r.code, r.stderr)
    assert.equal("max_workers 1\n", r.stdout)
    assert.equal(0, H.wait_for(run, 30))
    local at, spans = nil, {}
    for _, e in ipairs(journal(dir)) do
      if e.event == "control" and e.action == "workers" then at = e.t end
      if at and e.event == "start" then spans[e.task] = { e.t } end
      if e.event == "end" and spans[e.task] then spans[e.task][2] = e.t end
    end
    local list = {}
    for _, sp in pairs(spans) do list[#list + 1] = sp end
    assert.equal(4, #list)   -- the first four started before it
    table.sort(list, function(a, b) return a[1] < b[1] end)
    for i = 2, #list do
      assert.is_true(list[i][1] >= list[i - 1][2] - 0.01, "two tasks ran at once after workers 1")
    end
    assert.equal(2, ctl(dir, "workers", "zero").code)
  end)

  it("answers at once while short tasks keep ending", function()
    -- each exit starts the next task at once: the loop must still come round to the socket
    local tasks = {}
    for i = 1, 6000 do tasks[#tasks + 1] = string.format('  coral.task{ id = "t%d", cmd = "true" },', i) end
    write_plan(dir, table.concat(tasks, "\n"))
    run = start_run(dir, { "--max-workers", "4" })
    H.wait_until(function()
      return uv.fs_stat(dir .. "/.coral/runs") and #H.entries(dir .. "/.coral/runs") > 0
        and uv.fs_stat(run_dir(dir) .. "/control.sock") ~= nil
    end, 20)
    local t0 = uv.hrtime()
    local st = status(dir)
    local took = (uv.hrtime() - t0) / 1e9
    assert.is_true((st.counts.pending or 0) > 0, "the run was over: nothing to show")
    assert.is_true(took < 2, string.format("status took %.2f s", took))
    assert.equal(0, H.wait_for(run, 60))
  end)

  it("pause starts nothing new until resume; running tasks go on; tail; limit", function()
    write_plan(dir, [[
  coral.task{ id = "a", cmd = "echo one; echo two; echo three; sleep 1.5; echo a" },
  coral.task{ id = "b", cmd = "echo b", depends_on = { "a" } },]])
    run = start_run(dir)
    wait_status(dir, function(st) return st.by_id.a.status == "running" end)
    assert.equal(0, ctl(dir, "pause").code)
    wait_status(dir, function(st) return st.by_id.a.last_line == "three" end)
    local r = ctl(dir, "tail", "a", "-n", "2")
    assert.equal(0, r.code, r.stderr)
    assert.equal("two\nthree\n", r.stdout)
    r = ctl(dir, "limit", "api=2")
    assert.equal(0, r.code, r.stderr)
    r = ctl(dir, "limit", "api=-1")
    assert.equal(2, r.code)
    local s = wait_status(dir, function(st) return st.by_id.a.status == "succeeded" end)
    assert.is_true(s.paused)
    uv.sleep(500)
    s = status(dir)
    assert.equal("pending", s.by_id.b.status)
    assert.matches("paused", s.by_id.b.held)
    assert.matches("PAUSED", ctl(dir, "status").stdout)
    assert.equal(1, ctl(dir, "pause").code)
    assert.equal(0, ctl(dir, "resume").code)
    assert.equal(0, H.wait_for(run, 20))
    local resumed, started
    for _, e in ipairs(journal(dir)) do
      if e.event == "control" and e.action == "resume" then resumed = e.t end
      if e.event == "start" and e.task == "b" then started = e.t end
    end
    assert.is_true(started >= resumed)
  end)

  it("add runs the tasks of a file; an unknown dependency or a cycle is refused and changes nothing", function()
    write_plan(dir, [[
  coral.task{ id = "a", cmd = "sleep 1.5; echo a" },]])
    H.write_file(dir .. "/cycle.lua", [[
local coral = require "coral"
return { coral.task{ id = "y", cmd = "true", depends_on = { "z" } },
         coral.task{ id = "z", cmd = "true", depends_on = { "y" } } }]])
    H.write_file(dir .. "/unknown.lua", [[
return { { id = "w", cmd = "true", depends_on = { "nowhere" } } }]])
    H.write_file(dir .. "/more.lua", [[
local coral = require "coral"
return coral.task{ id = "late", cmd = "echo late", depends_on = { "a" } }]])
    run = start_run(dir)
    wait_status(dir, function(st) return st.by_id.a.status == "running" end)
    local r = ctl(dir, "add", dir .. "/cycle.lua")
    assert.equal(1, r.code)
    assert.matches("dependency cycle: y %-> z %-> y", r.stderr)
    r = ctl(dir, "add", dir .. "/unknown.lua")
    assert.equal(1, r.code)
    assert.matches("unknown task 'nowhere'", r.stderr)
    assert.equal(2, ctl(dir, "add", dir .. "/none.lua").code)
    r = ctl(dir, "add", dir .. "/more.lua")
    assert.equal(0, r.code, r.stderr)
    assert.equal("added: late\n", r.stdout)
    assert.equal(0, H.wait_for(run, 20))
    local sum = summary(dir)
    assert.equal("succeeded", sum.by_id.late.status)
    assert.is_nil(sum.by_id.y)
    assert.is_nil(sum.by_id.w)
    assert.equal(2, math.tointeger(sum.tasks))
  end)

  it("approval gates: approve starts it, reject fails it and skips its dependents, the timeout rejects", function()
    write_plan(dir, [[
  coral.task{ id = "build", cmd = "echo built" },
  coral.task{ id = "deploy", cmd = "echo deployed", depends_on = { "build" },
              approve = { prompt = "deploy to production?" } },
  coral.task{ id = "merge", cmd = "echo merged", depends_on = { "build" }, approve = true },
  coral.task{ id = "announce", cmd = "echo announced", depends_on = { "merge" } },
  coral.task{ id = "spend", cmd = "echo spent", approve = { timeout = 1 } },]])
    run = start_run(dir)
    local s = wait_status(dir, function(st)
      return st.by_id.deploy.status == "awaiting_approval" and st.by_id.merge.status == "awaiting_approval"
    end)
    assert.equal("deploy to production?", s.by_id.deploy.prompt)
    assert.equal("succeeded", s.by_id.deploy.inputs.build.status)
    local text = ctl(dir, "status").stdout
    assert.matches("deploy%s+awaiting approval", text)
    assert.matches("coral ctl approve deploy", text)
    assert.equal(2, ctl(dir, "reject", "merge").code)   -- a reason is needed
    assert.equal(1, ctl(dir, "approve", "build").code)  -- no gate
    local r = ctl(dir, "approve", "deploy", "--note", "looks good")
    assert.equal(0, r.code, r.stderr)
    r = ctl(dir, "reject", "merge", "--reason", "not this week")
    assert.equal(0, r.code, r.stderr)
    assert.equal(1, H.wait_for(run, 20))
    local sum = summary(dir)
    assert.equal("succeeded", sum.by_id.deploy.status)
    assert.equal("failed", sum.by_id.merge.status)
    assert.equal("rejected: not this week", sum.by_id.merge.error)
    assert.equal("skipped", sum.by_id.announce.status)
    assert.equal("failed", sum.by_id.spend.status)
    assert.matches("no approval within 1s", sum.by_id.spend.error)
    local note
    for _, e in ipairs(journal(dir)) do
      if e.event == "control" and e.action == "approve" then note = e.note end
    end
    assert.equal("looks good", note)
    local rep = H.run({ "report", "--dir", dir })   -- the report lists them
    assert.equal(0, rep.code, rep.stderr)
    local html = assert(H.read_file(run_dir(dir) .. "/report.html"))
    assert.matches("Live control", html)
    assert.matches("<td>approve</td><td>deploy</td><td>note looks good</td>", html)
    assert.matches("<td>reject</td><td>merge</td><td>reason not this week</td>", html)
  end)

  it("--approve-all passes every gate", function()
    write_plan(dir, [[
  coral.task{ id = "deploy", cmd = "echo deployed", approve = true },]])
    local r = H.run({ dir .. "/plan.lua", "x", "--dir", dir, "--quiet", "--no-report", "--approve-all" })
    assert.equal(0, r.code, r.stderr)
  end)

  it("an approval survives kill -9 and resume; a stale socket is no running run", function()
    write_plan(dir, [[
  coral.task{ id = "a", cmd = "sleep 1" },
  coral.task{ id = "deploy", cmd = "echo deployed", depends_on = { "a" }, approve = true },]])
    run = start_run(dir)
    wait_status(dir, function(st) return st.by_id.a.status == "running" end)
    assert.equal(0, ctl(dir, "pause").code)
    assert.equal(0, ctl(dir, "approve", "deploy").code)   -- before it waits: it will not
    assert.equal(0, ctl(dir, "workers", "2").code)
    wait_status(dir, function(st) return st.by_id.a.status == "succeeded" end)
    uv.kill(run.pid, "sigkill")
    H.wait_for(run, 5)
    assert.is_truthy(uv.fs_stat(run_dir(dir) .. "/control.sock"))   -- left by the killed coral
    local r = ctl(dir, "status")
    assert.equal(3, r.code)
    assert.matches("no running run", r.stderr)
    r = H.run({ "resume", "--dir", dir, "--quiet" }, { timeout = 30 })
    assert.equal(0, r.code, r.stderr)
    local sum = summary(dir)
    assert.equal("succeeded", sum.by_id.deploy.status)
    local workers = {}
    for _, e in ipairs(journal(dir)) do
      assert.not_equal("awaiting_approval", e.event)
      if e.event == "run" then workers[#workers + 1] = math.tointeger(e.max_workers) end
    end
    assert.same({ 4, 2 }, workers)   -- the resumed session keeps the workers set by ctl
  end)

  it("serves a run dir whose socket path is longer than a socket address holds", function()
    dir = dir .. "/" .. string.rep("d", 100)
    assert(uv.fs_mkdir(dir, tonumber("700", 8)))
    write_plan(dir, [[
  coral.task{ id = "a", cmd = "sleep 30" },]])
    run = start_run(dir)
    wait_status(dir, function(st) return st.by_id.a.status == "running" end)
    assert.is_true(#(run_dir(dir) .. "/control.sock") > 107)
    assert.equal(0, ctl(dir, "cancel", "a").code)
    assert.equal(1, H.wait_for(run, 20))
  end)

  it("exits 3 without a running run, 2 for a usage mistake", function()
    local r = ctl(dir, "status")
    assert.equal(3, r.code)
    assert.matches("no running run in ", r.stderr)
    r = ctl(dir, "frobnicate")
    assert.equal(2, r.code)
    assert.matches("unknown ctl command 'frobnicate'", r.stderr)
    assert.equal(2, ctl(dir, "cancel").code)
    assert.equal(2, ctl(dir, "limit", "api").code)
    assert.equal(3, H.run({ "attach", "--dir", dir }).code)
    -- a mistake in a gate is a recipe mistake: exit 2, its file:line, nothing written
    write_plan(dir, [[
  coral.task{ id = "g", cmd = "true", approve = { promt = "deploy?" } },]])
    r = H.run({ dir .. "/plan.lua", "x", "--dir", dir })
    assert.equal(2, r.code)
    assert.matches("plan.lua:3: coral.task: approve: unknown option 'promt' %(did you mean 'prompt'%?", r.stderr)
    assert.is_nil(uv.fs_stat(dir .. "/.coral"))
  end)

  it("refuses a connection from another uid (peer credentials)", function()
    if uv.getuid() ~= 0 or not uv.fs_stat("/usr/bin/setpriv") then
      return pending("needs root and setpriv to run the run under another uid")
    end
    -- the run belongs to nobody; root can reach its socket (no permission stops root), and
    -- the peer-credential check is what refuses it
    assert(uv.fs_chown(dir, 65534, 65534))
    write_plan(dir, [[
  coral.task{ id = "a", cmd = "sleep 30" },]])
    run = H.start({ "--reuid=65534", "--regid=65534", "--clear-groups", H.coral, dir .. "/plan.lua", "x",
                    "--dir", dir, "--quiet", "--no-report" }, { exe = "/usr/bin/setpriv" })
    H.wait_until(function()
      return uv.fs_stat(dir .. "/.coral/runs") and #H.entries(dir .. "/.coral/runs") > 0
        and uv.fs_stat(run_dir(dir) .. "/control.sock") ~= nil
    end)
    local st = uv.fs_stat(run_dir(dir) .. "/control.sock")
    assert.equal(tonumber("600", 8), st.mode & tonumber("777", 8))
    local r = ctl(dir, "status")
    assert.equal(1, r.code)
    assert.matches("refused: uid 0 is not the uid of the run %(65534%)", r.stderr)
    r = ctl(dir, "cancel", "a")
    assert.equal(1, r.code)
    uv.kill(run.pid, "sigterm")
    assert.is_not_nil(H.wait_for(run, 20))
  end)
end)

describe("coral attach", function()
  local dir, run, tmux_socket
  before_each(function() dir = H.tmpdir() end)
  after_each(function()
    if tmux_socket then
      H.run({ "-S", tmux_socket, "kill-server" }, { exe = "/usr/bin/tmux" })
      tmux_socket = nil
    end
    if run and run.code == nil then uv.kill(run.pid, "sigkill"); H.wait_for(run, 5) end
    run = nil
  end)

  local function tmux(...)
    local r = H.run({ "-S", tmux_socket, ... }, { exe = "/usr/bin/tmux" })
    assert(r.code == 0, r.stderr)
    return r.stdout
  end

  local function wait_screen(text)
    local deadline = uv.hrtime() + 10e9
    local screen
    repeat
      screen = tmux("capture-pane", "-p", "-S", "-200")
      if screen:find(text, 1, true) then return screen end
      uv.sleep(50)
    until uv.hrtime() > deadline
    error("timed out waiting for " .. text .. " on the screen:\n" .. screen)
  end

  local function line(text)
    tmux("send-keys", "-l", text)
    tmux("send-keys", "Enter")
  end

  it("inspects, cancels and adds inside the running run, and prints its events above the prompt", function()
    if not uv.fs_stat("/usr/bin/tmux") then return pending("needs tmux") end
    write_plan(dir, [[
  coral.task{ id = "slow", cmd = "sleep 30" },
  coral.task{ id = "steady", cmd = "sleep 4" },]])
    run = start_run(dir)
    wait_status(dir, function(st) return (st.counts.running or 0) == 2 end)
    tmux_socket = dir .. "/tmux.sock"
    tmux("-f", "/dev/null", "new-session", "-d", "-x", "150", "-y", "50", "env", "CORAL_HISTORY=" .. dir .. "/history",
         "TERM=xterm", H.coral, "attach", "--dir", dir)
    wait_screen("attached to run")
    wait_screen("coral>")
    line("run:status().counts")
    wait_screen("running = 2")
    line("run:cancel('slow')")
    wait_screen("] end slow cancelled")                   -- an event, printed as it happened
    line("run:add(coral.task{ id = 'late', cmd = 'echo late' })")
    wait_screen('tasks = { "late" }')
    wait_screen("] start late")
    line("run:retry('steady')")
    wait_screen("only a failed, cancelled or skipped task can be retried")   -- nil, why
    line("error('oops')")
    wait_screen("attach:1: oops")
    line("run:task('late').status")
    wait_screen('"succeeded"')
    tmux("send-keys", "-l", "run:canc")
    tmux("send-keys", "Tab")
    wait_screen("coral> run:cancel")                      -- completion knows the run object
    tmux("send-keys", "C-u")
    tmux("send-keys", "C-d")
    assert.equal(1, H.wait_for(run, 20))   -- slow was cancelled
    local sum = summary(dir)
    assert.equal("succeeded", sum.by_id.late.status)
    assert.equal("succeeded", sum.by_id.steady.status)
  end)
end)
