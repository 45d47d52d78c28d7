--- `coral ctl COMMAND` and `coral attach`: live control of the project's running run, through
-- its control socket (coral.control). ctl exits 0 done, 1 refused (with the reason), 2 usage,
-- 3 no running run.
local client = require "coral.control.client"
local fsutil = require "coral.fsutil"
local json = require "coral.json"

local M = {}

local EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_RUN = 0, 1, 2, 3
M.EXIT_NO_RUN = EXIT_NO_RUN

-- command -> { args (names, for usage), build(args, opts) -> request | nil, usage error }
local COMMANDS = {
  status = { args = {} },
  tail = { args = { "TASK" } },
  cancel = { args = { "TASK" } },
  retry = { args = { "TASK" } },
  pause = { args = {} },
  resume = { args = {} },
  workers = { args = { "N" } },
  limit = { args = { "NAME=N" } },
  add = { args = { "FILE.lua" } },
  approve = { args = { "TASK" } },
  reject = { args = { "TASK" } },
}
M.COMMANDS = COMMANDS
local NAMES = { "status", "tail", "cancel", "retry", "pause", "resume", "workers", "limit", "add", "approve", "reject" }
M.NAMES = NAMES

local function fail(text, code)
  io.stderr:write("coral: ", text, "\n")
  return code
end

-- The request of `coral ctl NAME ARGS`, or nil and what is wrong with the command line.
local function request_of(name, args, opts)
  local c = COMMANDS[name]
  if not c then
    return nil, "unknown ctl command '" .. tostring(name) .. "'" .. require("coral.check").did_you_mean(name, NAMES) ..
      " (one of " .. table.concat(NAMES, ", ") .. ")"
  end
  if #args < #c.args then return nil, "ctl " .. name .. " needs " .. c.args[#args + 1] end
  if #args > #c.args then return nil, "unexpected argument '" .. args[#c.args + 1] .. "'" end
  if opts.lines and name ~= "tail" then return nil, "option '-n' goes with ctl tail" end
  if opts.note and name ~= "approve" then return nil, "option '--note' goes with ctl approve" end
  if opts.reason and name ~= "reject" then return nil, "option '--reason' goes with ctl reject" end
  local r = { op = name }
  if name == "workers" then
    r.n = math.tointeger(tonumber(args[1]))
    if not r.n or r.n < 1 then return nil, "ctl workers needs a whole number of at least 1, got '" .. args[1] .. "'" end
  elseif name == "limit" then
    local lname, n = args[1]:match("^([^=]+)=(%d+)$")
    if not lname then return nil, "ctl limit needs NAME=N (N a whole number), got '" .. args[1] .. "'" end
    r.name, r.n = lname, math.tointeger(tonumber(n))
  elseif name == "add" then
    local path = fsutil.absolute(args[1])
    if not require("luv").fs_stat(path) then return nil, "ctl add: no file " .. args[1] end
    r.file = path
  elseif name == "reject" then
    if not opts.reason or opts.reason == "" then return nil, "ctl reject needs --reason TEXT" end
    r.task, r.reason = args[1], opts.reason
  elseif #c.args == 1 then
    r.task = args[1]
  end
  if name == "tail" then r.n = opts.lines end
  if name == "approve" then r.note = opts.note end
  return r
end

local function clock(s)
  s = math.floor(s or 0)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, s % 3600 // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return s .. "s"
end

--- The text of a status reply.
function M.status_text(s)
  local parts = {}
  local order = { "running", "awaiting_approval", "retrying", "pending", "succeeded", "failed", "skipped",
                  "up_to_date", "budget_exhausted" }
  for _, k in ipairs(order) do
    if s.counts[k] then parts[#parts + 1] = string.format("%d %s", s.counts[k], k) end
  end
  local lines = { string.format("run %s: %s; max_workers %d%s%s", s.run_id, table.concat(parts, ", "),
                                math.tointeger(s.max_workers) or 0, s.paused and "; PAUSED (coral ctl resume)" or "",
                                s.stopping and ("; stopping: " .. s.stopping) or "") }
  for _, t in ipairs(s.tasks) do
    if t.status == "running" then
      lines[#lines + 1] = string.format("  %-20s running   pid %s  %s%s", t.id, tostring(math.tointeger(t.pid) or "-"),
                                        clock(t.elapsed), t.last_line and ("  | " .. t.last_line) or "")
    elseif t.status == "awaiting_approval" then
      lines[#lines + 1] = string.format("  %-20s awaiting approval for %s%s: coral ctl approve %s (or reject %s --reason TEXT)",
                                        t.id, clock(t.waiting), t.timeout and (" (timeout " .. t.timeout .. "s)") or "",
                                        t.id, t.id)
      if t.prompt then lines[#lines + 1] = "      " .. t.prompt end
      for d, i in pairs(t.inputs or {}) do
        lines[#lines + 1] = string.format("      input %s (%s): %s", d, i.status, tostring(i.output or "-"))
      end
    elseif t.status == "failed" or t.status == "skipped" then
      lines[#lines + 1] = string.format("  %-20s %-9s %s", t.id, t.status, tostring(t.error or ""))
    elseif t.held then
      lines[#lines + 1] = string.format("  %-20s waiting   %s", t.id, t.held)
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

local function result_text(name, r)
  if name == "status" then return M.status_text(r) end
  if name == "tail" then return #r.lines > 0 and (table.concat(r.lines, "\n") .. "\n") or "" end
  if name == "retry" then return "runs again: " .. table.concat(r.tasks, ", ") .. "\n" end
  if name == "add" then return "added: " .. table.concat(r.tasks, ", ") .. "\n" end
  if name == "cancel" then return "cancelling " .. r.task .. "\n" end
  if name == "pause" then return "paused: nothing new starts (coral ctl resume)\n" end
  if name == "resume" then return "resumed\n" end
  if name == "workers" then return string.format("max_workers %d\n", r.max_workers) end
  if name == "limit" then return string.format("limit %s = %d\n", r.limit, r.value) end
  if name == "approve" then return "approved " .. r.task .. "\n" end
  if name == "reject" then return "rejected " .. r.task .. "\n" end
  return json.encode(r) .. "\n"
end

--- coral ctl COMMAND [ARGS] [options]: returns the exit code.
function M.ctl(opts, args)
  local name = table.remove(args, 1)
  local r, uerr = request_of(name, args, opts)
  if not r then return fail(uerr .. " (try 'coral ctl --help')", EXIT_USAGE) end
  local run_dir, ferr = client.find(opts.dir, opts.run)
  if not run_dir then return fail(ferr, EXIT_NO_RUN) end
  local conn, cerr = client.connect(run_dir)
  if not conn then return fail(cerr, EXIT_NO_RUN) end
  local reply, rerr = conn:request(r)
  conn:close()
  if not reply then return fail(rerr, EXIT_NO_RUN) end
  if not reply.ok then
    if opts.json then io.stdout:write(json.encode(reply), "\n") end
    return fail(tostring(reply.error), EXIT_REFUSED)
  end
  if opts.json then
    io.stdout:write(json.encode(reply.result), "\n")
  else
    io.stdout:write(result_text(name, reply.result))
  end
  return EXIT_OK
end

-- {{{ coral attach

-- One line for an event of the run, printed above the prompt.
local function event_line(e)
  local what = e.task and (" " .. e.task) or ""
  local detail = e.outcome or e.reason or e.error or e.action or e.status or ""
  if e.event == "control" then
    detail = e.action .. (e.target and (" " .. e.target) or "") .. " (uid " .. tostring(math.tointeger(e.uid) or e.uid) .. ")"
  elseif e.event == "awaiting_approval" then
    detail = (e.prompt or "") .. " (run:approve(\"" .. tostring(e.task) .. "\"))"
  end
  return string.format("[%s] %s%s %s", os.date("%H:%M:%S", math.floor(e.t or 0)), e.event, what, detail)
end

--- coral attach [RUN]: the REPL, its code run inside the running coral (control/server.lua).
function M.attach(opts, args)
  local run_dir, ferr = client.find(opts.dir, args[1])
  if not run_dir then return fail(ferr, EXIT_NO_RUN) end
  local conn, cerr = client.connect(run_dir)
  if not conn then return fail(cerr, EXIT_NO_RUN) end
  local events = client.connect(run_dir)
  local status = conn:request { op = "status" }
  if not status or not status.ok then
    conn:close()
    return fail(status and status.error or "the run did not answer", EXIT_NO_RUN)
  end
  local repl = require "coral.repl"
  local readline = require "coral.readline"
  local ended
  local function above(text)
    -- over the prompt line: the line typed so far is drawn again by readline
    io.stdout:write("\r\027[K", text, "\n")
    io.stdout:flush()
  end
  if events then
    events:subscribe(function(e) above(event_line(e)) end, function() ended = true; above("[the run ended]") end)
    readline.watch(events:fileno(), function()
      require("luv").run("nowait")
      return not ended
    end)
  end
  -- Tab completes `run:` with the remote object's methods (the completer reads this REPL's globals)
  local names = {}
  for _, m in ipairs { "status", "task", "tail", "cancel", "retry", "pause", "resume", "workers", "limit", "add",
                       "approve", "reject" } do names[m] = function() end end
  rawset(_G, "run", names)
  rawset(_G, "coral", rawget(_G, "coral") or require "coral")
  io.stdout:write(string.format("attached to run %s (%s): `run` is the running run (run:status(), run:cancel(id), " ..
    "run:retry(id), run:add(coral.task{...}), run:pause(), run:resume(), run:workers(n), run:approve(id), " ..
    "run:reject(id, why), run:tail(id)); Ctrl-D detaches\n", status.result.run_id, run_dir))
  local code = repl.loop(function(source)
    local reply, err = conn:request { op = "eval", code = source }
    if not reply then return nil, err end
    if not reply.ok then return nil, reply.error end
    return reply.result.text
  end)
  readline.watch(nil)
  if events then events:close() end
  conn:close()
  return code
end

-- }}}

return M
