-- coral.jsonw (src/jsonw.c), the JSON writer of coral's records, read back by lua-cjson.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local jsonw = require "coral.jsonw"
local json = require "coral.json"

local function back(v) return cjson.decode(jsonw.encode(v)) end

describe("coral.jsonw", function()
  it("writes every number so that it reads back as itself", function()
    math.randomseed(17)
    local mismatches = {}
    for i = 1, 100000 do
      local x = (math.random() - 0.5) * 10 ^ math.random(-15, 20)
      if i % 3 == 0 then x = math.floor(x * 1e6) / 1e6 end                  -- microseconds
      if i % 5 == 0 then x = 1.7e9 + math.random(0, 999999) / 1e6 end       -- a time of day
      if i % 7 == 0 then x = math.random(0, 10 ^ 9) / 1e9 end               -- nanoseconds
      if back(x) ~= x and #mismatches < 5 then mismatches[#mismatches + 1] = string.format("%.17g", x) end
    end
    assert.are.same({}, mismatches)
    for _, x in ipairs { 0.1 + 0.2, 1 / 3, -2.5, 1e300, -1e-300, 5e-324, 2 ^ 53, 2 ^ 53 + 2, 2 ^ 63, 0.0 } do
      assert.are.equal(x, back(x))
    end
    for _, i in ipairs { 0, 1, -1, 42, math.maxinteger, math.mininteger } do
      assert.are.equal(tostring(i), jsonw.encode(i))
    end
  end)

  it("writes a time to the microsecond and a duration to the nanosecond, in few digits", function()
    assert.are.equal("1764430000.123456", jsonw.encode(1764430000.123456))
    assert.are.equal("0.001234567", jsonw.encode(1234567 / 1e9))
    assert.are.equal("0.25", jsonw.encode(0.25))
    assert.are.equal("3", jsonw.encode(3.0))
  end)

  it("escapes what JSON needs escaped and keeps every other byte", function()
    local s = "q\"b\\n\n r\r t\t \1 \31 \127 / é \255"
    assert.are.equal(s, back(s))
    assert.are.equal('"a\\"b\\\\c\\n\\u0001\\u007f/"', jsonw.encode("a\"b\\c\n\1\127/"))
  end)

  it("writes arrays, objects, and the empty table of a list key as []", function()
    assert.are.equal("[1,2,3]", jsonw.encode { 1, 2, 3 })
    assert.are.equal("{}", jsonw.encode {})
    assert.are.same({ a = { 1, "x", true }, b = { c = false } }, back { a = { 1, "x", true }, b = { c = false } })
    assert.are.same({ ["1"] = "a", ["3"] = "c" }, back { [1] = "a", [3] = "c" })   -- not 1..n: an object
    assert.are.equal('{"depends_on":[]}', jsonw.encode({ depends_on = {} }, { depends_on = true }))
    assert.are.equal('{"x":{}}', jsonw.encode({ x = {} }, { depends_on = true }))
    assert.are.equal('{"depends_on":[]}', json.encode { depends_on = {} })
    assert.are.equal("null", jsonw.encode(nil))
  end)

  it("refuses what JSON cannot hold, saying what", function()
    local function err(v)
      local ok, e = pcall(jsonw.encode, v)
      assert.is_false(ok)
      return e
    end
    assert.matches("NaN", err(0 / 0))
    assert.matches("infinity", err(math.huge))
    local t = {}
    t.self = t
    assert.matches("nested deeper than 1000", err(t))
    assert.matches("cannot write a function %(key 'f'%)", err { f = print })
    assert.matches("table key must be a string or a number, got boolean", err { [true] = 1 })
    assert.has_error(function() jsonw.encode(1, 2) end)
    assert.has_error(function() jsonw.encode(1, {}, 3) end)
  end)

  it("is what the journal is written with: a start's time keeps its microseconds", function()
    local dir = H.tmpdir()
    local coral = require "coral"
    local s = coral.runner({ project_dir = dir, output = "quiet" }):execute_plan(coral.plan {
      coral.task("w", "x", { id = "a", cmd = "true" }) })
    assert.are.equal(1, s.succeeded)
    for line in io.lines(s.run_dir .. "/journal.jsonl") do
      local t = line:match('"t":([%d%.]+)')
      assert.is_truthy(t, line)
      assert.is_true(#(t:match("%.(%d+)$") or "") <= 6, line)   -- not 14 digits of noise
      assert.are.equal(tonumber(t), cjson.decode(line).t)
    end
  end)
end)

describe("coral.json.write", function()
  local function written(...)
    local pieces = {}
    json.write(function(piece) pieces[#pieces + 1] = piece end, ...)
    return table.concat(pieces), #pieces
  end

  it("writes an object with one big member last, a list or an object, read back as encode's", function()
    local items, members = {}, {}
    for i = 1, 1300 do
      items[i] = { id = "t" .. i, depends_on = {}, at = i / 1e3 }
      members["t" .. i] = { n = i, outputs = {} }
    end
    local text, pieces = written({ name = "p", phases = {} }, "tasks", false, function(emit)
      for _, item in ipairs(items) do emit(item) end
    end)
    assert.are.equal("\n", text:sub(-1))
    assert.is_true(pieces >= 4, "written in pieces")   -- 512 items a piece
    assert.are.same(cjson.decode(json.encode { name = "p", phases = {}, tasks = items }), cjson.decode(text))
    assert.truthy(text:find('"depends_on":[]', 1, true))   -- list keys as encode writes them
    text = written({ status = "ok" }, "results", true, function(emit)
      for id, r in pairs(members) do emit(r, id) end
    end)
    assert.are.same(cjson.decode(json.encode { status = "ok", results = members }), cjson.decode(text))
  end)

  it("writes empty heads and empty members", function()
    assert.are.equal('{"tasks":[]}\n', (written({}, "tasks", false, function() end)))
    assert.are.equal('{"a":1,"results":{}}\n', (written({ a = 1 }, "results", true, function() end)))
  end)
end)
