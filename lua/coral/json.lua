--- JSON text of coral's records and views. Debian's lua-cjson (2.1.0) writes every empty table
-- as an object ({}) and has no way to mark one a list: the keys that hold lists are named here,
-- and their empty values are written as [].
local cjson = require "cjson"

local M = {}

--- Keys whose values are lists wherever coral writes them.
M.LISTS = { depends_on = true, tasks = true, phases = true, critical_path = true, order = true,
            runs = true, agents = true }

--- `value` as JSON text, the empty values of list keys written as [].
function M.encode(value)
  local text = cjson.encode(value)
  -- Find each "{}" (rare: '{' opens objects only) and look back for `"key":` before it; a
  -- gsub or a find per key would scan every byte of a 0.5 MB plan several times (measured).
  local at = text:find("{}", 1, true)
  if not at then return text end
  local parts, last = {}, 1
  while at do
    local key = text:sub(math.max(1, at - 40), at - 1):match('"([%a_][%w_]*)":$')
    if key and M.LISTS[key] then
      parts[#parts + 1] = text:sub(last, at - 1)
      parts[#parts + 1] = "[]"
      last = at + 2
    end
    at = text:find("{}", at + 2, true)
  end
  parts[#parts + 1] = text:sub(last)
  return table.concat(parts)
end

return M
