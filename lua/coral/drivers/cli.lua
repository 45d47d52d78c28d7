--- The agent CLIs as drivers, on one helper (cli_result): Claude Code, Codex, Gemini CLI and
-- Aider. Each M.<name>{...} makes a driver (opts: name, program, args, ...); coral.drivers
-- registers one of each under its own name. What a driver is: coral.drivers.
local cjson = require "cjson"
local fsutil = require "coral.fsutil"

local M = {}

local tail = fsutil.tail


local function read_all(path, limit)
  return path and tail(path, limit or 8 * 1024 * 1024) or ""
end

local function last_line(s)
  s = (s or ""):gsub("%s+$", "")
  return s:match("([^\n]*)$") or ""
end

local function append(list, ...)
  for _, v in ipairs { ... } do list[#list + 1] = v end
  return list
end

-- A line longer than this is dropped by a watch (a huge tool result): usage lines are small.
local MAX_LINE = 4 * 1024 * 1024

--- A line reader for watches (coral.fsutil.line_reader): lines over MAX_LINE are dropped.
function M.lines(on_line) return fsutil.line_reader(on_line, MAX_LINE) end

local USAGE_KEYS = { "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens" }

local function usage_of(t)
  if type(t) ~= "table" then return nil end
  local usage
  for _, k in ipairs(USAGE_KEYS) do
    if math.type(t[k]) then usage = usage or {}; usage[k] = math.tointeger(t[k]) end
  end
  return usage
end

-- Claude Code's usage so far, from its stream-json events: per API message (by id), the
-- largest count of each kind seen (message_start gives the input, message_delta the output
-- as it grows; an assistant event repeats message_start's), summed over the messages.
-- Returns { add(e) -> true when the total changed, total() }.
local function claude_tally()
  local by_id, ids, current = {}, {}, {}
  local tally = {}
  local function add(id, usage)
    if not id or not usage then return false end
    local entry = by_id[id]
    if not entry then entry = {}; by_id[id] = entry; ids[#ids + 1] = id end
    local changed = false
    for k, v in pairs(usage) do
      if v > (entry[k] or -1) then entry[k], changed = v, true end
    end
    return changed
  end
  function tally.add(e)
    -- a subagent's messages stream beside the main one's: each has its own current message
    local stream = type(e.parent_tool_use_id) == "string" and e.parent_tool_use_id or ""
    if e.type == "stream_event" and type(e.event) == "table" then
      local ev = e.event
      if ev.type == "message_start" and type(ev.message) == "table" then
        current[stream] = ev.message.id
        return add(ev.message.id, usage_of(ev.message.usage))
      elseif ev.type == "message_delta" then
        return add(current[stream], usage_of(ev.usage))
      end
    elseif e.type == "assistant" and type(e.message) == "table" then
      return add(e.message.id, usage_of(e.message.usage))
    end
    return false
  end
  function tally.total()
    if #ids == 0 then return nil end
    local total = {}
    for _, id in ipairs(ids) do
      for k, v in pairs(by_id[id]) do total[k] = (total[k] or 0) + v end
    end
    return total
  end
  return tally
end

-- The stream-json line's event, or nil: only the kinds that carry usage, a retry or the
-- result are decoded (a text delta or a tool's result is not worth a decode).
local function claude_event(line)
  local kind = line:match('^%s*{"type":"([%w_]+)"')
  if kind == "user" then return nil end
  if kind == "stream_event" and not (line:find('"message_start"', 1, true) or line:find('"message_delta"', 1, true)) then
    return nil
  end
  if not line:match("^%s*{") then return nil end
  local ok, e = pcall(cjson.decode, line)
  if ok and type(e) == "table" then return e end
end

-- Claude Code's api_retry event for a rate limit: it waits retry_delay_ms (at least the
-- API's retry-after) and asks again. Returns the wait in seconds, or nil for another event.
local function claude_rate_limit(e)
  if e.type == "system" and e.subtype == "api_retry" and (e.error_status == 429 or e.error == "rate_limit") then
    return type(e.retry_delay_ms) == "number" and e.retry_delay_ms / 1000 or false
  end
end

--- Is this error text a rate-limit answer? Returns true and the seconds to wait, if it says.
function M.rate_limit_of(text, status)
  text = text or ""
  local lower = text:lower()
  local limited = status == 429 or lower:find("rate.?limit") or lower:find("too many requests")
    or lower:find("%(429%)") or lower:find("[^%d]429[^%d]") or lower:find("resource_exhausted")
    or lower:find("quota exceeded")
  if not limited then return false end
  local after = lower:match("retry.after:?%s*(%d+%.?%d*)") or lower:match("try again in (%d+%.?%d*)%s*s")
  return true, tonumber(after)
end

-- Failures that another attempt will not fix: bad request, bad credentials, no permission,
-- unknown model.
local PERMANENT = { [400] = true, [401] = true, [403] = true, [404] = true, [413] = true }

-- The common end of an agent CLI: a timeout or a signal keeps the runner's reading; `parsed`
-- is what the CLI's own output said { ok, text, error, status, usage, cost_usd, retry_after }.
local function cli_result(name, info, ctx, parsed)
  if info.timed_out or info.signal then
    local r = require("coral.drivers").default_finish(nil, info, ctx)
    r.ok = false
    r.usage, r.cost_usd = parsed.usage, parsed.cost_usd
    return r
  end
  local ok = parsed.ok and info.code == 0
  local result = { ok = ok, text = parsed.text or "", usage = parsed.usage, cost_usd = parsed.cost_usd,
                   session_id = parsed.session_id }
  if ok then return result end
  local why = parsed.error
  if not why or why == "" then
    why = last_line(read_all(ctx.stderr_path, 2000))
    if why == "" then why = last_line(read_all(ctx.stdout_path, 2000)) end
    if why == "" then why = "exit code " .. tostring(info.code) end
  end
  result.error = name .. ": " .. why:gsub("%s+", " "):sub(1, 300)
  local limited, after = M.rate_limit_of(why .. "\n" .. read_all(ctx.stderr_path, 4000), parsed.status)
  result.rate_limited, result.retry_after = limited or nil, after or (limited and parsed.retry_after) or nil
  result.retryable = not (parsed.status and PERMANENT[parsed.status])
  return result
end

local function model_for(ctx, role_models)
  if ctx.model then return ctx.model end
  local m = ctx.role and ctx.role.model
  if role_models and m and m ~= "" and m ~= "inherit" then return m end
end

--- Claude Code: `claude -p --output-format stream-json --verbose --include-partial-messages`,
-- the prompt on stdin. Its last event, the result, gives the text, is_error, api_error_status,
-- usage and total_cost_usd; the events before it give the usage as it grows (watch: the API's
-- message_start and message_delta, which --include-partial-messages passes on: an assistant
-- event alone carries the output count of a message's start, 1) and each rate-limited retry
-- Claude Code makes itself (system api_retry). A role's model hint
-- (sonnet, opus, haiku; Claude Code subagent files) is passed on unless the run names one.
-- opts: name ("claude"), bin ("claude"), args (extra arguments), permission_mode
-- (default: the run's --permission-mode, else $CORAL_CLAUDE_PERMISSION_MODE, else acceptEdits).
function M.claude(opts)
  opts = opts or {}
  return {
    name = opts.name or "claude",
    program = opts.bin or "claude",   -- checked on PATH before a run starts
    summary = "Claude Code: claude -p --output-format stream-json, prompt on stdin",
    prepare = function(_, ctx)
      local argv = append({ opts.bin or "claude" }, "-p", "--output-format", "stream-json", "--verbose",
                          "--include-partial-messages")
      local model = model_for(ctx, true)
      if model then append(argv, "--model", model) end
      local mode = ctx.permission_mode or opts.permission_mode or os.getenv("CORAL_CLAUDE_PERMISSION_MODE")
      append(argv, "--permission-mode", mode and mode ~= "" and mode or "acceptEdits")
      for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
      return { argv = argv, stdin = ctx.prompt or "", env = opts.env }
    end,
    -- Usage as it grows (cost nil: Claude Code gives it in the result only, which is then
    -- reported with it) and each rate limit Claude Code waits out itself.
    watch = function(ctx)
      local tally = claude_tally()
      return M.lines(function(line)
        local e = claude_event(line)
        if not e then return end
        if e.type == "result" then
          local usage = usage_of(e.usage)
          if usage then ctx.on_usage(usage, type(e.total_cost_usd) == "number" and e.total_cost_usd or nil) end
          return
        end
        local after = claude_rate_limit(e)
        if after ~= nil then return ctx.on_rate_limit(after or nil) end
        if tally.add(e) then ctx.on_usage(tally.total(), nil) end
      end)
    end,
    finish = function(_, info, ctx)
      local out = read_all(ctx.stdout_path)
      local json, retry_after
      -- The result is the last event (one line; earlier lines may be warnings); the usage so far
      -- stands for it when there is none (a timeout).
      local tally = claude_tally()
      M.lines(function(line)
        local e = claude_event(line)
        if not e then return end
        if e.type == "result" then json = e
        elseif claude_rate_limit(e) then retry_after = claude_rate_limit(e)
        else tally.add(e) end
      end)(out .. "\n")
      if not json then
        local ok, v = pcall(cjson.decode, out)
        if ok and type(v) == "table" and v.type == "result" then json = v end
      end
      if not json then
        return cli_result("claude", info, ctx, { ok = false, usage = tally.total(), error = info.code == 0 and
          ("printed no JSON result" .. (out ~= "" and (": " .. last_line(out):sub(1, 200)) or "")) or nil })
      end
      local usage = usage_of(json.usage)
      local text = type(json.result) == "string" and json.result or ""
      local failed = json.is_error == true or (json.subtype and json.subtype ~= "success")
      local status = math.tointeger(json.api_error_status)
      return cli_result("claude", info, ctx, {
        ok = not failed, text = text, usage = usage,
        cost_usd = type(json.total_cost_usd) == "number" and json.total_cost_usd or nil,
        error = failed and (text ~= "" and text or tostring(json.subtype)) or nil,
        status = status, session_id = json.session_id,
        -- Claude Code does not repeat the API's retry-after in its result: the wait of its own
        -- last retry (at least the retry-after) stands for it
        retry_after = status == 429 and retry_after or nil,
      })
    end,
  }
end

-- Codex's usage so far plus a turn's (turn.completed usage: input_tokens, cached_input_tokens,
-- output_tokens), as a new table (a watch hands it on).
local function codex_add_usage(usage, turn)
  if type(turn) ~= "table" then return usage end
  local sum = {}
  for k, v in pairs(usage or {}) do sum[k] = v end
  for k, v in pairs(turn) do
    if math.type(v) then sum[k] = (sum[k] or 0) + v end
  end
  return sum
end

--- Codex: `codex exec --json -o FILE -`, the prompt on stdin, the final message from FILE;
-- the JSON events give usage and errors (turn.failed, error). opts: name ("codex"), bin,
-- args (e.g. { "-c", "model_provider=..." }), sandbox (default: $CORAL_CODEX_SANDBOX, else
-- workspace-write; the run's --permission-mode bypassPermissions gives no sandbox).
function M.codex(opts)
  opts = opts or {}
  return {
    name = opts.name or "codex",
    program = opts.bin or "codex",   -- checked on PATH before a run starts
    summary = "Codex: codex exec --json -o FILE -, prompt on stdin",
    prepare = function(_, ctx)
      local last = ctx.stdout_path:gsub("%.out$", "") .. ".last.md"
      local argv = append({ opts.bin or "codex" }, "exec", "--skip-git-repo-check", "--json", "-o", last)
      local model = model_for(ctx, false)
      if model then append(argv, "-m", model) end
      if ctx.permission_mode == "bypassPermissions" then
        append(argv, "--dangerously-bypass-approvals-and-sandbox")
      else
        local sandbox = opts.sandbox or os.getenv("CORAL_CODEX_SANDBOX")
        append(argv, "--sandbox", sandbox and sandbox ~= "" and sandbox or "workspace-write")
      end
      for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
      argv[#argv + 1] = "-"
      return { argv = argv, stdin = ctx.prompt or "", env = opts.env }
    end,
    -- Usage at each turn's end (codex gives no cost).
    watch = function(ctx)
      local usage
      return M.lines(function(line)
        if not line:find('"turn.completed"', 1, true) then return end
        local ok, e = pcall(cjson.decode, line)
        if ok and type(e) == "table" and e.type == "turn.completed" then
          usage = codex_add_usage(usage, e.usage)
          if usage then ctx.on_usage(usage, nil) end
        end
      end)
    end,
    finish = function(_, info, ctx)
      local last_path = ctx.stdout_path:gsub("%.out$", "") .. ".last.md"
      local usage, failure, message, completed = nil, nil, nil, false
      for line in read_all(ctx.stdout_path):gmatch("[^\n]+") do
        local ok, e = pcall(cjson.decode, line)
        if ok and type(e) == "table" then
          if e.type == "turn.completed" then
            completed = true
            usage = codex_add_usage(usage, e.usage)
          elseif e.type == "turn.failed" then
            failure = type(e.error) == "table" and e.error.message or "turn failed"
          elseif e.type == "error" and not failure then
            failure = e.message
          elseif e.type == "item.completed" and type(e.item) == "table" and e.item.type == "agent_message" then
            message = e.item.text
          end
        end
      end
      local text = fsutil.read(last_path)
      if not text or text == "" then text = message or "" end
      local ok = completed and not failure and text ~= ""
      local why = failure
      if not ok and not why and info.code == 0 then why = completed and "no final message" or "the turn never completed" end
      local status = why and tonumber(why:match("status:? (%d%d%d)"))
      return cli_result("codex", info, ctx, { ok = ok, text = text, usage = usage, error = why, status = status })
    end,
  }
end

--- Gemini CLI: `gemini --output-format json -p PROMPT` (the prompt on stdin when it is too
-- long for an argument). The JSON gives response, stats and error. opts: name, bin, args.
function M.gemini(opts)
  opts = opts or {}
  return {
    name = opts.name or "gemini",
    program = opts.bin or "gemini",   -- checked on PATH before a run starts
    summary = "Gemini CLI: gemini --output-format json -p PROMPT",
    prepare = function(_, ctx)
      local argv = append({ opts.bin or "gemini" }, "--output-format", "json")
      local model = model_for(ctx, false)
      if model then append(argv, "-m", model) end
      if ctx.permission_mode == "bypassPermissions" then append(argv, "--yolo")
      else append(argv, "--approval-mode", "auto_edit") end
      for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
      local prompt, stdin = ctx.prompt or "", nil
      if #prompt > 100000 then
        stdin, prompt = prompt, "Carry out the task described in the text above."
      end
      append(argv, "-p", prompt)
      return { argv = argv, stdin = stdin, env = opts.env }
    end,
    finish = function(_, info, ctx)
      local out = read_all(ctx.stdout_path)
      local ok, json = pcall(cjson.decode, out:match("^[^{]*(%b{})") or "")
      if not ok or type(json) ~= "table" then
        return cli_result("gemini", info, ctx, { ok = info.code == 0 and out ~= "", text = out })
      end
      local usage
      if type(json.stats) == "table" and type(json.stats.models) == "table" then
        usage = { input_tokens = 0, output_tokens = 0 }
        for _, m in pairs(json.stats.models) do
          local t = type(m) == "table" and m.tokens or {}
          usage.input_tokens = usage.input_tokens + (math.tointeger(t.prompt) or 0)
          usage.output_tokens = usage.output_tokens + (math.tointeger(t.candidates) or 0)
        end
      end
      local err = type(json.error) == "table" and json.error or nil
      return cli_result("gemini", info, ctx, {
        ok = not err, text = type(json.response) == "string" and json.response or "", usage = usage,
        error = err and tostring(err.message or err.type), status = err and math.tointeger(err.code),
      })
    end,
  }
end

--- aider: `aider --message-file PROMPT_FILE --yes-always --no-pretty --no-stream`. aider may
-- exit 0 after an API error, so its output is read for litellm's error names; its token and
-- cost report ("Tokens: 2.1k sent, 130 received. Cost: $0.01 message") gives usage and cost.
function M.aider(opts)
  opts = opts or {}
  return {
    name = opts.name or "aider",
    program = opts.bin or "aider",   -- checked on PATH before a run starts
    summary = "aider: aider --message-file PROMPT --yes-always",
    prepare = function(_, ctx)
      local argv = append({ opts.bin or "aider" }, "--message-file", ctx.prompt_path, "--yes-always",
                          "--no-pretty", "--no-stream", "--no-check-update", "--no-show-model-warnings")
      local model = model_for(ctx, false)
      if model then append(argv, "--model", model) end
      for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
      return { argv = argv, env = opts.env }
    end,
    finish = function(_, info, ctx)
      local out = read_all(ctx.stdout_path)
      local function k(n, unit) n = tonumber(n) or 0; return math.floor(n * (unit == "k" and 1000 or unit == "M" and 1e6 or 1) + 0.5) end
      local usage, cost
      for sent, su, recv, ru in out:gmatch("Tokens: ([%d%.]+)([kM]?) sent, ([%d%.]+)([kM]?) received") do
        usage = usage or { input_tokens = 0, output_tokens = 0 }
        usage.input_tokens = usage.input_tokens + k(sent, su)
        usage.output_tokens = usage.output_tokens + k(recv, ru)
      end
      for c in out:gmatch("Cost: %$([%d%.]+) message") do cost = (cost or 0) + tonumber(c) end
      local err = out:match("(litellm%.%w+Error[^\n]*)") or out:match("\n(%w*APIError[^\n]*)")
      return cli_result("aider", info, ctx, { ok = not err, text = out, usage = usage, cost_usd = cost, error = err })
    end,
  }
end

return M
