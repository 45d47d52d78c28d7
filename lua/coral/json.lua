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

--- Gives `object` to `write(piece)` as JSON text in pieces, then its member `key` last, made
-- by `each(emit)`: emit(value) for each item of a list, or emit(value, name) for each member of
-- an object (`members`). The items are encoded 512 at a time, so the text of a record of
-- 100,000 tasks is never whole in memory. Ends with a newline.
function M.write(write, object, key, members, each)
  local head = M.encode(object)
  write(head:sub(1, -2) .. (head == "{}" and "" or ",") .. M.encode(key) .. ":" .. (members and "{" or "["))
  local batch, n, sep = {}, 0, ""
  local function flush()
    local text = M.encode(batch)   -- "[...]" or "{...}": its inside goes on the one open above
    write(sep .. text:sub(2, -2))
    sep, batch, n = ",", {}, 0
  end
  each(function(value, name)
    n = n + 1
    batch[name or n] = value
    if n == 512 then flush() end
  end)
  if n > 0 then flush() end
  write(members and "}}\n" or "]}\n")
end

return M
