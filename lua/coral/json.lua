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
-- an object (`members`). Each item is encoded on its own and written a few hundred at a time,
-- so the text of a record of 100,000 tasks is never whole in memory. Ends with a newline.
function M.write(write, object, key, members, each)
  local head = M.encode(object)
  local open, close = members and "{" or "[", members and "}}\n" or "]}\n"
  write(head:sub(1, -2) .. (head == "{}" and "" or ",") .. M.encode(key) .. ":" .. open)
  local batch, n, sep = {}, 0, ""
  each(function(value, name)
    n = n + 1
    batch[n] = name and (sep .. M.encode(name) .. ":" .. M.encode(value)) or (sep .. M.encode(value))
    sep = ","
    if n == 512 then
      write(table.concat(batch, "", 1, n))
      n = 0
      -- the batch's strings are garbage now: without a step here the generational collector
      -- let 88 MB of them build up over the 100,000 results of a summary
      collectgarbage("step")
    end
  end)
  write(table.concat(batch, "", 1, n) .. close)
end

return M
