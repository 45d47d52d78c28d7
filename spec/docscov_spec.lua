-- Every function and method the C modules register is documented beside them (docs/*.md):
-- the name must appear there as a call, `name(` or `:name(` / `.name(`.
local H = require("spec.helper").guard(_ENV)

local MODULES = {
  { name = "coral.proc", doc = "docs/proc.md", sample = function(m) return m.spawn { argv = { "true" } } end },
  { name = "coral.dag", doc = "docs/dag.md", sample = function(m) return m.new() end },
  { name = "coral.coord", doc = "docs/coord.md", sample = function(m)
      local dir = H.tmpdir()
      return m.lock(dir .. "/f", { mkdir = true })
    end },
}

local function names(t, into)
  for k, v in pairs(t or {}) do
    if type(k) == "string" and type(v) == "function" and k:sub(1, 2) ~= "__" then into[k] = true end
  end
end

describe("C module docs", function()
  for _, m in ipairs(MODULES) do
    it("document every function and method of " .. m.name, function()
      local mod = require(m.name)
      local found = {}
      names(mod, found)
      local object = m.sample(mod)
      local mt = getmetatable(object)
      local methods = mt.__index
      if type(methods) == "function" then
        -- an __index function (for fields such as p.pid) keeps the methods in an upvalue
        methods = select(2, debug.getupvalue(methods, 1))
      end
      names(type(methods) == "table" and methods or mt, found)
      assert.is_true(next(found) ~= nil)
      if object.wait then object:wait() end
      if object.close then object:close() elseif object.unlock then object:unlock() end
      local text = assert(H.read_file(H.root .. "/" .. m.doc))
      local missing = {}
      for name in pairs(found) do
        if not (text:find("[%.:]" .. name .. "%(") or text:find("[%.:]" .. name .. "`")
                or text:find("`" .. name .. "%(")) then
          missing[#missing + 1] = name
        end
      end
      table.sort(missing)
      assert.are.same({}, missing)
    end)
  end
end)
