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
end)
