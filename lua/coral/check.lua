--- Strict checking of option tables, so a typo in a recipe fails loudly at the recipe's line.
local M = {}

--- Where the code `level` frames above the caller of this function's caller is: "file:line".
function M.where(level)
  local info = debug.getinfo((level or 1) + 2, "Sl")
  if not info or info.currentline < 0 then return "?" end
  return info.short_src .. ":" .. info.currentline
end

local function type_ok(value, want)
  for t in want:gmatch("[^|]+") do
    if t == "integer" then
      if math.type(value) == "integer" then return true end
    elseif t == "list" then
      if type(value) == "table" then return true end
    elseif type(value) == t then
      return true
    end
  end
  return false
end

--- Checks that `opts` only has keys of `spec` (key -> "type|type") with those types.
-- Raises "what: unknown option 'x'" or "what: option 'x' must be a number, got string" at
-- `level` (as in error()), so the message points at the recipe line that passed the table.
---@param what string name of the call, e.g. "coral.task"
---@param opts table|nil
---@param spec table<string, string>
---@param level integer
function M.options(what, opts, spec, level)
  if opts == nil then return end
  if type(opts) ~= "table" then
    error(string.format("%s: options must be a table, got %s", what, type(opts)), level + 1)
  end
  for k, v in pairs(opts) do
    local want = spec[k]
    if not want then
      local known = {}
      for name in pairs(spec) do known[#known + 1] = name end
      table.sort(known)
      error(string.format("%s: unknown option '%s' (known: %s)", what, tostring(k),
                          table.concat(known, ", ")), level + 1)
    end
    if not type_ok(v, want) then
      error(string.format("%s: option '%s' must be %s, got %s", what, k,
                          want:gsub("|", " or "), math.type(v) or type(v)), level + 1)
    end
  end
end

--- Raises unless `value` is one of the words in `allowed`.
function M.one_of(what, name, value, allowed, level)
  for _, a in ipairs(allowed) do if a == value then return end end
  error(string.format("%s: %s must be one of %s, got '%s'", what, name,
                      table.concat(allowed, ", "), tostring(value)), level + 1)
end

return M
