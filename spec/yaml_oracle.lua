--- The pure-Lua YAML writer coral used before src/yamlw.c: lua/coral/records/yaml.lua's encode
-- as it was (401c608), copied unchanged but for list_mt, which is the module's own. It is the
-- oracle spec/yaml_spec.lua checks the C writer against, byte for byte, as spec/dag_oracle.lua
-- is for coral.dag.
local M = {}

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r" }

local function unicode_escape(c)
  return string.format("\\u%04X", utf8.codepoint(c))
end

local function quote_text(s)
  -- Most strings (ids, times, paths) need no escape at all: say so in one scan.
  if not s:find('[%c"\\\128-\255]') then return '"' .. s .. '"' end
  local valid = utf8.len(s) ~= nil
  local text = s:gsub('[%c"\\\128-\255]', function(c)
    if ESCAPES[c] then return ESCAPES[c] end
    if c:byte() >= 128 and valid then return c end
    return string.format("\\x%02X", c:byte())
  end)
  if valid and text:find("[\194\239]") then
    -- YAML allows neither the C1 controls (U+0080..U+009F, NEL among them: a reader folds it
    -- into a space) nor U+FFFE and U+FFFF unescaped; LibYAML refuses the file.
    text = text:gsub("\194[\128-\159]", unicode_escape):gsub("\239\191[\190\191]", unicode_escape)
  end
  return '"' .. text .. '"'
end

-- The keys and values of one document repeat (a field name, a run id, a status, a time): each
-- is scanned once while M.encode writes (the pattern scans are most of the writer's time).
-- `written`: while M.encode runs, { [quote_text] = { text -> quoted }, [key_text_of] = ... }.
local written

local function once(make, x)
  local seen = written and written[make]
  local text = seen and seen[x]
  if not text then
    text = make(x)
    if seen then seen[x] = text end
  end
  return text
end

local function quote(s) return once(quote_text, s) end

-- Plain words that YAML readers (LibYAML's lyaml, PyYAML: YAML 1.1) take for a boolean or null,
-- in any case.
local NOT_PLAIN = { ["true"] = true, ["false"] = true, null = true, yes = true, no = true,
                    on = true, off = true }

local function key_text_of(k)
  k = tostring(k)
  -- (the words of NOT_PLAIN have at most 5 letters: a longer key needs no lower())
  if k:match("^[%a_][%w_%-%.]*$") and (#k > 5 or not NOT_PLAIN[k:lower()]) then return k end
  return quote(k)
end

local function key_text(k) return once(key_text_of, k) end

local function is_list(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t, n
end

local function scalar(v)
  local tv = type(v)
  if tv == "string" then return quote(v) end
  if tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    local text = string.format("%.17g", v)
    -- A float keeps a point or an exponent, or every reader (this one too) takes it for an integer.
    if not text:find("[%.e]") then text = text .. ".0" end
    return text
  end
  if tv == "boolean" then return tostring(v) end
  if v == nil then return "null" end
  error("yaml: cannot write a " .. tv)
end

local function by_text(a, b) return tostring(a) < tostring(b) end

local function sorted_keys(t)
  local keys, strings = {}, true
  for k in pairs(t) do
    keys[#keys + 1] = k
    if strings and type(k) ~= "string" then strings = false end
  end
  -- string keys (nearly all) sort as their text does, without a Lua call per comparison
  if strings then table.sort(keys) else table.sort(keys, by_text) end
  return keys
end

local emit
-- Writes `v` as the value after "key:" or "- " at `indent`.
local function emit_value(out, v, indent)
  if type(v) ~= "table" then return " " .. scalar(v) end
  local list, n = is_list(v)
  if n == 0 then return list and getmetatable(v) == M.list_mt and " []" or " {}" end
  emit(out, v, indent + 2)
  return nil
end

function emit(out, t, indent)
  local pad = string.rep(" ", indent)
  local list = is_list(t)
  if list then
    for _, v in ipairs(t) do
      if type(v) == "table" and not is_list(v) then
        -- "- k: v" with the rest of the map aligned under the first key
        local sub = {}
        emit(sub, v, indent + 2)
        sub[1] = pad .. "- " .. sub[1]:sub(indent + 3)
        for _, line in ipairs(sub) do out[#out + 1] = line end
      else
        local i = #out + 1
        out[i] = false
        local inline = emit_value(out, v, indent)
        out[i] = pad .. "-" .. (inline or "")
      end
    end
  else
    for _, k in ipairs(sorted_keys(t)) do
      local i = #out + 1
      out[i] = false
      local inline = emit_value(out, t[k], indent)
      out[i] = pad .. key_text(k) .. ":" .. (inline or "")
    end
  end
end

--- A metatable marking an empty table as a list ([] rather than {}): the module's own.
M.list_mt = require("coral.records.yaml").list_mt

--- Writes a table as YAML text. `comment` (optional) becomes a leading # line.
function M.encode(t, comment)
  local out = {}
  if comment then out[1] = "# " .. comment end
  if next(t) == nil then
    -- no lines would be an empty document, which YAML reads as null
    out[#out + 1] = getmetatable(t) == M.list_mt and "[]" or "{}"
  else
    written = { [quote_text] = {}, [key_text_of] = {} }
    local ok, err = pcall(emit, out, t, 0)
    written = nil
    if not ok then error(err, 0) end
  end
  return table.concat(out, "\n") .. "\n"
end

return M
