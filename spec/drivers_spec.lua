-- Drivers: how each agent CLI is started and how its answer is read (success, failure, rate
-- limit, usage, cost), `auto`, and drivers defined by a project or a recipe. The real
-- claude and codex programs are run in spec/agent_clis_spec.lua.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local cjson = require "cjson"
local drivers = require "coral.drivers"

-- The ctx of an attempt whose stdout and stderr are `out` and `err`.
local function ctx_with(out, err)
  local dir = H.tmpdir()
  H.write_file(dir .. "/attempt-1.out", out or "")
  H.write_file(dir .. "/attempt-1.err", err or "")
  return { stdout_path = dir .. "/attempt-1.out", stderr_path = dir .. "/attempt-1.err",
           prompt = "PROMPT", prompt_path = dir .. "/prompt.md", attempt = 1 }, dir
end

local EXIT0, EXIT1 = { code = 0 }, { code = 1 }

describe("the claude driver", function()
  local claude = assert(drivers.get("claude"))

  it("sends the prompt on stdin and passes model and permission mode on", function()
    local job = claude.prepare({}, { prompt = "P", model = "opus", permission_mode = "plan", stdout_path = "x" })
    assert.are.same({ "claude", "-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages",
                      "--model", "opus", "--permission-mode", "plan" }, job.argv)
    assert.are.equal("P", job.stdin)
    job = claude.prepare({}, { prompt = "P", role = { model = "haiku" } })
    assert.are.same({ "claude", "-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages",
                      "--model", "haiku", "--permission-mode", "acceptEdits" }, job.argv)
    job = claude.prepare({}, { prompt = "P", role = { model = "inherit" } })
    assert.is_nil(table.concat(job.argv, " "):find("--model", 1, true))
  end)

  it("reads the result text, usage and cost of a success", function()
    local ctx = ctx_with('{"type":"result","subtype":"success","is_error":false,"result":"all done",' ..
      '"total_cost_usd":0.25,"usage":{"input_tokens":100,"output_tokens":7,"server_tool_use":{"x":1}}}\n')
    local r = claude.finish({}, EXIT0, ctx)
    assert.is_true(r.ok)
    assert.are.equal("all done", r.text)
    assert.are.equal(0.25, r.cost_usd)
    assert.are.same({ input_tokens = 100, output_tokens = 7 }, r.usage)
  end)

  it("calls is_error a failure even with exit 0, and tells a rate limit and a bad request apart", function()
    local r = claude.finish({}, EXIT0, ctx_with('{"type":"result","subtype":"success","is_error":true,' ..
      '"api_error_status":500,"result":"API Error: 500 overloaded"}'))
    assert.is_false(r.ok)
    assert.are.equal("claude: API Error: 500 overloaded", r.error)
    assert.is_nil(r.rate_limited)
    assert.are_not.equal(false, r.retryable)
    r = claude.finish({}, EXIT1, ctx_with('{"type":"result","is_error":true,"api_error_status":429,' ..
      '"result":"API Error: Request rejected (429) · rate limited"}'))
    assert.is_true(r.rate_limited)
    r = claude.finish({}, EXIT1, ctx_with('{"type":"result","is_error":true,"api_error_status":400,"result":"API Error: 400 bad"}'))
    assert.is_false(r.retryable)
    r = claude.finish({}, EXIT1, ctx_with("", "Error: Invalid API key · Please run /login\n"))
    assert.is_false(r.ok)
    assert.are.equal("claude: Error: Invalid API key · Please run /login", r.error)
    r = claude.finish({}, EXIT0, ctx_with("not json at all\n"))
    assert.is_false(r.ok)
    assert.matches("printed no JSON result: not json at all", r.error)
  end)

  it("keeps the runner's reading of a timeout", function()
    local r = claude.finish({}, { code = nil, signal = 15, timed_out = "idle", idle_timeout = 3 }, ctx_with(""))
    assert.is_false(r.ok)
    assert.matches("no output for 3s %(idle timeout%)", r.error)
  end)

  -- A stream-json session as Claude Code prints it (abridged): two API messages, the first
  -- a tool call, each message_start then message_delta as partial messages; a rate-limited
  -- retry between them; then the result.
  local function ev(t) return cjson.encode(t) .. "\n" end
  local function start(id, input) return ev { type = "stream_event", event = { type = "message_start",
    message = { id = id, usage = { input_tokens = input, output_tokens = 1, cache_read_input_tokens = 0 } } } } end
  local function delta(out) return ev { type = "stream_event", event = { type = "message_delta", usage = { output_tokens = out } } } end
  local SESSION = table.concat {
    ev { type = "system", subtype = "init", cwd = "/x" },
    start("m1", 10),
    ev { type = "stream_event", event = { type = "content_block_delta", delta = { type = "text_delta", text = "hi" } } },
    ev { type = "assistant", message = { id = "m1", usage = { input_tokens = 10, output_tokens = 1 } } },
    delta(12),
    ev { type = "user", message = { content = { { type = "tool_result", content = string.rep("x", 5000) } } } },
    ev { type = "system", subtype = "api_retry", attempt = 1, max_retries = 10, retry_delay_ms = 2500,
         error_status = 429, error = "rate_limit" },
    start("m2", 300),
    delta(40),
  }
  local RESULT = ev { type = "result", subtype = "success", is_error = false, result = "done",
                      total_cost_usd = 0.5, usage = { input_tokens = 310, output_tokens = 52 } }

  -- Feeds `text` to a watch in pieces of 1 to 97 bytes; returns what it reported.
  local function watched(driver, text)
    local usages, limits = {}, {}
    local feed = driver.watch {
      on_usage = function(u, c) usages[#usages + 1] = { usage = u, cost = c } end,
      on_rate_limit = function(after) limits[#limits + 1] = after or "none" end,
    }
    local pos, n = 1, 0
    while pos <= #text do
      n = n % 97 + 1
      feed(text:sub(pos, pos + n - 1))
      pos = pos + n
    end
    return usages, limits
  end

  it("watches the stream: usage as it grows, cut anywhere, and the retries of a rate limit", function()
    local usages, limits = watched(claude, SESSION .. RESULT)
    assert.are.same({ input_tokens = 10, output_tokens = 1, cache_read_input_tokens = 0 }, usages[1].usage)
    assert.is_nil(usages[1].cost)
    assert.are.same({ input_tokens = 10, output_tokens = 12, cache_read_input_tokens = 0 }, usages[2].usage)
    assert.are.same({ input_tokens = 310, output_tokens = 52, cache_read_input_tokens = 0 }, usages[4].usage)
    -- the result last, with the cost: the authority
    assert.are.same({ usage = { input_tokens = 310, output_tokens = 52 }, cost = 0.5 }, usages[#usages])
    assert.are.equal(5, #usages)
    assert.are.same({ 2.5 }, limits)
  end)

  it("reads the result of a stream, and the usage so far of one cut short", function()
    local r = claude.finish({}, EXIT0, ctx_with(SESSION .. RESULT))
    assert.is_true(r.ok)
    assert.are.equal("done", r.text)
    assert.are.same({ input_tokens = 310, output_tokens = 52 }, r.usage)
    r = claude.finish({}, { code = nil, signal = 15, timed_out = "timeout", timeout = 5 }, ctx_with(SESSION))
    assert.is_false(r.ok)
    assert.are.same({ input_tokens = 310, output_tokens = 52, cache_read_input_tokens = 0 }, r.usage)
    -- a 429 it gave up on: the wait of its last retry stands for the retry-after it does not repeat
    r = claude.finish({}, EXIT1, ctx_with(SESSION .. ev { type = "result", subtype = "success", is_error = true,
      api_error_status = 429, result = "API Error: Request rejected (429) · rate limited" }))
    assert.is_true(r.rate_limited)
    assert.are.equal(2.5, r.retry_after)
  end)
end)

describe("a driver's line reader", function()
  it("hands on whole lines, however the stream is cut, and drops one too long to be usage", function()
    local seen = {}
    local feed = require("coral.drivers.cli").lines(function(l) seen[#seen + 1] = l end)
    feed("ab"); feed("c\nd"); feed("\n\nxy")
    assert.are.same({ "abc", "d", "" }, seen)
    feed(string.rep("z", 3 * 1024 * 1024)); feed(string.rep("z", 2 * 1024 * 1024)); feed("z\nok\n")
    assert.are.same({ "abc", "d", "", "ok" }, seen)
  end)
end)

describe("the codex driver", function()
  local codex = assert(drivers.get("codex"))

  it("runs codex exec with the prompt on stdin and the final message in a file", function()
    local ctx = ctx_with()
    local job = codex.prepare({}, ctx)
    assert.are.same({ "codex", "exec", "--skip-git-repo-check", "--json", "-o", ctx.stdout_path:gsub("%.out$", ".last.md"),
                      "--sandbox", "workspace-write", "-" }, job.argv)
    assert.are.equal("PROMPT", job.stdin)
  end)

  it("reads the final message and the usage; a failed turn or no message is a failure", function()
    local events = table.concat({
      '{"type":"thread.started"}',
      '{"type":"item.completed","item":{"type":"error","message":"Model metadata not found"}}',
      '{"type":"item.completed","item":{"type":"agent_message","text":"from events"}}',
      '{"type":"turn.completed","usage":{"input_tokens":50,"output_tokens":5}}',
    }, "\n")
    local ctx = ctx_with(events)
    H.write_file(ctx.stdout_path:gsub("%.out$", ".last.md"), "final message")
    local r = codex.finish({}, EXIT0, ctx)
    assert.is_true(r.ok, r.error)
    assert.are.equal("final message", r.text)
    assert.are.same({ input_tokens = 50, output_tokens = 5 }, r.usage)
    r = codex.finish({}, EXIT0, ctx_with('{"type":"turn.started"}\n'))
    assert.is_false(r.ok)
    assert.are.equal("codex: the turn never completed", r.error)
    r = codex.finish({}, EXIT1, ctx_with('{"type":"error","message":"exceeded retry limit, last status: 429 Too Many Requests"}\n' ..
      '{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429 Too Many Requests"}}\n'))
    assert.is_false(r.ok)
    assert.is_true(r.rate_limited)
    r = codex.finish({}, EXIT1, ctx_with('{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized"}}\n'))
    assert.are.equal("codex: unexpected status 401 Unauthorized", r.error)
    assert.is_false(r.retryable)
  end)

  it("watches its events: the usage at each turn's end, summed, without a cost", function()
    local usages = {}
    local feed = codex.watch { on_usage = function(u, c) usages[#usages + 1] = { u, c } end }
    feed('{"type":"turn.started"}\n{"type":"turn.completed","usage":{"input_tokens":50,"cached_input_tokens":8,')
    assert.are.equal(0, #usages)
    feed('"output_tokens":5}}\n{"type":"turn.completed","usage":{"input_tokens":20,"output_tokens":1}}\n')
    assert.are.same({ { { input_tokens = 50, cached_input_tokens = 8, output_tokens = 5 } },
                      { { input_tokens = 70, cached_input_tokens = 8, output_tokens = 6 } } }, usages)
  end)
end)

describe("the gemini and aider drivers", function()
  it("gemini: prompt as -p, JSON response, stats and errors", function()
    local gemini = assert(drivers.get("gemini"))
    local job = gemini.prepare({}, { prompt = "P" })
    assert.are.same({ "gemini", "--output-format", "json", "--approval-mode", "auto_edit", "-p", "P" }, job.argv)
    local r = gemini.finish({}, EXIT0, ctx_with(cjson.encode { response = "ok text",
      stats = { models = { ["gemini-2.5-pro"] = { tokens = { prompt = 10, candidates = 3 } } } } }))
    assert.is_true(r.ok)
    assert.are.equal("ok text", r.text)
    assert.are.same({ input_tokens = 10, output_tokens = 3 }, r.usage)
    r = gemini.finish({}, EXIT1, ctx_with(cjson.encode { error = { type = "Error", message = "Quota exceeded for quota metric", code = 429 } }))
    assert.is_false(r.ok)
    assert.is_true(r.rate_limited)
  end)

  it("aider: message file, token and cost report, litellm errors despite exit 0", function()
    local aider = assert(drivers.get("aider"))
    local job = aider.prepare({}, { prompt_path = "/p/prompt.md" })
    assert.are.same({ "aider", "--message-file", "/p/prompt.md", "--yes-always", "--no-pretty", "--no-stream",
                      "--no-check-update", "--no-show-model-warnings" }, job.argv)
    local r = aider.finish({}, EXIT0, ctx_with("Applied edit to app.py\nTokens: 2.5k sent, 130 received. Cost: $0.01 message, $0.02 session.\n"))
    assert.is_true(r.ok)
    assert.are.same({ input_tokens = 2500, output_tokens = 130 }, r.usage)
    assert.are.equal(0.01, r.cost_usd)
    r = aider.finish({}, EXIT0, ctx_with("litellm.RateLimitError: AnthropicException - rate limit exceeded\n"))
    assert.is_false(r.ok)
    assert.is_true(r.rate_limited)
  end)
end)

describe("choosing a driver", function()
  it("auto takes the first agent CLI on PATH, else prompt", function()
    local bin = H.tmpdir()
    local script = "#!/bin/sh\nexit 0\n"
    local r = H.run({ "-e", "print(require('coral.drivers').get('auto').name)" },
                    { env = { "PATH=" .. bin, "CORAL_SPEC_MARK=" .. os.getenv("CORAL_SPEC_MARK") } })
    assert.are.equal("prompt\n", r.stdout)
    H.write_file(bin .. "/gemini", script, 493)
    H.write_file(bin .. "/codex", script, 493)
    r = H.run({ "-e", "print(require('coral.drivers').get('auto').name)" },
              { env = { "PATH=" .. bin, "CORAL_SPEC_MARK=" .. os.getenv("CORAL_SPEC_MARK") } })
    assert.are.equal("codex\n", r.stdout)
  end)

  it("names the known drivers for an unknown one", function()
    local d, err = drivers.get("nope")
    assert.is_nil(d)
    assert.are.equal("unknown driver 'nope' (known: auto, aider, claude, cmd, codex, gemini, prompt, sim)", err)
  end)

  it("runs a project's own driver from .coral/drivers, with the runner backing off a rate limit it reports", function()
    local dir = H.tmpdir()
    uv.fs_mkdir(dir .. "/.coral", 493)
    uv.fs_mkdir(dir .. "/.coral/drivers", 493)
    -- An "agent" that answers RATE LIMITED on its first attempt, then echoes the prompt's task.
    H.write_file(dir .. "/.coral/drivers/echo.lua", [[
return {
  name = "echo-agent",
  prepare = function(task, ctx)
    return { argv = { "sh", "-c", 'if [ "$CORAL_ATTEMPT" = 1 ]; then echo "429 Too Many Requests" >&2; exit 3; fi; grep -A2 "^# Your task" >&1', "echo" },
             stdin = ctx.prompt }
  end,
  finish = function(task, info, ctx)
    local r = require("coral.drivers").default_finish(task, info, ctx)
    if not r.ok then
      r.rate_limited = require("coral.drivers").rate_limit_of(r.error)
      r.usage, r.cost_usd = { input_tokens = 1 }, 0.5
    else
      r.usage, r.cost_usd = { input_tokens = 2, output_tokens = 1 }, 0.25
    end
    return r
  end,
}
]])
    H.write_file(dir .. "/plan.lua", 'local t = require("coral").task\nreturn require("coral").plan { t("a", "ECHO ME") }\n')
    local r = H.run({ dir .. "/plan.lua", "d", "--dir", dir, "--agent", "echo-agent", "--no-retry", "--json" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local summary
    for line in r.stdout:gmatch("[^\n]+") do
      local e = cjson.decode(line)
      if e.event == "summary" then summary = e.summary end
    end
    local a = summary.results.a
    assert.are.equal("succeeded", a.status)
    assert.are.equal(2, a.attempts)
    assert.are.equal(1, a.rate_limited)
    assert.are.same({ input_tokens = 3, output_tokens = 1 }, a.usage)
    assert.are.equal(0.75, a.cost_usd)
    assert.are.equal(0.75, summary.total_cost_usd)
    assert.matches("ECHO ME", H.read_file(a.output_file))
  end)

  it("takes a driver table given as a task's driver in a recipe", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
local inline = { name = "inline", prepare = function(task, ctx)
  return { builtin = function() return { ok = true, text = "inline:" .. task.id .. ":" .. #ctx.prompt } end }
end }
return coral.plan { coral.task("a", "x", { driver = inline }) }
]])
    local r = H.run({ dir .. "/plan.lua", "d", "--dir", dir, "--quiet" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
  end)

  it("reports a broken project driver file with its line", function()
    local dir = H.tmpdir()
    uv.fs_mkdir(dir .. "/.coral", 493)
    uv.fs_mkdir(dir .. "/.coral/drivers", 493)
    H.write_file(dir .. "/.coral/drivers/bad.lua", "return { name = 'bad' }\n")
    local r = H.run({ "run", "full_stack", "d", "--dir", dir, "--agent", "bad", "--quiet" })
    assert.are.equal(2, r.code)
    assert.matches("bad.lua: coral.drivers.register: driver 'bad' has no prepare function", r.stderr)
  end)
end)
