-- coral.records.yaml: the YAML coral writes (.coral/project_state.yaml) and its reader. What it
-- writes is checked against an independent reader, Debian's lua-yaml (lyaml over LibYAML), and
-- read back by its own decoder; bad input gives nil and "line N: what is wrong".
local H = require("spec.helper").guard(_ENV)
local yaml = require "coral.records.yaml"

-- The independent reader: installed by scripts/install-deps --test when it is missing.
local function lyaml()
  local ok, mod = pcall(require, "lyaml")
  if ok then return mod end
  local r = H.run({ "scripts/install-deps", "--test" }, { exe = "/bin/sh", timeout = 900 })
  assert(r.code == 0, "cannot install lua-yaml: " .. r.stdout .. r.stderr)
  return require "lyaml"
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) == "number" then return string.format("%s (%s)", tostring(v), math.type(v)) end
  return tostring(v)
end

-- Deep equality that also tells integers from floats and string keys from others, and ignores
-- metatables. Returns true, or false and where the two differ.
local function same(a, b, path)
  path = path or "value"
  if type(a) ~= type(b) then return false, path .. ": " .. show(a) .. " vs " .. show(b) end
  if type(a) == "number" and math.type(a) ~= math.type(b) then
    return false, path .. ": " .. show(a) .. " vs " .. show(b)
  end
  if type(a) ~= "table" then
    if a == b then return true end
    return false, path .. ": " .. show(a) .. " vs " .. show(b)
  end
  for k, v in pairs(a) do
    local ok, where = same(v, b[k], path .. "[" .. show(k) .. "]")
    if not ok then return false, where end
  end
  for k, v in pairs(b) do
    if a[k] == nil then return false, path .. "[" .. show(k) .. "]: missing, other side has " .. show(v) end
  end
  return true
end

local function assert_same(expected, actual, text)
  local ok, where = same(expected, actual)
  assert(ok, (where or "") .. (text and ("\nin:\n" .. text) or ""))
end

-- Encodes `t`, then reads the text with lyaml and with yaml.decode: both must give `t` back.
local function round_trip(t)
  local text = yaml.encode(t)
  assert_same(t, lyaml().load(text), text)
  local back, err = yaml.decode(text)
  assert(back, err)
  assert_same(t, back, text)
  return text
end

-- Strings a YAML writer must quote to keep them strings. (Not NUL: lyaml cuts a string there.)
local AWKWARD = {
  "", " ", "  leading spaces", "trailing spaces  ", "key: value", "a:b", "ends with colon:",
  "# not a comment", "-", "- item", "? x", "[1, 2]", "{a: 1}", "*alias", "&anchor", "!tag",
  "%directive", "@at", "`tick", "'single'", '"double"', 'say "hi"', "back\\slash", "|", ">",
  "line one\nline two", "trailing newline\n", "\ttab", "cr\r", "bell\a", "del\127",
  "héllo wörld", "日本語", "emoji 🎉", "true", "false", "null", "~", "0", "-1", "1.5", "1e3",
  "0x1F", "010", ".inf", "-.inf", ".nan", "1_000", "12:30", "2024-01-15", "---", "...",
}

-- Words a YAML 1.1 reader takes for a boolean or null when they are not quoted.
local WORDS = { "yes", "no", "on", "off", "y", "n", "True", "FALSE", "Null", "NULL", "Yes", "OFF" }

describe("coral.records.yaml", function()
  describe("encode", function()
    it("writes block maps with sorted keys and lists indented by two spaces", function()
      local text = yaml.encode({
        name = "coral", count = 3, ok = true,
        agents = { a = { status = "done", history = { { n = 1, s = "x" }, { n = 2, s = "y" } } } },
        tags = { "one", "two" },
        grid = { { 1, 2 }, {} },
      }, "written by a spec")
      assert.are.equal(table.concat({
        "# written by a spec",
        "agents:",
        "  a:",
        "    history:",
        "      - n: 1",
        "        s: \"x\"",
        "      - n: 2",
        "        s: \"y\"",
        "    status: \"done\"",
        "count: 3",
        "grid:",
        "  -",
        "    - 1",
        "    - 2",
        "  - {}",
        "name: \"coral\"",
        "ok: true",
        "tags:",
        "  - \"one\"",
        "  - \"two\"",
      }, "\n") .. "\n", text)
    end)

    it("writes an empty table as {}, or as [] when it carries list_mt", function()
      assert.are.equal("a: {}\nb: []\n", yaml.encode { a = {}, b = setmetatable({}, yaml.list_mt) })
    end)

    it("writes NaN and infinities as null", function()
      assert.are.equal("a: null\nb: null\nc: null\n", yaml.encode { a = 0 / 0, b = math.huge, c = -math.huge })
    end)

    it("raises on a value YAML cannot hold", function()
      local ok, err = pcall(yaml.encode, { f = print })
      assert.is_false(ok)
      assert.matches("yaml: cannot write a function$", err)
      ok, err = pcall(yaml.encode, { { co = coroutine.create(print) } })
      assert.is_false(ok)
      assert.matches("yaml: cannot write a thread$", err)
    end)

    it("escapes bytes that are not UTF-8 and reads them back", function()
      local t = { bin = "\255\254 \128x", mixed = "ok \195", nul = "nul\0byte" }
      local text = yaml.encode(t)
      assert.matches('bin: "\\xFF\\xFE \\x80x"', text, 1, true)
      assert.matches('mixed: "ok \\xC3"', text, 1, true)
      assert.matches('nul: "nul\\x00byte"', text, 1, true)
      assert_same(t, (yaml.decode(text)), text)
    end)
  end)

  describe("round trip through lua-yaml and back", function()
    it("keeps nested maps and lists", function()
      round_trip {
        project = "coral",
        agents = {
          ["backend-developer"] = { status = "completed", history = { { run_id = "r1", attempt = 1 } } },
          ["qa.testing"] = { history = { { run_id = "r2", attempt = 2, ok = false } }, status = "failed" },
        },
        matrix = { { 1, 2, 3 }, { { deep = { deeper = { "x" } } } }, { "a", { b = "c" } } },
      }
    end)

    it("keeps a list at the top", function()
      round_trip { "a", 1, true, { k = "v" }, { 2, 3 } }
    end)

    it("keeps empty maps and lists, at every depth", function()
      local text = round_trip { a = {}, b = { c = {} }, d = { {}, { {} } } }
      assert.matches("a: {}", text, 1, true)
      local t = { list = setmetatable({}, yaml.list_mt), nested = { setmetatable({}, yaml.list_mt) } }
      text = yaml.encode(t)
      assert.matches("list: []", text, 1, true)
      assert_same(t, lyaml().load(text), text)
      local back = assert(yaml.decode(text))
      assert.are.equal(yaml.list_mt, getmetatable(back.list))
      assert.are.equal(yaml.list_mt, getmetatable(back.nested[1]))
      assert.are.equal(text, yaml.encode(back))
    end)

    it("keeps strings that need quotes, as values and in lists", function()
      local map = {}
      for i, s in ipairs(AWKWARD) do map["k" .. i] = s end
      for i, s in ipairs(WORDS) do map["w" .. i] = s end
      round_trip(map)
      round_trip(AWKWARD)
      round_trip(WORDS)
      local list_of_maps = {}
      for i, s in ipairs(AWKWARD) do list_of_maps[i] = { v = s, [s == "" and "empty" or s] = i } end
      round_trip(list_of_maps)
    end)

    it("keeps strings that need quotes as keys", function()
      local map = {}
      for i, s in ipairs(AWKWARD) do map[s] = i end
      for _, k in ipairs { "simple", "with-dash", "with.dot", "under_score", "CamelCase", "x1" } do
        map[k] = k
      end
      round_trip(map)
    end)

    it("keeps keys that YAML would read as booleans or null", function()
      local map, list = {}, {}
      for i, w in ipairs(WORDS) do map[w] = i; list[i] = { [w] = w } end
      round_trip(map)
      round_trip(list)
    end)

    it("keeps a task text with an issue number", function()
      round_trip { project = "fix bug #12 in the parser", notes = { "see #3", "a # b", "#" } }
    end)

    it("keeps a list string with escaped quotes and a colon", function()
      round_trip { 'say "hi": now', '"quoted": yes', { 'k"ey: x' } }
    end)

    it("keeps integers as integers and floats as floats", function()
      round_trip {
        -- (not math.mininteger: lyaml fails on it, reading its digits before the sign)
        zero = 0, one = 1, neg = -42, big = math.maxinteger, small = math.mininteger + 1,
        half = 0.5, tenth = 0.1, third = 1 / 3, neg_float = -2.75, tiny = 5e-324, huge = 1.5e300,
        ints = { 1, 2, 3 }, floats = { 0.25, 1e-7, 123456.789 },
      }
    end)

    it("keeps floats that have a whole value as floats", function()
      round_trip { one = 1.0, neg = -3.0, zero = 0.0, big = 1e15, bigger = 1e20, duration = 2.0 }
    end)

    it("reads numbers written with a point or an exponent as floats, as lua-yaml does", function()
      local text = "a: 2.0\nb: 1e3\nc: -0.0\nd: 7\n"
      local mine, err = yaml.decode(text)
      assert(mine, err)
      assert_same(lyaml().load(text), mine, text)
      assert_same({ a = 2.0, b = 1000.0, c = -0.0, d = 7 }, mine, text)
    end)

    it("keeps characters YAML does not allow unescaped (C1 controls, U+FFFE, U+FFFF)", function()
      round_trip { nel = "a\u{85}b", c1 = "\u{80}\u{9F}", nonchar = "x\u{FFFE}\u{FFFF}", ok = "\u{A0}\u{FEFF}" }
      round_trip { "\u{85}", "\u{FFFF}" }
    end)

    it("keeps booleans", function()
      round_trip { t = true, f = false, list = { true, false, true } }
    end)

    it("keeps an empty table at the top", function()
      assert.are.equal("{}\n", round_trip {})
      local text = yaml.encode(setmetatable({}, yaml.list_mt), "nothing yet")
      assert.are.equal("# nothing yet\n[]\n", text)
      assert_same({}, lyaml().load(text), text)
      assert.are.equal(yaml.list_mt, getmetatable(assert(yaml.decode(text))))
    end)
  end)

  describe("decode", function()
    it("reads what lua-yaml reads from the same text", function()
      local texts = {
        '# a comment\n\nname: "x"   # trailing comment\nn: 7\nf: -1.25\nt: true\nf2: false\n',
        'a:\n    deeper: 1\n    list:\n        - "four spaces"\n',
        'u: "\\u00e9t\\u00e9"\nx: "\\x41\\x42"\ne: "tab\\there\\\\ \\"q\\" \\/"\n',
        '"quoted key": 1\n"k: v": 2\n"": 3\n',
        'list:\n  - 1\n  -\n    - 2\n  - k: "v"\n    other: 3\n  - {}\n  - []\n',
        '- "a"\n- "b"\n',
        'n: 1.5e3\nm: 2.5e-3\n',
        's: "issue #12"  # and a comment\nt: "#"\n',
      }
      for _, text in ipairs(texts) do
        local mine, err = yaml.decode(text)
        assert(mine, err)
        assert_same(lyaml().load(text), mine, text)
      end
    end)

    it("reads null and ~ as absent keys", function()
      assert.are.same({ d = 1 }, yaml.decode("a: null\nb: ~\nc:\nd: 1\n"))
    end)

    it("keeps the place of a null list item", function()
      local t = assert(yaml.decode("- 1\n- null\n- 3\n-\n- ~\n- 6\n"))
      assert.are.same({ [1] = 1, [3] = 3, [6] = 6 }, t)
      -- NaN is written as null: the items after it keep their place
      t = assert(yaml.decode(yaml.encode { list = { 1, 0 / 0, 3 } }))
      assert.are.same({ [1] = 1, [3] = 3 }, t.list)
    end)

    it("reads empty text and text of comments only as an empty table", function()
      assert.are.same({}, yaml.decode(""))
      assert.are.same({}, yaml.decode("\n\n"))
      assert.are.same({}, yaml.decode("# only a comment\n   # and another\n"))
    end)

    local bad = {
      { "a tab in the indentation", "a:\n\tb: 1\n", "line 2: tab in indentation" },
      { "an indented first line", "  a: 1\n", "line 1: unexpected indentation" },
      { "an over-indented key", "a: 1\n  b: 2\n", "line 2: unexpected indentation" },
      { "a stray deeper line after a block", "a:\n  b: 1\n    c: 2\n", "line 3: unexpected indentation" },
      { "list items among keys", "a: 1\n- 2\n", "line 2: mixed list items and keys at one level" },
      { "keys among list items", "- 1\nb: 2\n", "line 2: mixed list items and keys at one level" },
      { "a duplicate key", "a: 1\nb: 2\na: 3\n", "line 3: duplicate key 'a'" },
      { "a duplicate key in a list item", "- a: 1\n  a: 2\n", "line 2: duplicate key 'a'" },
      { "an unterminated string", 'a: "abc\n', "line 1: unterminated string" },
      { "an unterminated key", '"abc: 1\n', "line 1: unterminated key" },
      { "a quoted key without a colon", '"abc" 1\n', "line 1: expected ':' after the key" },
      { "a bare word", "a: hello\n",
        "line 1: expected a quoted string, a number, true, false or null, got: hello" },
      { "a flow list", "a: [1, 2]\n",
        "line 1: expected a quoted string, a number, true, false or null, got: [1, 2]" },
      { "a line that is no key", "a: 1\njust words\n", "line 2: expected 'key: value' or '- item'" },
      { "an unknown escape", 'a: "\\q"\n', "line 1: unknown escape \\q" },
      { "a bad \\x escape", 'a: "\\xZZ"\n', "line 1: bad \\x escape" },
      { "a bad \\u escape", 'a: "\\u12"\n', "line 1: bad \\u escape" },
      { "text after a string", 'a: "x" y\n', "line 1: unexpected text after a string: y" },
      { "an error after comments and blank lines", '# head\n\na: 1\n\n# note\nb: nope\n',
        "line 6: expected a quoted string, a number, true, false or null, got: nope" },
      { "an error deep in a block", 'a:\n  b:\n    - 1\n    - "x\n',
        "line 4: unterminated string" },
    }
    for _, case in ipairs(bad) do
      it("returns nil and the line for " .. case[1], function()
        local t, err = yaml.decode(case[2])
        assert.is_nil(t)
        assert.are.equal(case[3], err)
      end)
    end
  end)
end)
