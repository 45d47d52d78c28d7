--- JSON text of coral's records and views, written by coral.jsonw (src/jsonw.c: integers
-- digit by digit, a float as the fewest decimals that read back as it, no snprintf of "%.14g"
-- per number as lua-cjson does). An empty Lua table does not say whether it is a list or an
-- object: the keys that hold lists are named here, and their empty values are written as [].
local jsonw = require "coral.jsonw"

local M = {}

--- Keys whose values are lists wherever coral writes them.
M.LISTS = { depends_on = true, tasks = true, phases = true, critical_path = true, order = true,
            runs = true, agents = true, outputs = true }

--- `value` as JSON text (one line), the empty values of list keys written as [].
function M.encode(value)
  return jsonw.encode(value, M.LISTS)
end

return M
