--- The YAML that coral writes (.coral/project_state.yaml), and a reader for that same subset:
-- block maps and lists indented by two spaces, strings always double-quoted, numbers,
-- booleans, null, and the empty {} and []. Anything else is reported with its line.
local yamlw = require "coral.yamlw"

local M = {}

--- A metatable marking an empty table as a list ([] rather than {}).
M.list_mt = {}

--- Writes a table as YAML text. `comment` (optional) becomes a leading # line.
-- The writer is coral.yamlw (src/yamlw.c, which says what it writes): a run writes the state
-- every second or so, and the pure-Lua writer it replaced (kept as spec/yaml_oracle.lua, the C
-- one's oracle) took 11.7M instructions for a 35 KB state, the C one 1.26M.
function M.encode(t, comment)
  return yamlw.encode(t, comment, M.list_mt)
end

-- {{{ reader

local function parse_error(line_no, message)
  error({ line = line_no, message = message }, 0)
end

local UNESCAPE = { n = "\n", t = "\t", r = "\r", ['"'] = '"', ["\\"] = "\\", ["/"] = "/", ["0"] = "\0" }

local function parse_quoted(text, line_no)
  -- runs of plain characters are copied whole: a path or a time has no escape at all
  local out, i = {}, 2
  while true do
    local j = text:find('["\\]', i)
    if not j then parse_error(line_no, "unterminated string") end
    if j > i then out[#out + 1] = text:sub(i, j - 1) end
    if text:byte(j) == 34 then   -- the closing quote
      local rest = text:sub(j + 1)
      if not rest:match("^%s*$") and not rest:match("^%s+#") then
        parse_error(line_no, "unexpected text after a string: " .. rest:gsub("^%s+", ""))
      end
      return table.concat(out)
    end
    local e = text:sub(j + 1, j + 1)
    if UNESCAPE[e] then out[#out + 1] = UNESCAPE[e]; i = j + 2
    elseif e == "x" then
      local hex = text:sub(j + 2, j + 3)
      if not hex:match("^%x%x$") then parse_error(line_no, "bad \\x escape") end
      out[#out + 1] = string.char(tonumber(hex, 16)); i = j + 4
    elseif e == "u" then
      local hex = text:sub(j + 2, j + 5)
      if not hex:match("^%x%x%x%x$") then parse_error(line_no, "bad \\u escape") end
      out[#out + 1] = utf8.char(tonumber(hex, 16)); i = j + 6
    else parse_error(line_no, "unknown escape \\" .. e) end
  end
end

local function parse_scalar(text, line_no)
  -- A quoted string may hold " #": parse_quoted finds where it ends and allows a comment after.
  if text:sub(1, 1) == '"' then return parse_quoted(text, line_no) end
  text = text:gsub("%s+#.*$", ""):gsub("%s+$", "")
  if text == "null" or text == "~" or text == "" then return nil end
  if text == "true" then return true end
  if text == "false" then return false end
  if text == "[]" then return setmetatable({}, M.list_mt) end
  if text == "{}" then return {} end
  -- tonumber keeps the type the text says: "2" is an integer, "2.0" and "1e3" are floats
  local n = tonumber(text)
  if n then return n end
  parse_error(line_no, "expected a quoted string, a number, true, false or null, got: " .. text)
end

-- The index of the quote that closes the string `text` starts with, or nil.
local function closing_quote(text)
  local i = 2
  while true do
    local j = text:find('["\\]', i)
    if not j then return nil end
    if text:byte(j) == 34 then return j end
    i = j + 2
  end
end

-- Does the text after "- " start a map ("key: ..." or "\"key\": ...") rather than hold a value?
local function starts_map(text)
  if text:sub(1, 1) == '"' then
    local close = closing_quote(text)
    return close ~= nil and text:sub(close + 1, close + 1) == ":"
  end
  return text:match("^[%w_][^:]*:") ~= nil
end

local function parse_key(text, line_no)
  if text:sub(1, 1) == '"' then
    local close = closing_quote(text)
    if not close then parse_error(line_no, "unterminated key") end
    local key = parse_quoted(text:sub(1, close), line_no)
    local rest = text:sub(close + 1)
    if rest:sub(1, 1) ~= ":" then parse_error(line_no, "expected ':' after the key") end
    return key, rest:sub(2)
  end
  local key, rest = text:match("^([^:%s][^:]*):(.*)$")
  if not key then parse_error(line_no, "expected 'key: value' or '- item'") end
  return key, rest
end

--- Reads YAML written by encode. Returns the table, or nil and "line N: what is wrong".
function M.decode(text)
  local lines = {}
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local first = line:find("%S")   -- blank lines and comments are not read
    if first and line:byte(first) ~= 35 then
      if first > 1 and line:find("\t", 1, true) and line:sub(1, first - 1):find("\t", 1, true) then
        return nil, "line " .. n .. ": tab in indentation"
      end
      local indent = #line:match("^ *")
      local last = line:find("%s+$") or #line + 1
      lines[#lines + 1] = { no = n, indent = indent, text = line:sub(indent + 1, last - 1) }
    end
  end
  local pos = 1

  local parse_block
  -- Value after "key:" or "- ": inline scalar, or a nested block on the next lines.
  local function parse_after(rest, line, parent_indent)
    rest = rest:gsub("^%s+", "")
    if rest ~= "" and not rest:match("^#") then return parse_scalar(rest, line.no) end
    local nxt = lines[pos]
    if nxt and nxt.indent > parent_indent then return parse_block(nxt.indent) end
    return nil
  end

  function parse_block(indent)
    local first = lines[pos]
    local result, items = {}, 0   -- a null list item leaves a hole: the next keeps its place
    local is_seq = first.text:sub(1, 1) == "-" and (first.text == "-" or first.text:sub(2, 2) == " ")
    while pos <= #lines do
      local line = lines[pos]
      if line.indent < indent then break end
      if line.indent > indent then parse_error(line.no, "unexpected indentation") end
      local item = line.text:sub(1, 1) == "-" and (line.text == "-" or line.text:sub(2, 2) == " ")
      if item ~= is_seq then parse_error(line.no, "mixed list items and keys at one level") end
      pos = pos + 1
      if is_seq then
        local rest = line.text:sub(3)
        items = items + 1
        if starts_map(rest) then
          -- "- key: value" starts a map whose other keys sit at indent + 2: the rest of the
          -- line is read again as its first line (in the consumed line's place, not inserted:
          -- an insert would move every line after it)
          pos = pos - 1
          lines[pos] = { no = line.no, indent = indent + 2, text = rest }
          result[items] = parse_block(indent + 2)
        else
          result[items] = parse_after(rest, line, indent)
        end
      else
        local key, rest = parse_key(line.text, line.no)
        if result[key] ~= nil then parse_error(line.no, "duplicate key '" .. key .. "'") end
        result[key] = parse_after(rest, line, indent)
      end
    end
    return result
  end

  if #lines == 0 then return {} end
  local only = #lines == 1 and lines[1].indent == 0 and lines[1].text:gsub("%s+#.*$", "")
  if only == "{}" or only == "[]" then return parse_scalar(only, lines[1].no) end
  local ok, result = pcall(function()
    if lines[1].indent ~= 0 then parse_error(lines[1].no, "unexpected indentation") end
    local r = parse_block(0)
    if pos <= #lines then parse_error(lines[pos].no, "unexpected indentation") end
    return r
  end)
  if ok then return result end
  if type(result) == "table" then return nil, "line " .. result.line .. ": " .. result.message end
  error(result, 0)
end

-- }}}

return M
