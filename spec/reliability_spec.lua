-- Nothing lost: kill and resume, Ctrl-C, one run per project, bad input, secrets.
local H = require("spec.helper").guard(_ENV)
local start, wait_for, wait_until = H.start, H.wait_for, H.wait_until
local uv = require "luv"
local cjson = require "cjson"

local function journal_count(dir, event)
  local n = 0
  local runs = uv.fs_scandir(dir .. "/.coral/runs")
  local run = runs and uv.fs_scandir_next(runs)
  if not run then return 0 end
  for line in (H.read_file(dir .. "/.coral/runs/" .. run .. "/journal.jsonl") or ""):gmatch("[^\n]+") do
    local e = cjson.decode(line)
    if e.event == event and (event ~= "end" or e.outcome == "succeeded") then n = n + 1 end
  end
  return n, dir .. "/.coral/runs/" .. run
end

local COUNTER_RECIPE = [[
local coral = require "coral"
local t = coral.task
return function()
  local tasks = {}
  for i = 1, 30 do
    tasks[i] = t("w", "task " .. i, { id = "t" .. i,
      cmd = "sleep 0.15; echo $CORAL_TASK_ID >> counter" })
  end
  return coral.plan(tasks)
end
]]

describe("reliability", function()
  it("resumes after SIGKILL without running finished tasks again", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", COUNTER_RECIPE)
    local r = start({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--max-workers", "3" })
    wait_until(function() return journal_count(dir, "end") >= 8 end)
    uv.kill(r.pid, "sigkill")
    wait_for(r)
    local finished, run_dir = journal_count(dir, "end")
    local done_before = {}
    for line in H.read_file(run_dir .. "/journal.jsonl"):gmatch("[^\n]+") do
      local e = cjson.decode(line)
      if e.event == "end" and e.outcome == "succeeded" then done_before[e.task] = true end
    end
    local why = H.run { "why", "t1", "--dir", dir }
    assert.matches("t1 will not run again: it finished successfully", why.stdout)
    local resumed = H.run({ "resume", "--dir", dir, "--quiet" })
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    local lines = {}
    for id in H.read_file(dir .. "/counter"):gmatch("[^\n]+") do lines[id] = (lines[id] or 0) + 1 end
    for i = 1, 30 do assert.truthy(lines["t" .. i], "t" .. i .. " never ran") end
    for id in pairs(done_before) do assert.are.equal(1, lines[id], id .. " ran twice") end
    assert.is_true(finished >= 8)
    local summary = cjson.decode(H.read_file(run_dir .. "/summary.json"))
    assert.are.equal(30, summary.succeeded)
    -- Every start has its end: the attempts coral lost end as interrupted, recorded by the
    -- resume; the views and the summary then tell one story.
    local open = {}
    for line in H.read_file(run_dir .. "/journal.jsonl"):gmatch("[^\n]+") do
      local e = cjson.decode(line)
      local key = e.task and (e.task .. "#" .. tostring(e.attempt))
      if e.event == "start" then open[key] = true elseif e.event == "end" then open[key] = nil end
    end
    assert.are.same({}, open)
    local run = require("coral.view.timeline").load(run_dir)
    assert.are.equal(30, run.figures.succeeded)
    assert.are.equal(0, run.figures.failed)
    assert.near(summary.speedup, run.figures.speedup, 1e-6)
    local hist = require("coral.view.history").runs(dir)
    assert.near(summary.speedup, hist[1].speedup, 1e-6)
    for _, a in ipairs(run.attempts) do
      assert.is_true(a.finish >= a.start and a.finish <= run.ended_at + 1e-3, a.task .. " ends after the run")
      if a.outcome == "interrupted" then assert.is_true(a.n == 1, "only the first attempt was lost") end
    end
  end)

  it("stops on Ctrl-C: exit 130, no process left, summary written, and resume completes", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("a", "spawns grandchildren", { id = "a", cmd = "sleep 30 & sleep 30 & wait" }),
  t("b", "spawns grandchildren", { id = "b", cmd = "sh -c 'sleep 30' & wait" }),
  t("c", "after a", { id = "c", cmd = "true", depends_on = { "a" } }),
}
]])
    local r = start({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" })
    wait_until(function() return journal_count(dir, "start") >= 2 end)
    local t0 = uv.hrtime()
    uv.kill(r.pid, "sigint")
    assert.are.equal(130, wait_for(r, 15))
    assert.is_true((uv.hrtime() - t0) / 1e9 < 5 + 2, "exit within the grace period plus a margin")
    local _, run_dir = journal_count(dir, "start")
    local summary = cjson.decode(H.read_file(run_dir .. "/summary.json"))
    assert.are.equal("interrupted", summary.status)
    assert.are.same({}, H.leftover_processes())
    -- the stopped tasks are unfinished, not failed: a plain resume runs them again
    assert.are.equal("interrupted", summary.results.a.status)
    assert.are.equal("interrupted", summary.results.b.status)
    assert.are.equal(2, summary.interrupted_tasks)
    assert.are.equal(0, summary.failed)
    H.write_file(dir .. "/r.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("a", "spawns grandchildren", { id = "a", cmd = "true" }),
  t("b", "spawns grandchildren", { id = "b", cmd = "true" }),
  t("c", "after a", { id = "c", cmd = "true", depends_on = { "a" } }),
}
]])
    local resumed = H.run({ "resume", "--dir", dir, "--quiet" })
    assert.are.equal(0, resumed.code, resumed.stdout .. resumed.stderr)
    summary = cjson.decode(H.read_file(run_dir .. "/summary.json"))
    assert.are.equal(3, summary.succeeded)
  end)

  it("ends a script that runs a plan itself on Ctrl-C too: exit 130, one line, the records kept", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/s.lua", string.format([[
local coral = require "coral"
local s = coral.runner({ project_dir = %q, output = "quiet" }):execute_plan(coral.plan {
  coral.task("a", "x", { id = "a", cmd = "sleep 30" }) })
print("the script went on after the run", s.status)
]], dir))
    local r = start({ dir .. "/s.lua" })
    wait_until(function() return journal_count(dir, "start") >= 1 end)
    uv.kill(r.pid, "sigint")
    assert.are.equal(130, wait_for(r, 15))
    local output = table.concat(r.output)   -- stdout and stderr, as they came
    assert.are.equal("coral: interrupted by SIGINT\n", output)
    local _, run_dir = journal_count(dir, "start")
    local summary = cjson.decode(H.read_file(run_dir .. "/summary.json"))
    assert.are.equal("interrupted", summary.status)
    assert.are.equal("interrupted", summary.results.a.status)
    assert.are.same({}, H.leftover_processes())
  end)

  it("refuses a second run in the same project, naming the running one", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", 'local t = require("coral").task\nreturn require("coral").plan { t("s", "x", { cmd = "sleep 3" }) }\n')
    local r = start({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" })
    wait_until(function() return journal_count(dir, "start") >= 1 end)
    local second = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" })
    assert.are.equal(2, second.code)
    assert.matches("another coral run is in progress in " .. dir:gsub("%p", "%%%0") ..
                   ": run [%w%-]+ %(pid " .. math.tointeger(r.pid) .. "%)", second.stderr)
    uv.kill(r.pid, "sigterm")
    assert.are.equal(130, wait_for(r))
    -- the lock died with its holder: a new run starts at once
    H.write_file(dir .. "/r.lua", 'local t = require("coral").task\nreturn require("coral").plan { t("s", "x", { cmd = "true" }) }\n')
    assert.are.equal(0, H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" }).code)
  end)

  it("takes over the lock of a coral killed with SIGKILL", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", 'local t = require("coral").task\nreturn require("coral").plan { t("s", "x", { cmd = "sleep 0.3" }) }\n')
    local r = start({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" })
    wait_until(function() return journal_count(dir, "start") >= 1 end)
    uv.kill(r.pid, "sigkill")
    wait_for(r)
    uv.sleep(400)   -- the orphaned task ends by itself
    assert.are.equal(0, H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" }).code)
  end)

  it("keeps secrets out of every file under .coral", function()
    local dir = H.tmpdir()
    local secret = "s3cr3t-" .. math.random(1e9)
    H.write_file(dir .. "/r.lua", 'local t = require("coral").task\nreturn require("coral").plan { t("s", "x", { cmd = "test -n \\"$MY_API_KEY\\"" }), t("u", "y", { cmd = "exit 1" }) }\n')
    local env = { "MY_API_KEY=" .. secret, "GITHUB_TOKEN=" .. secret, "PATH=" .. os.getenv("PATH"),
                  "HOME=" .. dir }
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--retries", "0" }, { env = env })
    assert.are.equal(1, r.code)
    local function scan(path)
      local st = uv.fs_stat(path)
      if st.type == "directory" then
        local d = uv.fs_scandir(path)
        while true do
          local name = uv.fs_scandir_next(d)
          if not name then break end
          scan(path .. "/" .. name)
        end
      else
        assert.falsy((H.read_file(path) or ""):find(secret, 1, true), "secret found in " .. path)
      end
    end
    scan(dir .. "/.coral")
    assert.are.equal(tonumber("700", 8), uv.fs_stat(dir .. "/.coral").mode & tonumber("777", 8))
  end)

  it("ignores a journal line cut short by a crash", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", 'local t = require("coral").task\nreturn require("coral").plan { t("a", "x", { cmd = "true" }), t("b", "y", { cmd = "true", depends_on = { "a" } }) }\n')
    assert.are.equal(0, H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" }).code)
    local _, run_dir = journal_count(dir, "start")
    local text = H.read_file(run_dir .. "/journal.jsonl")
    -- keep up to a's end, then half of the next line
    local cut = text:find('"event":"start"[^\n]*"task":"b"') or text:find('"task":"b"[^\n]*"event":"start"')
    local line_start = text:sub(1, cut):match(".*\n()") or 1
    H.write_file(run_dir .. "/journal.jsonl", text:sub(1, line_start + 10))
    uv.fs_unlink(run_dir .. "/summary.json")
    local r = H.run({ "resume", "--dir", dir, "--quiet" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("Succeeded%s+2", r.stdout)
  end)

  it("keeps a project state broken by hand aside and says where it broke", function()
    local dir = H.tmpdir()
    uv.fs_mkdir(dir .. "/.coral", tonumber("700", 8))
    H.write_file(dir .. "/.coral/project_state.yaml", 'project: "x"\nagents:\n  a: [unclosed\n')
    H.write_file(dir .. "/r.lua", 'local t = require("coral").task\nreturn require("coral").plan { t("a", "x", { cmd = "true" }) }\n')
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("project_state%.yaml:3: ", r.stderr)
    local kept = false
    local d = uv.fs_scandir(dir .. "/.coral")
    while true do
      local name = uv.fs_scandir_next(d)
      if not name then break end
      if name:match("^project_state%.yaml%.broken%-") then kept = true end
    end
    assert.is_true(kept)
    assert.truthy(require("lyaml").load(H.read_file(dir .. "/.coral/project_state.yaml")))
  end)

  it("ends a plain script on SIGINT with exit 130, killing its children", function()
    local r = start({ "-e", 'local p = require("coral.proc").spawn { argv = { "sleep", "30" } }\n' ..
                            'io.stdout:write("started\\n"); io.stdout:flush(); p:wait()' })
    wait_until(function() return table.concat(r.output):find("started") ~= nil end)
    uv.kill(r.pid, "sigint")
    assert.are.equal(130, wait_for(r))
    assert.matches("interrupted by SIGINT", table.concat(r.output))
  end)

  it("reports an unusable project dir with exit 2", function()
    local r = H.run { "run", "full_stack", "x", "--dir", "/nonexistent/project", "--agent", "sim" }
    assert.are.equal(2, r.code)
    assert.matches("project dir /nonexistent/project is not a directory", r.stderr)
  end)

  it("handles binary output and an agent that closes stdin early", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local t = require("coral").task
return require("coral").plan {
  t("bin", "binary", { id = "bin", cmd = "head -c 5000 /dev/urandom; printf '\\377\\376'" }),
  t("closer", "closes stdin", { id = "closer", cmd = "exec 0<&-; echo ok" }),
  t("after", "after", { id = "after", cmd = "cat >/dev/null; echo done", depends_on = { "bin", "closer" } }),
}
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--mode", "pipeline" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
  end)
end)

describe("a full disk", function()
  it("stops the run with a clear error and leaves every record valid", function()
    local dir = H.tmpdir()
    local mnt = dir .. "/small"
    uv.fs_mkdir(mnt, tonumber("755", 8))
    local ok = os.execute("mount -t tmpfs -o size=256k tmpfs " .. mnt .. " 2>/dev/null")
    if not ok then
      pending("cannot mount a small tmpfs here (needs root)")
      return
    end
    local done, r = pcall(function()
      H.write_file(dir .. "/r.lua", [[
local t = require("coral").task
local tasks = { t("filler", "fill the disk", { id = "fill", cmd = "head -c 400000 /dev/zero" }) }
for i = 1, 20 do tasks[#tasks + 1] = t("w", "after", { id = "w" .. i, cmd = "echo " .. i, depends_on = { "fill" } }) end
return require("coral").plan(tasks)
]])
      return H.run({ dir .. "/r.lua", "x", "--dir", mnt, "--retries", "2", "--on-failure", "continue" })
    end)
    local journal_ok = true
    local runs = uv.fs_scandir(mnt .. "/.coral/runs")
    local run = runs and uv.fs_scandir_next(runs)
    local text = run and H.read_file(mnt .. "/.coral/runs/" .. run .. "/journal.jsonl") or ""
    for line in text:gmatch("[^\n]*\n") do
      if not require("cjson.safe").decode(line) then journal_ok = false end
    end
    os.execute("umount " .. mnt)
    assert(done, r)
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("no space left on device", r.stderr)
    assert.is_true(journal_ok, "a journal line is torn")
    assert.is_true(#text > 0)
  end)
end)

describe("an agent that floods its output", function()
  it("keeps output_cap bytes of it and says where it was cut", function()
    local coral = require "coral"
    local dir = H.tmpdir()
    local s = coral.runner({ project_dir = dir, output = "quiet", output_cap = 100000, retries = 0 })
      :execute_plan(coral.plan { coral.task("flood", "floods", { id = "flood", cmd = "head -c 3000000 /dev/zero" }) })
    assert.are.equal(1, s.succeeded)
    local out = H.read_file(s.results.flood.output_file)
    assert.are.equal(100000, out:find("\n[coral: stdout cut at 100000 bytes; 2900000 more bytes were dropped]\n", 1, true) - 1)
  end)
end)

describe("an agent that leaves processes behind", function()
  it("has its whole process group killed when it exits, and many children are no trouble", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/r.lua", [[
local t = require("coral").task
return require("coral").plan {
  t("forker", "forks 50 children and exits", { id = "forker",
    cmd = "i=0; while [ $i -lt 50 ]; do sleep 30 & i=$((i+1)); done; echo started" }),
}
]])
    local r = H.run({ dir .. "/r.lua", "x", "--dir", dir, "--quiet" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    -- the helper's after_each fails the spec if any of the 50 sleeps is still running
  end)
end)

describe("a missing agent CLI", function()
  it("is one clear error with exit 2, and nothing written", function()
    local dir = H.tmpdir()
    local r = H.run({ "run", "full_stack", "x", "--agent", "codex", "--dir", dir, "--quiet" },
                    { env = { "PATH=/nonexistent", "HOME=" .. dir } })
    assert.are.equal(2, r.code)
    assert.matches("task 'project%-architect' needs the codex CLI %(driver codex%), which is not on PATH", r.stderr)
    assert.are.same({}, H.entries(dir))
  end)
end)
