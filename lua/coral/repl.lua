--- The interactive prompt: `coral` on a terminal. Reads chunks with line editing, continues
-- a chunk while it is incomplete (as lua does), prints the values of expressions readably,
-- completes globals and table fields with Tab, keeps history under the user's home.
local check = require "coral.check"
local readline = require "coral.readline"
local inspect = require "coral.inspect"
local uv = require "luv"

local M = {}

local PROMPT, CONTINUE = "coral> ", ">> "

--- Where the history is kept: $CORAL_HISTORY, else $XDG_STATE_HOME/coral/history, else
-- ~/.local/state/coral/history.
function M.history_path()
  local explicit = os.getenv("CORAL_HISTORY")
  if explicit and explicit ~= "" then return explicit end
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    state = home .. "/.local/state"
  end
  return state .. "/coral/history"
end

local function make_dirs(path)
  local dir = path:match("^(.*)/[^/]*$")
  if not dir or dir == "" or uv.fs_stat(dir) then return end
  make_dirs(dir)
  uv.fs_mkdir(dir, tonumber("700", 8))
end

-- Lua reports an unfinished chunk as an error "... near <eof>".
local function is_incomplete(err)
  return err:sub(-5) == "<eof>"
end

--- Compiles a chunk typed at the prompt: first as an expression to print, then as statements.
-- Returns the function, or nil and the error, or nil and "incomplete".
function M.compile(source)
  local fn = load("return " .. source, "=stdin", "t")
  if fn then return fn end
  local err
  fn, err = load(source, "=stdin", "t")
  if fn then return fn end
  if is_incomplete(err) then return nil, "incomplete" end
  return nil, err
end

local function lookup(path)
  local value = _G
  for name in path:gmatch("[^.:]+") do
    if type(value) ~= "table" then return nil end
    value = rawget(value, name)
  end
  return value
end

--- Candidates for Tab after `word` (e.g. "coral.ta", "string.fo", "pri", "s:up").
function M.complete(word)
  local base, sep, partial = word:match("^(.-)([.:])([%w_]*)$")
  local scope = _G
  if base then
    scope = lookup(base)
    if sep == ":" and type(scope) == "string" then scope = string end
  else
    partial, base, sep = word, "", ""
  end
  local names = {}
  local function add(t)
    if type(t) ~= "table" then return end
    for k, v in pairs(t) do
      if type(k) == "string" and k:match("^[%a_][%w_]*$") and k:sub(1, #partial) == partial
        and (sep ~= ":" or type(v) == "function") then
        names[base .. sep .. k] = true
      end
    end
  end
  add(scope)
  local mt = type(scope) == "table" and getmetatable(scope)
  if mt and type(mt.__index) == "table" then add(mt.__index) end
  if base == "" then
    for _, kw in ipairs { "and", "break", "do", "else", "elseif", "end", "false", "for",
                          "function", "goto", "if", "in", "local", "nil", "not", "or",
                          "repeat", "return", "then", "true", "until", "while" } do
      if kw:sub(1, #partial) == partial then names[kw] = true end
    end
  end
  local list = {}
  for n in pairs(names) do list[#list + 1] = n end
  table.sort(list)
  return list
end

local function print_results(n, ...)
  if n == 0 then return end
  local out = {}
  for i = 1, n do out[i] = inspect.format((select(i, ...))) end
  io.stdout:write(table.concat(out, "\t"), "\n")
end

local function run_chunk(fn)
  local results = table.pack(xpcall(fn, function(err)
    -- a mistake of the user's (a bad task, an unknown option) is its message: "where: what"
    if check.is_user_error(err) then return tostring(err) end
    local msg = type(err) == "string" and err or inspect.format(err)
    return debug.traceback(msg, 2)
  end))
  if not results[1] then
    io.stderr:write(results[2], "\n")
    return
  end
  print_results(results.n - 1, table.unpack(results, 2, results.n))
  -- Let timers and processes the chunk started make progress between prompts.
  local ok, err = pcall(uv.run, "nowait")
  if not ok then io.stderr:write(tostring(err), "\n") end
end

--- Reads chunks until end of input (Ctrl-D) and runs each: here, or with `remote(source)`
-- (coral attach: it returns the text to print, or nil and an error). Returns 0.
function M.loop(remote)
  local history = M.history_path()
  if history then readline.read_history(history) end
  readline.set_completer(function(word) return M.complete(word) end)
  local buffer
  while true do
    local line = readline.readline(buffer and CONTINUE or PROMPT)
    if line == nil then
      io.stdout:write("\n")
      break
    elseif line == false then
      buffer = nil                               -- Ctrl-C: drop what was typed
    else
      buffer = buffer and (buffer .. "\n" .. line) or line
      if buffer:match("^%s*$") then
        buffer = nil
      else
        local source = buffer:gsub("^=", "return ")
        local fn, err = M.compile(source)
        if err ~= "incomplete" then
          readline.add_history(buffer)
          buffer = nil
          if not fn then
            io.stderr:write(err, "\n")
          elseif remote then
            local text, rerr = remote(source)
            if text == nil then io.stderr:write(tostring(rerr), "\n")
            elseif text ~= "" then io.stdout:write(text, "\n") end
          else
            run_chunk(fn)
          end
        end
      end
    end
  end
  readline.set_completer(nil)
  if history then
    make_dirs(history)
    local ok, err = readline.write_history(history)
    if not ok then io.stderr:write("coral: ", err, "\n") end
  end
  return 0
end

--- Runs the REPL until end of input (Ctrl-D). Returns 0.
function M.run()
  _G.coral = _G.coral or require "coral"
  io.stdout:write("coral ", require("coral.host").version,
    " (Lua 5.4) - Ctrl-D to leave, Ctrl-C to drop the line\n")
  return M.loop()
end

return M
