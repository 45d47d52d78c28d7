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
  return (text:gsub('"([%a_][%w_]*)":{}', function(key)
    if M.LISTS[key] then return '"' .. key .. '":[]' end
  end))
end

return M
