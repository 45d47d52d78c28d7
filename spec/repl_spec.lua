-- The REPL driven through a real terminal: tmux runs coral in a pseudo-terminal, the spec types
-- keys and reads the screen back.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"

local Terminal = {}
Terminal.__index = Terminal

local function tmux(term, ...)
  local args = { "-S", term.socket, ... }
  local r = H.run(args, { exe = "/usr/bin/tmux" })
  assert(r.code == 0, "tmux " .. table.concat({ ... }, " ") .. ": " .. r.stderr)
  return r.stdout
end

local servers = {}   -- sockets of the tmux servers started, killed after each spec

-- Starts coral in a fresh tmux server whose socket lives in `dir`.
local function open_terminal(dir)
  local term = setmetatable({ socket = dir .. "/tmux.sock" }, Terminal)
  servers[#servers + 1] = term
  tmux(term, "-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "40",
       "env", "CORAL_HISTORY=" .. dir .. "/history", "TERM=xterm", H.coral)
  term:wait_for("coral>")
  return term
end

function Terminal:screen()
  return tmux(self, "capture-pane", "-p")
end

-- Waits until the screen contains `text` (plain); returns the screen.
function Terminal:wait_for(text, count)
  local deadline = uv.hrtime() + 5e9
  local screen
  repeat
    screen = self:screen()
    local n = 0
    for _ in screen:gmatch(text:gsub("%p", "%%%0")) do n = n + 1 end
    if n >= (count or 1) then return screen end
    uv.sleep(30)
  until uv.hrtime() > deadline
  error("timed out waiting for " .. text .. " on the screen:\n" .. screen)
end

function Terminal:type(text) tmux(self, "send-keys", "-l", text) end
function Terminal:keys(...) tmux(self, "send-keys", ...) end
function Terminal:line(text) self:type(text); self:keys("Enter") end

function Terminal:close()
  pcall(tmux, self, "kill-server")
end

describe("the REPL", function()
  local dir, term
  before_each(function() dir = H.tmpdir() end)
  after_each(function()
    for i = #servers, 1, -1 do servers[i]:close(); servers[i] = nil end
  end)

  it("continues an incomplete chunk and runs the whole function", function()
    term = open_terminal(dir)
    term:line("function twice(x)")
    term:wait_for(">>")
    term:line("return x * 2")
    term:line("end")
    term:wait_for("coral>", 2)
    term:line("twice(21)")
    local screen = term:wait_for("\n42\n")
    assert.truthy(screen:find("coral> function twice(x)\n>> return x * 2\n>> end\n", 1, true))
  end)

  it("prints nested tables readably and marks cycles", function()
    term = open_terminal(dir)
    term:line('{ name = "api", deps = { "db", { weight = 2 } } }')
    term:wait_for('{ deps = { "db", { weight = 2 } }, name = "api" }')
    term:line("t = { 1 }; t.self = t")
    term:line("t")
    term:wait_for("<1>{ 1, self = <cycle: table 1> }")
  end)

  it("prints a mistake in a task as its message, without a traceback", function()
    term = open_terminal(dir)
    term:line('bad = coral.task("a", "x", { tiemout = 3 })')
    local screen = term:wait_for("coral.task: unknown option 'tiemout'")
    assert.truthy(screen:find("stdin:1: coral.task: unknown option 'tiemout'", 1, true), screen)
    term:line("1 + 2")
    screen = term:wait_for("\n3\n")
    assert.falsy(screen:find("stack traceback", 1, true))
  end)

  it("completes coral. with Tab", function()
    term = open_terminal(dir)
    term:type("coral.ver")
    term:keys("Tab")
    term:wait_for("coral> coral.version")
    term:keys("Enter")
    term:wait_for('"' .. require("coral").version .. '"')
  end)

  it("drops the line on Ctrl-C and leaves on Ctrl-D", function()
    term = open_terminal(dir)
    term:type("this is not lua")
    term:keys("C-c")
    term:wait_for("coral>", 2)
    term:line("1 + 1")
    local screen = term:wait_for("\n2\n")
    assert.falsy(screen:find("syntax error", 1, true))
    term:keys("C-d")
    local deadline = uv.hrtime() + 5e9
    while H.run({ "-S", term.socket, "has-session" }, { exe = "/usr/bin/tmux" }).code == 0 do
      assert(uv.hrtime() < deadline, "coral did not exit on Ctrl-D")
      uv.sleep(30)
    end
  end)

  it("recalls history after a restart", function()
    term = open_terminal(dir)
    term:line("history_marker = 12345")
    term:keys("C-d")
    local deadline = uv.hrtime() + 5e9
    while not H.read_file(dir .. "/history") do
      assert(uv.hrtime() < deadline, "no history file written")
      uv.sleep(30)
    end
    term:close()
    term = open_terminal(dir)
    term:keys("Up")
    term:wait_for("coral> history_marker = 12345")
    term:keys("Enter")
    term:line("history_marker")
    term:wait_for("\n12345\n")
  end)
end)
