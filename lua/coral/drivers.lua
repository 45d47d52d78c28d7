--- Drivers: how a task becomes a process and how its end becomes a result.
-- A driver is a table { name, prepare(task, ctx) -> job, finish(task, info, ctx) -> result }.
--   job:    { argv = {...} } or { cmd = "shell text" }, plus optional stdin (string), env
--           (table of additions); or { builtin = function() return result end } for a driver
--           that runs no process.
--   result: { ok = bool, text = final output, error = why it failed,
--             rate_limited = bool (back off and retry), retryable = bool (default: not ok) }
-- Built in here: cmd, sim, prompt, and auto (the first agent CLI on PATH, else prompt).
-- More drivers register with M.register.
local fsutil = require "coral.fsutil"

local M = {}
local registry = {}

function M.register(driver)
  assert(type(driver) == "table" and type(driver.name) == "string", "a driver needs a name")
  registry[driver.name] = driver
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
  local text = ctx.stdout_path and tail(ctx.stdout_path, 64 * 1024) or ""
  if info.code == 0 and not info.signal and not info.timed_out then
    return { ok = true, text = text }
  end
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
      argv = { ctx.coral_exe, "-e", SIM_SCRIPT, string.format("%.3f", seconds),
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

--- The agent CLIs `auto` looks for, in order.
M.AUTO_ORDER = { "claude", "codex", "gemini" }

--- The driver called `name` ("auto" resolved against PATH), or nil and an error.
function M.get(name)
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
