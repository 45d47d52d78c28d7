--- The control socket of a running run: `<run dir>/control.sock`, a Unix socket served on the
-- run's own loop, so every request runs between two scheduling steps. Protocol (docs/control.md):
-- JSON lines, one request object ({"op": "status", ...}) and one reply each ({"ok": true,
-- "result": ...} or {"ok": false, "error": "..."}); {"op": "subscribe"} turns the connection
-- into a stream of the run's events ({"event": {...}} a line). The socket is mode 0600 in the
-- 0700 run dir, and a connection from another uid than the run's is refused (SO_PEERCRED,
-- host.peer_cred): the code an `eval` runs is the run owner's own.
local cjson = require "cjson.safe"
local check = require "coral.check"
local host = require "coral.host"
local inspect = require "coral.inspect"
local uv = require "luv"

local M = {}

local MAX_LINE = 1024 * 1024
local SOCKET_MODE = tonumber("600", 8)

--- The address of the socket in `dir`, and a descriptor to close once it is bound or
-- connected: a Unix socket's path has room for 107 bytes, so a longer one is reached through
-- the directory's descriptor (/proc/self/fd/N/control.sock).
function M.address(dir)
  local path = dir .. "/control.sock"
  if #path <= 100 then return path end
  local fd = uv.fs_open(dir, "r", 0)
  if not fd then return path end
  return "/proc/self/fd/" .. fd .. "/control.sock", fd
end

local function encode(v)
  local text, err = cjson.encode(v)
  if not text then
    text = cjson.encode { ok = false, error = "the reply cannot be sent as JSON: " .. tostring(err) }
  end
  return text .. "\n"
end

-- {{{ eval: Lua typed in `coral attach`, run here with a `run` object

-- The `run` an attached REPL sees: the control operations as methods, each returning its
-- result, or nil and why it was refused. `who` is the connection's peer.
local function run_object(ctl, who)
  local run = ctl.run
  local obj = { id = run.records.id, dir = run.records.dir }
  function obj.status() return ctl:status() end
  function obj.task(_, id)
    local st = run.state[id]
    if not st then return nil, "no task '" .. tostring(id) .. "' in the run" end
    return { id = id, agent = st.task.agent, status = st.status, error = st.error, attempts = #st.attempts,
             output = st.output_path, depends_on = st.task.depends_on }
  end
  function obj.tail(_, id, n) return ctl:tail(id, n) end
  function obj.cancel(_, id) return ctl:cancel(id, who) end
  function obj.retry(_, id) return ctl:retry(id, who) end
  function obj.pause() return ctl:pause(who) end
  function obj.resume() return ctl:resume(who) end
  function obj.workers(_, n) return ctl:workers(n, who) end
  function obj.limit(_, name, n) return ctl:limit(name, n, who) end
  function obj.approve(_, id, note) return ctl:approve(id, note, who) end
  function obj.reject(_, id, reason) return ctl:reject(id, reason, who) end
  function obj.add(_, tasks) return ctl:add(tasks, who, "attach") end
  return obj
end

local function compile(source, env)
  local fn = load("return " .. source, "=attach", "t", env)
  if fn then return fn end
  return load(source, "=attach", "t", env)
end

-- Runs `code` in the connection's environment: { text = what it printed and its values } or
-- { error = message }. An error is reported; the run goes on.
local function eval(conn, code)
  local fn, err = compile(code, conn.env)
  if not fn then return nil, err end
  local out = {}
  conn.env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    out[#out + 1] = table.concat(parts, "\t")
  end
  local results = table.pack(xpcall(fn, function(e)
    if check.is_user_error(e) then return tostring(e) end
    local tb = debug.traceback(type(e) == "string" and e or inspect.format(e), 2)
    -- the user's frames only: what is below the chunk is coral's server
    return (tb:gsub("\n\t%[C%]: in function 'xpcall'.*$", ""))
  end))
  if not results[1] then return nil, results[2] end
  local values = {}
  for i = 2, results.n do values[#values + 1] = inspect.format(results[i]) end
  if #values > 0 then out[#out + 1] = table.concat(values, "\t") end
  return { text = table.concat(out, "\n") }
end

-- }}}
-- {{{ requests

local OPS = {
  status = function(ctl) return ctl:status() end,
  tail = function(ctl, r) return ctl:tail(r.task, r.n) end,
  cancel = function(ctl, r, who) return ctl:cancel(r.task, who) end,
  retry = function(ctl, r, who) return ctl:retry(r.task, who) end,
  pause = function(ctl, _, who) return ctl:pause(who) end,
  resume = function(ctl, _, who) return ctl:resume(who) end,
  workers = function(ctl, r, who) return ctl:workers(r.n, who) end,
  limit = function(ctl, r, who) return ctl:limit(r.name, r.n, who) end,
  add = function(ctl, r, who) return ctl:add_file(r.file, who) end,
  approve = function(ctl, r, who) return ctl:approve(r.task, r.note, who) end,
  reject = function(ctl, r, who) return ctl:reject(r.task, r.reason, who) end,
}

local Server = {}
Server.__index = Server

function Server:send(conn, value)
  if conn.handle:is_closing() then return end
  conn.handle:write(encode(value), function() end)
end

function Server:drop(conn)
  self.conns[conn] = nil
  if not conn.handle:is_closing() then conn.handle:close() end
end

function Server:request(conn, line)
  local r = cjson.decode(line)
  if type(r) ~= "table" or type(r.op) ~= "string" then
    return { ok = false, error = "a request is a JSON object with an \"op\"" }
  end
  if self.ctl.run.finished then return { ok = false, error = "the run is over" } end
  local result, err
  if r.op == "subscribe" then
    conn.subscribed = true
    result = { subscribed = true, run_id = self.ctl.run.records.id }
  elseif r.op == "eval" then
    if type(r.code) ~= "string" then return { ok = false, error = "eval needs \"code\"" } end
    result, err = eval(conn, r.code)
  elseif OPS[r.op] then
    result, err = OPS[r.op](self.ctl, r, conn.who)
  else
    local ops = { "subscribe", "eval" }
    for name in pairs(OPS) do ops[#ops + 1] = name end
    table.sort(ops)
    return { ok = false, error = "unknown op '" .. r.op .. "'" .. check.did_you_mean(r.op, ops) }
  end
  if result == nil then return { ok = false, error = tostring(err or "refused") } end
  return { ok = true, result = result }
end

function Server:on_data(conn, data)
  conn.buffer = conn.buffer .. data
  while true do
    local nl = conn.buffer:find("\n", 1, true)
    if not nl then break end
    local line = conn.buffer:sub(1, nl - 1)
    conn.buffer = conn.buffer:sub(nl + 1)
    if line:find("%S") then
      -- a mistake in an operation must not end the run: it is the reply
      local ok, reply = xpcall(self.request, debug.traceback, self, conn, line)
      if not ok then reply = { ok = false, error = "internal error: " .. tostring(reply) } end
      self:send(conn, reply)
    end
  end
  if #conn.buffer > MAX_LINE then
    self:send(conn, { ok = false, error = "request longer than " .. MAX_LINE .. " bytes" })
    self:drop(conn)
  end
end

function Server:on_connection()
  local handle = uv.new_pipe(false)
  if not self.pipe:accept(handle) then handle:close(); return end
  local uid, _, pid = host.peer_cred(handle:fileno())
  if uid ~= self.uid then
    -- another user's process: not one request from it is read
    handle:write(encode { ok = false, error = string.format("refused: uid %s is not the uid of the run (%d)",
                                                              tostring(uid), self.uid) })
    handle:shutdown(function() handle:close() end)
    return
  end
  local conn = { handle = handle, buffer = "", who = { uid = uid, pid = pid } }
  conn.env = setmetatable({ run = run_object(self.ctl, conn.who), coral = require "coral" }, { __index = _G })
  self.conns[conn] = true
  handle:read_start(function(err, data)
    if err or not data then return self:drop(conn) end
    self:on_data(conn, data)
  end)
end

--- Sends an event of the run to every subscribed connection.
function Server:broadcast(e)
  if not next(self.conns) then return end
  local line
  for conn in pairs(self.conns) do
    if conn.subscribed then
      line = line or encode { event = e }
      if not conn.handle:is_closing() then conn.handle:write(line, function() end) end
    end
  end
end

--- Closes every connection and the socket, and removes its file.
function Server:close()
  for conn in pairs(self.conns) do self:drop(conn) end
  if not self.pipe:is_closing() then self.pipe:close() end
  uv.fs_unlink(self.path)
end

--- Serves `ctl` (coral.control) on <run dir>/control.sock. A socket file already there is a
-- stale one (the run lock is held: no other coral serves this run) and is replaced. Returns
-- the server, or nil and why not (the run goes on without live control).
function M.start(ctl, opts)
  opts = opts or {}
  local dir = ctl.run.records.dir
  local path = dir .. "/control.sock"
  uv.fs_unlink(path)
  local pipe = uv.new_pipe(false)
  local address, fd = M.address(dir)
  local ok, err = pipe:bind(address)
  if fd then uv.fs_close(fd) end
  if ok then uv.fs_chmod(path, SOCKET_MODE) end   -- the run dir is 0700 already: no window to another user
  local self = setmetatable({ ctl = ctl, pipe = pipe, path = path, conns = {}, uid = opts.uid or uv.getuid() }, Server)
  if ok then
    ok, err = pipe:listen(16, function(lerr)
      if lerr then return end
      local cok, cerr = pcall(self.on_connection, self)
      if not cok then io.stderr:write("coral: warning: control socket: ", tostring(cerr), "\n") end
    end)
  end
  if not ok then
    pipe:close()
    uv.fs_unlink(path)
    return nil, "control socket " .. path .. ": " .. tostring(err)
  end
  return self
end

return M
