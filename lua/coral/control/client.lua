--- The other end of a run's control socket (control/server.lua): finds the project's running
-- run, connects, sends requests and waits for their replies on a loop of its own, or streams
-- the run's events. Used by `coral ctl` and `coral attach`.
local cjson = require "cjson.safe"
local fsutil = require "coral.fsutil"
local records = require "coral.records"
local server = require "coral.control.server"
local uv = require "luv"

local M = {}

local TIMEOUT_MS = 30000
-- No reply comes near this (a big plan's status, an evaluated value); a runaway line is dropped.
local MAX_LINE = 256 * 1024 * 1024

--- The run dir of the running run of `project_dir` (or of run `id`). Returns it, or nil and
-- why not: no run is running there (no socket that answers is checked later, by connect).
function M.find(project_dir, id)
  project_dir = fsutil.absolute(project_dir or ".")
  local paths = records.paths(project_dir)
  local run_dir
  if id then
    local err
    run_dir, err = records.find_run(project_dir, id)
    if not run_dir then return nil, err end
  else
    local owner = records.read_owner(paths)
    if type(owner) == "table" and type(owner.run_id) == "string" and not owner.run_id:find("/") then
      run_dir = paths.runs .. "/" .. owner.run_id
    end
  end
  if not run_dir or not uv.fs_stat(run_dir .. "/control.sock") then
    return nil, "no running run in " .. project_dir .. (id and (" with id " .. id) or "")
  end
  return run_dir
end

local Conn = {}
Conn.__index = Conn

--- Connects to the socket of `run_dir`. Returns the connection, or nil and why not (a stale
-- socket, whose run is gone, refuses the connection: no running run).
function M.connect(run_dir)
  local pipe = uv.new_pipe(false)
  local address, fd = server.address(run_dir)
  local done, cerr
  pipe:connect(address, function(err) done, cerr = true, err end)
  while not done do uv.run("once") end
  if fd then uv.fs_close(fd) end
  if cerr then
    pipe:close()
    uv.run("nowait")
    return nil, "no running run in " .. run_dir .. " (its control socket: " .. tostring(cerr) .. ")"
  end
  local self = setmetatable({ pipe = pipe, lines = {} }, Conn)
  -- replies wait in `lines` for request(); after subscribe(), every line goes to on_line
  local feed = fsutil.line_reader(function(line)
    if self.on_line then self.on_line(line) else self.lines[#self.lines + 1] = line end
  end, MAX_LINE)
  pipe:read_start(function(err, data)
    if data then return feed(data) end
    if not self.closed then
      self.closed = err or (self.on_line and "the run ended" or "the run closed the connection")
      if self.on_close then self.on_close(self.closed) end
    end
  end)
  return self
end

--- Sends request `r` and waits for its reply: the reply table ({ ok, result | error }), or
-- nil and why there is none.
function Conn:request(r)
  self.pipe:write(cjson.encode(r) .. "\n")
  local timer, timed_out = uv.new_timer(), false
  timer:start(TIMEOUT_MS, 0, function() timed_out = true end)
  while #self.lines == 0 and not self.closed and not timed_out do uv.run("once") end
  timer:close()
  local line = table.remove(self.lines, 1)
  if not line then
    return nil, timed_out and "no reply from the run within 30s" or ("no reply: " .. tostring(self.closed))
  end
  local reply = cjson.decode(line)
  if type(reply) ~= "table" then return nil, "a reply that is not JSON: " .. line end
  return reply
end

--- Turns the connection into the run's event stream: on_event(e) for each event,
-- on_close(why) when the run closes it. Returns the subscribe reply.
function Conn:subscribe(on_event, on_close)
  local reply, err = self:request { op = "subscribe" }
  if not reply or not reply.ok then return reply, err end
  self.on_line = function(line)
    local m = cjson.decode(line)
    if type(m) == "table" and type(m.event) == "table" then on_event(m.event) end
  end
  for _, line in ipairs(self.lines) do self.on_line(line) end
  self.lines = {}
  self.on_close = on_close
  return reply
end

function Conn:fileno()
  return self.pipe:fileno()
end

function Conn:close()
  if not self.pipe:is_closing() then self.pipe:close() end
  uv.run("nowait")
end

return M
