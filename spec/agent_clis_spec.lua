-- The claude and codex drivers with the real CLIs (pinned versions installed once by
-- scripts/install-test-clis into a cache outside the tree), offline: both talk to
-- spec/fake_api.lua, a stand-in of the model APIs on loopback inside this process.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local fake_api = require "spec.fake_api"

-- Where the CLIs are (installing them if missing; make test does it first).
local clis = {}
do
  local r = H.run({ "--paths" }, { exe = H.root .. "/scripts/install-test-clis", timeout = 600 })
  assert(r.code == 0, "scripts/install-test-clis failed: " .. r.stderr)
  for name, path in r.stdout:gmatch("(%w+)=([^\n]+)") do clis[name] = path end
end

local function dirname(p) return p:match("^(.*)/[^/]*$") end

-- The environment of coral and so of the CLIs: only what they need, pointed at the stand-in.
local function env_for(api, home)
  H.write_file(home .. "/.keep", "")
  return {
    "PATH=" .. dirname(clis.claude) .. ":" .. dirname(clis.codex) .. ":" .. os.getenv("PATH"),
    "HOME=" .. home, "TMPDIR=" .. home, "NO_COLOR=1", "LANG=C.UTF-8",
    "CORAL_SPEC_MARK=" .. os.getenv("CORAL_SPEC_MARK"),
    "ANTHROPIC_BASE_URL=" .. api.url, "ANTHROPIC_API_KEY=sk-ant-coral-test",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "CLAUDE_CODE_MAX_RETRIES=0",
    "CLAUDE_CONFIG_DIR=" .. home .. "/claude", "DISABLE_AUTOUPDATER=1",
    "CODEX_HOME=" .. home .. "/codex", "OPENAI_API_KEY=sk-coral-test",
  }
end

-- A project dir with a codex driver of its own (.coral/drivers/): codex pointed at the
-- stand-in through a custom model provider given with -c (no websockets, no retries).
local function project(api)
  local dir = H.tmpdir()
  local home = H.tmpdir()
  for _, d in ipairs { "/.coral", "/.coral/drivers" } do assert(require("luv").fs_mkdir(dir .. d, 448)) end
  assert(require("luv").fs_mkdir(home .. "/codex", 448))
  H.write_file(dir .. "/.coral/drivers/codex_local.lua", string.format([[
return require("coral.drivers").codex {
  name = "codex-local",
  args = { "-m", "gpt-test", "-c", 'model_provider="coraltest"',
           "-c", 'model_providers.coraltest={name="coraltest",base_url="%s/v1",wire_api="responses",env_key="OPENAI_API_KEY",request_max_retries=0,stream_max_retries=0,supports_websockets=false}' },
}
]], api.url))
  return dir, env_for(api, home)
end

-- `env` with VAR=value set (replaced if there).
local function with_env(env, var, value)
  local out = {}
  for _, e in ipairs(env) do
    if not e:find("^" .. var .. "=") then out[#out + 1] = e end
  end
  out[#out + 1] = var .. "=" .. value
  return out
end

-- The run's journal, as a list of events.
local function journal_of(run_dir)
  local events = {}
  for line in H.read_file(run_dir .. "/journal.jsonl"):gmatch("[^\n]+") do events[#events + 1] = cjson.decode(line) end
  return events
end

-- The events of `task` named `name`, in order; and the index of its first end event.
local function events_of(events, task, name)
  local out, end_at = {}, nil
  for i, e in ipairs(events) do
    if e.task == task and e.event == name then out[#out + 1] = e; out[#out].index = i end
    if e.task == task and e.event == "end" and not end_at then end_at = i end
  end
  return out, end_at
end

local function recipe(dir, body)
  H.write_file(dir .. "/plan.lua", "local coral = require 'coral'\nlocal t = coral.task\n" .. body)
  return dir .. "/plan.lua"
end

local function summary_of(dir)
  local runs = dir .. "/.coral/runs"
  local handle = require("luv").fs_scandir(runs)
  local last
  while handle do
    local name = require("luv").fs_scandir_next(handle)
    if not name then break end
    if not last or name > last then last = name end
  end
  return cjson.decode(H.read_file(runs .. "/" .. last .. "/summary.json")), runs .. "/" .. last
end

-- Does the request's prompt carry `marker`? A task's own text follows "# Your task" (every
-- prompt also lists the other tasks of the plan, under "# The team").
local function has(req, marker) return req.text:find(marker, 1, true) ~= nil end
local function task_is(req, marker) return has(req, "# Your task\n\n" .. marker) end

describe("the real agent CLIs against a local stand-in of the model APIs", function()
  local api
  after_each(function()
    if api then api.close(); api = nil end
  end)

  it("hands each task's output to its dependent through claude, codex and claude again", function()
    api = fake_api.start(function(req)
      if task_is(req, "STEP-ONE") then return { text = "ALPHA-RESULT: the architecture is a monolith." } end
      if task_is(req, "STEP-TWO") then
        return { text = has(req, "ALPHA-RESULT") and "BETA-RESULT: built on ALPHA." or "BETA saw no handoff" }
      end
      if task_is(req, "STEP-THREE") then
        return { text = has(req, "BETA-RESULT") and "GAMMA-RESULT: reviewed BETA." or "GAMMA saw no handoff" }
      end
      return { text = "unexpected request" }
    end)
    local dir, env = project(api)
    local plan = recipe(dir, [[
return coral.plan {
  t { id = "one", agent = "project-architect", task = "STEP-ONE design it", driver = "claude" },
  t { id = "two", agent = "backend-developer", task = "STEP-TWO build it", driver = "codex-local", depends_on = { "one" } },
  t { id = "three", agent = "qa-testing", task = "STEP-THREE test it", driver = "claude", depends_on = { "two" } },
}
]])
    local r = H.run({ plan, "A tiny service", "--dir", dir, "--quiet", "--retries", "0", "--timeout", "120" },
                    { env = env, cwd = dir, timeout = 180 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s, run_dir = summary_of(dir)
    assert.are.equal(3, s.succeeded)
    assert.matches("^ALPHA%-RESULT", H.read_file(run_dir .. "/tasks/one/output.md"))
    assert.matches("^BETA%-RESULT: built on ALPHA", H.read_file(run_dir .. "/tasks/two/output.md"))
    assert.matches("^GAMMA%-RESULT: reviewed BETA", H.read_file(run_dir .. "/tasks/three/output.md"))
    -- The handoff is in the saved prompts, with the role prompt of each task's agent.
    local p2 = H.read_file(run_dir .. "/tasks/two/prompt.md")
    assert.truthy(p2:find("ALPHA-RESULT", 1, true))
    assert.truthy(p2:find("You are the backend developer", 1, true))
    assert.truthy(H.read_file(run_dir .. "/tasks/three/prompt.md"):find("BETA-RESULT", 1, true))
    -- Usage and cost as the CLIs reported them.
    assert.is_number(s.results.one.cost_usd)
    assert.is_true(s.results.one.usage.output_tokens > 0)
    assert.is_true(s.results.two.usage.output_tokens > 0)
    assert.are.equal(2, #api:seen("anthropic"))
    assert.are.equal(1, #api:seen("openai"))
  end)

  it("calls an API error a failure, for claude and for codex, and does not retry a bad request", function()
    api = fake_api.start(function(req)
      if task_is(req, "SERVER-ERROR") then return { status = 500, error = "the model fell over", kind = "api_error" } end
      return { status = 400, error = "prompt is malformed", kind = "invalid_request_error" }
    end)
    local dir, env = project(api)
    local plan = recipe(dir, [[
return coral.plan {
  t { id = "c500", agent = "qa-testing", task = "SERVER-ERROR please", driver = "claude", retries = 1 },
  t { id = "c400", agent = "qa-testing", task = "BAD-REQUEST please", driver = "claude", retries = 1 },
  t { id = "x500", agent = "qa-testing", task = "SERVER-ERROR please", driver = "codex-local", retries = 0 },
}
]])
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--max-workers", "3" }, { env = env, cwd = dir, timeout = 180 })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local s = summary_of(dir)
    assert.are.equal(0, s.succeeded)
    assert.are.equal("failed", s.results.c500.status)
    assert.matches("claude: API Error: 500", s.results.c500.error)
    assert.are.equal(2, s.results.c500.attempts)       -- a server error is retried
    assert.are.equal(1, s.results.c400.attempts)       -- a bad request is not
    assert.matches("claude: API Error: 400", s.results.c400.error)
    assert.are.equal("failed", s.results.x500.status)
    assert.matches("^codex: ", s.results.x500.error)
  end)

  it("backs off and retries after a rate limit (HTTP 429), for claude and for codex", function()
    local seen = {}
    api = fake_api.start(function(req)
      local key = task_is(req, "LIMITED-CLAUDE") and "claude" or "codex"
      seen[key] = (seen[key] or 0) + 1
      if seen[key] == 1 then
        return { status = 429, error = "rate limit reached", kind = "rate_limit_error", retry_after = 1 }
      end
      return { text = "DONE-" .. key }
    end)
    local dir, env = project(api)
    local plan = recipe(dir, [[
return coral.plan {
  t { id = "c", agent = "qa-testing", task = "LIMITED-CLAUDE", driver = "claude" },
  t { id = "x", agent = "qa-testing", task = "LIMITED-CODEX", driver = "codex-local" },
}
]])
    -- --no-retry: a rate limit has its own budget, so it is retried even then.
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--no-retry" }, { env = env, cwd = dir, timeout = 180 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s, run_dir = summary_of(dir)
    for _, id in ipairs { "c", "x" } do
      assert.are.equal("succeeded", s.results[id].status)
      assert.are.equal(2, s.results[id].attempts)
      assert.are.equal(1, s.results[id].rate_limited)
    end
    assert.matches("DONE%-claude", H.read_file(run_dir .. "/tasks/c/output.md"))
    assert.matches("DONE%-codex", H.read_file(run_dir .. "/tasks/x/output.md"))
    local joblog = H.read_file(run_dir .. "/joblog.tsv")
    assert.matches("\nc\t1\t[^\n]*\trate%-limited\n", joblog)
    assert.matches("\nx\t1\t[^\n]*\trate%-limited\n", joblog)
  end)

  it("kills a CLI whose API hangs, by the idle timeout", function()
    api = fake_api.start(function() return { hang = true } end)
    local dir, env = project(api)
    local plan = recipe(dir, [[
return coral.plan {
  t { id = "c", agent = "qa-testing", task = "hang", driver = "claude" },
  t { id = "x", agent = "qa-testing", task = "hang", driver = "codex-local" },
}
]])
    -- long enough for a CLI to start and reach the API on a loaded machine (node takes seconds
    -- there, printing nothing): the silence that is killed is the API's
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--retries", "0", "--idle-timeout", "8" },
                    { env = env, cwd = dir, timeout = 120 })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local s, run_dir = summary_of(dir)
    for _, id in ipairs { "c", "x" } do
      assert.are.equal("failed", s.results[id].status)
      assert.matches("idle timeout", s.results[id].error)
    end
    assert.matches("\tidle%-timeout\n", H.read_file(run_dir .. "/joblog.tsv"))
    assert.are.equal(1, #api:seen("anthropic"))
    assert.are.equal(1, #api:seen("openai"))
    for _, req in ipairs(api:seen("anthropic")) do assert.is_true(req.reply.hang) end
    for _, req in ipairs(api:seen("openai")) do assert.is_true(req.reply.hang) end
  end)

  it("runs claude agents in worktrees: parallel edits of one file meet at their dependent, which resolves them", function()
    -- Each agent writes files with Claude Code's own tools in its working dir (its worktree):
    -- backend and frontend each their file and a NOTES.md of their own; qa starts from both,
    -- with NOTES.md in conflict, reads it and writes it resolved.
    local steps = {
      BACKEND = { { "Write", "src/api.txt", "api\n" }, { "Write", "NOTES.md", "backend notes\n" } },
      FRONTEND = { { "Write", "src/ui.txt", "ui\n" }, { "Write", "NOTES.md", "frontend notes\n" } },
      QA = { { "Read", "NOTES.md" }, { "Write", "NOTES.md", "backend notes\nfrontend notes\n" } },
    }
    api = fake_api.start(function(req)
      local wd = req.system:match("Primary working directory: ([^\n]+)")
      for marker, list in pairs(steps) do
        if req.conversation:find("# Your task\n\n" .. marker, 1, true) then
          local step = list[req.tool_results + 1]
          if not step then return { text = marker .. " done in " .. tostring(wd) } end
          local input = { file_path = wd .. "/" .. step[2] }
          if step[1] == "Write" then input.content = step[3] end
          return { tool = { name = step[1], input = input } }
        end
      end
      return { text = "unexpected request" }
    end)
    local dir, env = project(api)
    assert(os.execute("cd '" .. dir .. "' && git init -q -b main . && echo start > README.md && git add README.md && " ..
                      "git -c user.name=u -c user.email=u@x commit -qm start"))
    local plan = recipe(dir, [[
return coral.plan {
  t { id = "backend", agent = "backend-developer", task = "BACKEND build the API", driver = "claude" },
  t { id = "frontend", agent = "frontend-developer", task = "FRONTEND build the UI", driver = "claude" },
  t { id = "qa", agent = "qa-testing", task = "QA check both", driver = "claude", depends_on = { "backend", "frontend" } },
}
]])
    local r = H.run({ plan, "A tiny app", "--dir", dir, "--quiet", "--retries", "0", "--timeout", "120" },
                    { env = env, cwd = dir, timeout = 240 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s, run_dir = summary_of(dir)
    -- each worked in its own worktree, not in the project dir
    assert.matches("^BACKEND done in " .. dir:gsub("%p", "%%%0") .. "/%.coral/worktrees/",
                   H.read_file(run_dir .. "/tasks/backend/output.md"))
    assert.is_nil(require("luv").fs_stat(dir .. "/src"))
    assert.matches("^## First: resolve the merge conflicts", H.read_file(run_dir .. "/tasks/qa/prompt.md"))
    local function show(what)
      local g = H.run({ "-C", dir, "show", what }, { exe = "/usr/bin/git" })
      return g.code == 0 and g.stdout or nil
    end
    local result = s.workspace.result_branch
    assert.are.equal("api\n", show(result .. ":src/api.txt"))
    assert.are.equal("ui\n", show(result .. ":src/ui.txt"))
    assert.are.equal("backend notes\nfrontend notes\n", show(result .. ":NOTES.md"))
    assert.are.equal(2, s.results.backend.files_changed)
  end)

  -- Live usage (docs/runner.md, "Live usage"): the drivers read the CLIs' event streams as
  -- they come, and coral journals what they used before the attempt ends.
  it("journals claude's usage while it streams, as the stand-in reported it, and keeps the result's in the summary", function()
    local ANSWER = "STREAMED-ANSWER: written, and read back twice over to be sure of it."
    api = fake_api.start(function(req)
      if req.tool_results == 0 then
        local wd = req.system:match("Primary working directory: ([^\n]+)")
        return { tool = { name = "Write", input = { file_path = wd .. "/note.txt", content = "streamed\n" } } }
      end
      return { text = ANSWER, pace = 0.5 }   -- 8 events: 3.5 s of streaming
    end, { slow = 1.5 })                      -- and every answer starts late
    local dir, env = project(api)
    local plan = recipe(dir, [[
return coral.plan { t { id = "c", agent = "qa-testing", task = "write the note", driver = "claude" } }
]])
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--retries", "0", "--timeout", "120" },
                    { env = env, cwd = dir, timeout = 180 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s, run_dir = summary_of(dir)
    -- what the stand-in reported: the tool call's message (10 in, 10 out), then the answer's
    local reqs = api:seen("anthropic")
    assert.are.equal(2, #reqs)
    local total_in = 10 + #reqs[2].body // 4
    local total_out = 10 + #ANSWER // 4
    local usage, end_at = events_of(journal_of(run_dir), "c", "usage")
    local last_end = select(2, events_of(journal_of(run_dir), "c", "end"))
    assert.is_truthy(end_at and last_end)
    -- while it ran: the tool call's usage as it grew, seconds before the end
    local end_t = journal_of(run_dir)[end_at].t
    local early = {}
    for _, e in ipairs(usage) do
      assert.is_true(e.index < end_at)
      assert.are.equal(1, e.attempt)
      if e.t < end_t - 2 then early[#early + 1] = e end
    end
    assert.is_true(#early >= 2, "no usage events seconds before the end")
    -- the tool call's message in full; then the answer's input while its output still streams
    local function seen(want)
      for _, e in ipairs(early) do
        if e.usage.input_tokens == want.input_tokens and e.usage.output_tokens == want.output_tokens then return e end
      end
    end
    assert.is_truthy(seen { input_tokens = 10, output_tokens = 10 })
    local streaming = assert(seen { input_tokens = total_in, output_tokens = 10 + 1 })
    assert.is_nil(streaming.cost_usd)   -- Claude Code says the cost at the end only
    -- the last: the result's totals and cost, the same as the summary's
    local last = usage[#usage]
    assert.are.equal(total_in, last.usage.input_tokens)
    assert.are.equal(total_out, last.usage.output_tokens)
    assert.is_number(last.cost_usd)
    assert.are.equal(last.cost_usd, s.results.c.cost_usd)
    assert.are.equal(total_in, s.results.c.usage.input_tokens)
    assert.are.equal(total_out, s.results.c.usage.output_tokens)
    assert.are.equal(last.cost_usd, s.total_cost_usd)
    -- at most one a second
    for i = 2, #usage do assert.is_true(usage[i].t - usage[i - 1].t >= 0.9 or i == #usage) end
  end)

  it("journals codex's usage at its turn's end, before the task's end, as the stand-in reported it", function()
    local ANSWER = "CODEX-ANSWER: the turn is complete and its usage counted."
    api = fake_api.start(function() return { text = ANSWER, pace = 0.3 } end)
    local dir, env = project(api)
    local plan = recipe(dir, [[
return coral.plan { t { id = "x", agent = "qa-testing", task = "answer", driver = "codex-local" } }
]])
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--retries", "0", "--timeout", "120" },
                    { env = env, cwd = dir, timeout = 180 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s, run_dir = summary_of(dir)
    local reqs = api:seen("openai")
    assert.are.equal(1, #reqs)
    local usage, end_at = events_of(journal_of(run_dir), "x", "usage")
    assert.are.equal(1, #usage)
    assert.is_true(usage[1].index < end_at)
    assert.are.equal(#reqs[1].body // 4, usage[1].usage.input_tokens)
    assert.are.equal(#ANSWER // 4, usage[1].usage.output_tokens)
    assert.is_nil(usage[1].cost_usd)
    assert.are.same(usage[1].usage, s.results.x.usage)
  end)

  it("calls a 429 a rate limit and waits at least what claude waited for the API's retry-after", function()
    -- Claude Code retries a 429 itself (CLAUDE_CODE_MAX_RETRIES, 10 by default), waiting the
    -- retry-after; at 1 it tries once more and gives up: its api_retry event gave the wait
    local n = 0
    api = fake_api.start(function()
      n = n + 1
      if n <= 2 then
        return { status = 429, kind = "rate_limit_error", error = "rate limit reached", retry_after = 3, should_retry = true }
      end
      return { text = "DONE-after-the-limit" }
    end)
    local dir, env = project(api)
    env = with_env(env, "CLAUDE_CODE_MAX_RETRIES", "1")
    local plan = recipe(dir, [[
return coral.plan { t { id = "c", agent = "qa-testing", task = "LIMITED", driver = "claude" } }
]])
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--retries", "0" }, { env = env, cwd = dir, timeout = 180 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s, run_dir = summary_of(dir)
    assert.are.equal("succeeded", s.results.c.status)
    assert.are.equal(2, s.results.c.attempts)
    assert.are.equal(1, s.results.c.rate_limited)
    assert.are.equal(3, #api:seen("anthropic"))
    local retry = events_of(journal_of(run_dir), "c", "retry")
    assert.are.equal(1, #retry)
    assert.is_true(retry[1].delay >= 3, "retried after " .. retry[1].delay .. "s")
    assert.matches("\nc\t1\t[^\n]*\trate%-limited\n", H.read_file(run_dir .. "/joblog.tsv"))
  end)

  it("answers 429 past max_in_flight requests; each is a rate-limited attempt that coral retries", function()
    api = fake_api.start(function() return { text = "DONE" } end, { max_in_flight = 1, slow = 4, retry_after = 1 })
    local dir, env = project(api)   -- CLAUDE_CODE_MAX_RETRIES=0: claude gives up at the first 429
    local plan = recipe(dir, [[
return coral.plan {
  t { id = "a", agent = "qa-testing", task = "ONE", driver = "claude" },
  t { id = "b", agent = "qa-testing", task = "TWO", driver = "claude" },
  t { id = "c", agent = "qa-testing", task = "THREE", driver = "claude" },
}
]])
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--max-workers", "3", "--rate-limit-retries", "20" },
                    { env = env, cwd = dir, timeout = 240 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s = summary_of(dir)
    local limited = 0
    for _, id in ipairs { "a", "b", "c" } do
      assert.are.equal("succeeded", s.results[id].status)
      limited = limited + (s.results[id].rate_limited or 0)
    end
    assert.is_true(api.rejected >= 1, "no request was rejected")
    assert.is_true(api.max_concurrency >= 2)
    assert.are.equal(api.rejected, limited)   -- each 429 ended one attempt
    local rejected = 0
    for _, req in ipairs(api:seen("anthropic")) do
      if req.rejected then
        rejected = rejected + 1
        assert.are.equal(429, req.reply.status)
      end
    end
    assert.are.equal(api.rejected, rejected)
  end)

  -- The journal's events of a run dir.
  local function journal(run_dir)
    local list = {}
    for line in H.read_file(run_dir .. "/journal.jsonl"):gmatch("[^\n]+") do list[#list + 1] = cjson.decode(line) end
    return list
  end

  it("throttles claude under 429s: 12 tasks at 8 workers all succeed and its limit settles at what the API takes",
     function()
    -- the API answers two requests at once, each in four seconds (longer than a claude takes to
    -- start, so its processes' concurrency is its requests'); a third is refused (429)
    api = fake_api.start(function() return { text = "DONE" } end, { max_in_flight = 2, slow = 6 })
    local dir, env = project(api)   -- CLAUDE_CODE_MAX_RETRIES=0: each 429 ends an attempt, coral decides
    local lines = {}
    for i = 1, 12 do
      lines[i] = string.format('  t { id = "t%d", agent = "qa-testing", task = "JOB-%d", driver = "claude" },', i, i)
    end
    local plan = recipe(dir, "return coral.plan {\n" .. table.concat(lines, "\n") .. "\n}\n")
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--max-workers", "8", "--no-report" },
                    { env = env, cwd = dir, timeout = 400 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s, run_dir = summary_of(dir)
    assert.are.equal(12, s.succeeded)
    local changes = {}
    for _, e in ipairs(journal(run_dir)) do
      if e.event == "limit" then changes[#changes + 1] = e end
    end
    assert.is_true(#changes >= 2, "the limit changed " .. #changes .. " times")
    assert.are.equal("claude", changes[1].name)
    assert.is_true(changes[1].limit <= 4, "first cut to " .. changes[1].limit)
    local trace = {}
    for i, c in ipairs(changes) do trace[i] = string.format("%.2f %d %s", c.t - changes[1].t, c.limit, c.reason) end
    -- settled where the API stops refusing: two, or three when the claude processes' start-up (not
    -- their requests) filled the third place every time it was tried
    local final = changes[#changes].limit
    assert.is_true(final == 2 or final == 3, table.concat(trace, "; "))
    -- the refusals: the first wave's (up to six) and a few while the limit comes down
    assert.is_true(api.rejected >= 1 and api.rejected <= 16, api.rejected .. " requests refused")
    io.stderr:write(string.format("\n[claude under 429s: %d refused, limit %s, settled %.1f s after the first cut]\n",
      api.rejected, table.concat((function()
        local v = {}
        for i, c in ipairs(changes) do v[i] = tostring(c.limit) end
        return v
      end)(), "→"), changes[#changes].t - changes[1].t) .. " (" .. table.concat(trace, "; ") .. ")\n")
  end)

  it("stops a claude task whose streamed usage passes its own budget, mid-stream", function()
    -- a slow answer in four pieces, four seconds apart (12 s in all): its input tokens arrive with its start
    api = fake_api.start(function() return { text = "A LONG ANSWER THAT TAKES ITS TIME", pace = 4 } end)
    local dir, env = project(api)
    local plan = recipe(dir, [[
return coral.plan {
  t { id = "big", agent = "qa-testing", task = "BIG", driver = "claude", budget = { tokens = 50 } },
  t { id = "after", agent = "qa-testing", task = "AFTER", driver = "claude", depends_on = { "big" } },
}
]])
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--no-report" }, { env = env, cwd = dir, timeout = 120 })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local s, run_dir = summary_of(dir)
    assert.are.equal("failed", s.results.big.status)
    assert.matches("budget_exceeded: used %d+ of its 50 tokens budget", s.results.big.error)
    assert.are.equal(1, s.results.big.attempts)   -- not retried: it would spend again
    assert.are.equal("skipped", s.results.after.status)
    assert.is_true(s.results.big.duration_seconds < 10, "it ran " .. s.results.big.duration_seconds .. " s")
    local ends = {}
    for _, e in ipairs(journal(run_dir)) do if e.event == "end" then ends[#ends + 1] = e end end
    assert.are.equal("budget_exceeded", ends[1].outcome)
  end)

  it("counts codex's usage against the run's budget in tokens", function()
    api = fake_api.start(function() return { text = "DONE" } end)
    local dir, env = project(api)
    local plan = recipe(dir, [[
return coral.plan {
  t { id = "one", agent = "qa-testing", task = "ONE", driver = "codex-local" },
  t { id = "two", agent = "qa-testing", task = "TWO", driver = "codex-local", depends_on = { "one" } },
}
]])
    -- the first task's tokens are the median the second is expected to spend: 1.5 times fits, twice does not
    local r = H.run({ plan, "d", "--dir", dir, "--quiet", "--no-report" }, { env = env, cwd = dir, timeout = 120 })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local s = summary_of(dir)
    local one = s.results.one.usage.input_tokens + s.results.one.usage.output_tokens
    assert.is_true(one > 0)
    local dir2, env2 = project(api)
    recipe(dir2, H.read_file(plan):gsub("^local coral = require 'coral'\nlocal t = coral.task\n", ""))
    r = H.run({ dir2 .. "/plan.lua", "d", "--dir", dir2, "--quiet", "--no-report",
                "--budget-tokens", tostring(math.floor(one * 1.5)) }, { env = env2, cwd = dir2, timeout = 120 })
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    s = summary_of(dir2)
    assert.are.equal("succeeded", s.results.one.status)
    assert.are.equal("budget_exhausted", s.results.two.status)
    assert.are.equal(s.results.one.usage.input_tokens + s.results.one.usage.output_tokens, s.budget.spent_tokens)
  end)
end)
