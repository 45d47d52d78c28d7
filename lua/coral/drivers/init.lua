--- Drivers: how a task becomes a process and how its end becomes a result.
-- A driver is a table { name, prepare(task, ctx) -> job, finish(task, info, ctx) -> result }.
--   job:    { argv = {...} } or { cmd = "shell text" }, plus optional stdin (string), env
--           (table of additions); or { builtin = function() return result end } for a driver
--           that runs no process.
--   result: { ok = bool, text = final output, error = why it failed,
--             rate_limited = bool (back off and retry; retry_after = seconds, if known),
--             retryable = bool (default: not ok), usage = {input_tokens=, output_tokens=, ...},
--             cost_usd = number }
--   ctx:    what the runner knows of the attempt: prompt, prompt_path, project_dir, run_dir,
--           stdout_path, stderr_path, output_path, scratchpad, activity, attempt, model,
--           permission_mode, role (the agent role table, if any), timeout, estimate, sim_scale.
-- A driver that runs an installed program names it as `program`: a run checks it is on PATH
-- before it starts, so a missing CLI is one clear error, not a failed task and its skipped plan.
-- Built in: claude, codex, gemini, aider (agent CLIs), cmd, sim, prompt, and auto (the first
-- agent CLI on PATH, else prompt). A recipe registers its own with M.register, or passes a
-- driver table as a task's `driver`; a project's .coral/drivers/*.lua files each return a
-- driver (or a list of them) and are loaded when a run in that project asks for a driver.
-- M.claude{...}, M.codex{...}, M.gemini{...}, M.aider{...} make variants (another binary,
-- extra arguments, another name).
local cjson = require "cjson"
local fsutil = require "coral.fsutil"

local M = {}
local registry = {}
local loaded_projects = {}

--- Registers a driver under its name (replacing one of the same name); returns it.
function M.register(driver)
  if type(driver) ~= "table" or type(driver.name) ~= "string" then
    require("coral.check").fail("coral.drivers.register: a driver is a table with a name", 2)
  end
  if type(driver.prepare) ~= "function" then
    require("coral.check").fail(string.format("coral.drivers.register: driver '%s' has no prepare function", driver.name), 2)
  end
  if driver.finish ~= nil and type(driver.finish) ~= "function" then
    require("coral.check").fail(string.format("coral.drivers.register: driver '%s': finish must be a function", driver.name), 2)
  end
  registry[driver.name] = driver
  return driver
end

--- Reads at most `limit` bytes of the end of a file.
local function tail(path, limit)
  local f = io.open(path, "rb")
  if not f then return "" end
  local size = f:seek("end")
  f:seek("set", math.max(0, size - limit))
  local data = f:read("a") or ""
  f:close()
  return data
end
M.tail = tail

--- The usual reading of a process's end: success is exit 0.
function M.default_finish(_, info, ctx)
  if info.code == 0 and not info.signal and not info.timed_out then
    -- The command's stdout is its output: handed to dependents as it is, not copied.
    return { ok = true, output_path = ctx.stdout_path }
  end
  local text = ctx.stdout_path and tail(ctx.stdout_path, 64 * 1024) or ""
  local why
  if info.timed_out == "idle" then why = string.format("no output for %gs (idle timeout)", info.idle_timeout or 0)
  elseif info.timed_out then why = string.format("timed out after %gs", info.timeout or 0)
  elseif info.signal then why = "killed by signal " .. tostring(info.signal)
  else why = "exit code " .. tostring(info.code) end
  local err_tail = ctx.stderr_path and tail(ctx.stderr_path, 400):gsub("%s+$", "") or ""
  if err_tail ~= "" then why = why .. ": " .. err_tail:match("([^\n]*)$") end
  return { ok = false, text = text, error = why, retryable = true }
end

M.register {
  name = "cmd",
  summary = "the task's own command (cmd = argv list, or a string run by /bin/sh -c)",
  prepare = function(task)
    if task.cmd == nil then return nil, "task '" .. task.id .. "' has no cmd for the cmd driver" end
    if type(task.cmd) == "string" then return { cmd = task.cmd } end
    return { argv = task.cmd }
  end,
  finish = M.default_finish,
}

-- The simulated agent: a real process (coral itself) that sleeps the task's estimate times a
-- scale factor, writes a small deliverable and a note, and says it is simulated.
local SIM_SCRIPT = [[
local seconds, deliverable, scratchpad, agent, task, fail = ...
local uv = require "luv"
io.stdout:write("[simulated agent] ", agent, " working on: ", task, "\n")
io.stdout:flush()
uv.sleep(math.floor(tonumber(seconds) * 1000))
if fail == "1" then
  io.stderr:write("[simulated agent] ", agent, ": simulated failure\n")
  os.exit(1)
end
local f = assert(io.open(deliverable, "w"))
f:write("# ", agent, " (simulated)\n\nTask: ", task, "\n\nThis file was written by coral's sim driver; no real agent ran.\n")
f:close()
assert(require("coral.records").note(scratchpad, "finished (simulated): " .. task, agent))
io.stdout:write("[simulated agent] ", agent, " finished: wrote ", deliverable, "\n")
]]

M.register {
  name = "sim",
  simulated = true,
  summary = "a simulated agent for demos and tests (sleeps estimate x scale, writes a deliverable)",
  prepare = function(task, ctx)
    local seconds = (task.estimate or ctx.estimate or 60) * (ctx.sim_scale or 0.02)
    local fail_attempts = task.context and task.context.sim_fail or 0
    local dir = ctx.project_dir .. "/deliverables"
    fsutil.mkdirs(dir)
    return {
      -- `coral - ARGS` runs the script read from stdin with ARGS as `...`.
      stdin = SIM_SCRIPT,
      argv = { ctx.coral_exe, "-", string.format("%.3f", seconds),
               dir .. "/" .. task.id .. ".md", ctx.scratchpad, task.agent, task.task,
               ctx.attempt <= fail_attempts and "1" or "0" },
    }
  end,
  finish = M.default_finish,
}

M.register {
  name = "prompt",
  summary = "writes the composed prompt into the run dir and succeeds (paste it into any agent)",
  prepare = function(_, ctx)
    return {
      builtin = function()
        return { ok = true, text = "Prompt written to " .. ctx.prompt_path .. "\n" }
      end,
    }
  end,
}

-- {{{ agent CLIs

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
-- is what the CLI's own output said { ok, text, error, status, usage, cost_usd }.
local function cli_result(name, info, ctx, parsed)
  if info.timed_out or info.signal then
    local r = M.default_finish(nil, info, ctx)
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
  result.rate_limited, result.retry_after = limited or nil, after
  result.retryable = not (parsed.status and PERMANENT[parsed.status])
  return result
end

local function model_for(ctx, role_models)
  if ctx.model then return ctx.model end
  local m = ctx.role and ctx.role.model
  if role_models and m and m ~= "" and m ~= "inherit" then return m end
end

--- Claude Code: `claude -p --output-format json`, the prompt on stdin. The JSON result gives
-- the text, is_error, api_error_status, usage and total_cost_usd. A role's model hint
-- (sonnet, opus, haiku; Claude Code subagent files) is passed on unless the run names one.
-- opts: name ("claude"), bin ("claude"), args (extra arguments), permission_mode
-- (default: the run's --permission-mode, else $CORAL_CLAUDE_PERMISSION_MODE, else acceptEdits).
function M.claude(opts)
  opts = opts or {}
  return {
    name = opts.name or "claude",
    program = opts.bin or "claude",   -- checked on PATH before a run starts
    summary = "Claude Code: claude -p --output-format json, prompt on stdin",
    prepare = function(_, ctx)
      local argv = append({ opts.bin or "claude" }, "-p", "--output-format", "json")
      local model = model_for(ctx, true)
      if model then append(argv, "--model", model) end
      local mode = ctx.permission_mode or opts.permission_mode or os.getenv("CORAL_CLAUDE_PERMISSION_MODE")
      append(argv, "--permission-mode", mode and mode ~= "" and mode or "acceptEdits")
      for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
      return { argv = argv, stdin = ctx.prompt or "", env = opts.env }
    end,
    finish = function(_, info, ctx)
      local out = read_all(ctx.stdout_path)
      local json
      -- The result is the last JSON object printed (one line; earlier lines may be warnings).
      for line in out:gmatch("[^\n]+") do
        if line:match("^%s*{") then
          local ok, v = pcall(cjson.decode, line)
          if ok and type(v) == "table" and v.type == "result" then json = v end
        end
      end
      if not json then
        local ok, v = pcall(cjson.decode, out)
        if ok and type(v) == "table" then json = v end
      end
      if not json then
        return cli_result("claude", info, ctx, { ok = false, error = info.code == 0 and
          ("printed no JSON result" .. (out ~= "" and (": " .. last_line(out)) or "")) or nil })
      end
      local usage
      if type(json.usage) == "table" then
        usage = {}
        for _, k in ipairs { "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens" } do
          if math.type(json.usage[k]) then usage[k] = json.usage[k] end
        end
      end
      local text = type(json.result) == "string" and json.result or ""
      local failed = json.is_error == true or (json.subtype and json.subtype ~= "success")
      local status = math.tointeger(json.api_error_status)
      return cli_result("claude", info, ctx, {
        ok = not failed, text = text, usage = usage,
        cost_usd = type(json.total_cost_usd) == "number" and json.total_cost_usd or nil,
        error = failed and (text ~= "" and text or tostring(json.subtype)) or nil,
        status = status, session_id = json.session_id,
      })
    end,
  }
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
    finish = function(_, info, ctx)
      local last_path = ctx.stdout_path:gsub("%.out$", "") .. ".last.md"
      local usage, failure, message, completed = nil, nil, nil, false
      for line in read_all(ctx.stdout_path):gmatch("[^\n]+") do
        local ok, e = pcall(cjson.decode, line)
        if ok and type(e) == "table" then
          if e.type == "turn.completed" then
            completed = true
            if type(e.usage) == "table" then
              usage = usage or {}
              for k, v in pairs(e.usage) do
                if math.type(v) then usage[k] = (usage[k] or 0) + v end
              end
            end
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

M.register(M.claude())
M.register(M.codex())
M.register(M.gemini())
M.register(M.aider())

-- }}}

--- The agent CLIs `auto` looks for, in order.
M.AUTO_ORDER = { "claude", "codex", "gemini" }

--- Loads the project's .coral/drivers/*.lua (once per project dir). A file returns a driver,
-- a list of drivers, or nothing (having called register itself). A broken file raises with
-- its file:line, like a broken recipe.
function M.load_project(project_dir)
  local dir = fsutil.absolute((project_dir or ".") .. "/.coral/drivers")
  if loaded_projects[dir] then return end
  loaded_projects[dir] = true
  local uv = require "luv"
  local names = {}
  local handle = uv.fs_scandir(dir)
  while handle do
    local name, kind = uv.fs_scandir_next(handle)
    if not name then break end
    if name:match("%.lua$") and kind ~= "directory" then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local path = dir .. "/" .. name
    local chunk, err = loadfile(path)
    if not chunk then error(err, 0) end
    local value = chunk()
    if type(value) == "table" and value.name then value = { value } end
    for _, d in ipairs(type(value) == "table" and value or {}) do
      local ok, rerr = pcall(M.register, d)
      if not ok then error(path .. ": " .. tostring(rerr):gsub("^[^:]*:%d+: ", ""), 0) end
    end
  end
end

--- The driver called `name` ("auto" resolved against PATH), or nil and an error. With
-- `project_dir`, the project's own drivers are loaded first.
function M.get(name, project_dir)
  if project_dir then M.load_project(project_dir) end
  if name == "auto" then
    for _, cli in ipairs(M.AUTO_ORDER) do
      if registry[cli] and fsutil.which(cli) then return registry[cli] end
    end
    return registry.prompt
  end
  local d = registry[name]
  if not d then
    local known = {}
    for n in pairs(registry) do known[#known + 1] = n end
    table.sort(known)
    return nil, string.format("unknown driver '%s' (known: auto, %s)", tostring(name), table.concat(known, ", "))
  end
  return d
end

function M.list()
  local out = {}
  for _, d in pairs(registry) do out[#out + 1] = d end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

return M
