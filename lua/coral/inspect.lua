--- Turns any Lua value into readable text: strings quoted, tables nested and indented with
-- sorted keys, repeated tables shown once and cycles marked. Used by the REPL and messages.
local M = {}

local function is_identifier(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil
end

local type_order = { number = 1, string = 2, boolean = 3 }

local function sort_keys(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    return (type_order[ta] or 9) < (type_order[tb] or 9) or
      ((type_order[ta] or 9) == (type_order[tb] or 9) and ta < tb)
  end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local function scalar(v)
  local tv = type(v)
  if tv == "string" then return (string.format("%q", v):gsub("\\\n", "\\n")) end
  if tv == "number" or tv == "boolean" or tv == "nil" then return tostring(v) end
  return "<" .. tostring(v) .. ">"
end

--- Formats `value`.
---@param value any
---@param opts? {width?: integer, depth?: integer} width for one-line tables (default 72), max depth (default 12)
---@return string
function M.format(value, opts)
  opts = opts or {}
  local width = opts.width or 72
  local max_depth = opts.depth or 12
  local ids, next_id = {}, 0
  local active = {}      -- tables on the current path: seeing one again is a cycle

  local function id_of(t)
    if not ids[t] then next_id = next_id + 1; ids[t] = next_id end
    return ids[t]
  end

  local function fmt(v, indent, depth)
    if type(v) ~= "table" then return scalar(v) end
    if active[v] then return "<cycle: table " .. id_of(v) .. ">" end
    if depth > max_depth then return "{...}" end
    local mt = getmetatable(v)
    if mt and mt.__tostring then return tostring(v) end
    active[v] = true
    local items, n = {}, #v
    for i = 1, n do items[#items + 1] = fmt(v[i], indent .. "  ", depth + 1) end
    local keys = {}
    for k in pairs(v) do
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
    end
    table.sort(keys, sort_keys)
    for _, k in ipairs(keys) do
      local key = is_identifier(k) and k or "[" .. scalar(k) .. "]"
      items[#items + 1] = key .. " = " .. fmt(v[k], indent .. "  ", depth + 1)
    end
    active[v] = nil
    local prefix = ids[v] and ("<" .. ids[v] .. ">") or ""
    if #items == 0 then return prefix .. "{}" end
    local one_line = prefix .. "{ " .. table.concat(items, ", ") .. " }"
    if #one_line + #indent <= width and not one_line:find("\n") then return one_line end
    return prefix .. "{\n" .. indent .. "  " .. table.concat(items, ",\n" .. indent .. "  ")
      .. "\n" .. indent .. "}"
  end

  return fmt(value, "", 1)
end

return M
