--- Strict checking of option tables, so a typo in a recipe fails loudly at the recipe's line;
-- and the error of a user's mistake, which carries where the mistake is as data.
local M = {}

--- A mistake of the user's (a bad recipe, plan, option or argument, a busy project): its
-- message, and where it is (a recipe's "file:line", or nil) as data. tostring gives
-- "where: message"; the command line prints that once, without a traceback.
local UserError = {}
UserError.__index = UserError
function UserError.__tostring(e)
  return e.where and (e.where .. ": " .. e.message) or e.message
end
M.UserError = UserError

--- Raises a user error: `message` found at `where` ("file:line", or nil).
function M.user_error(message, where)
  error(setmetatable({ message = message, where = where }, UserError), 0)
end

--- True when `e` is a user error.
function M.is_user_error(e)
  return getmetatable(e) == UserError
end

--- Raises a user error blaming the code `level` levels up, as error(message, level) would:
-- 1 is the function that called fail, 2 its caller (a recipe line), and so on.
function M.fail(message, level)
  M.user_error(message, M.blame((level or 1) + 1))
end

--- Where to blame the code `level` levels up (1: the caller of blame): its "file:line"; when a
-- tail call (`return coral.plan {...}`) left no frame there, the script coral runs
-- (`coral recipe.lua`), if any; else nil.
function M.blame(level)
  local info = debug.getinfo((level or 1) + 1, "Sl")
  if info and info.currentline >= 0 then return info.short_src .. ":" .. info.currentline end
  local arg = rawget(_G, "arg")
  local script = type(arg) == "table" and arg[0]
  return type(script) == "string" and script:match("%.lua$") and script or nil
end

--- A message handler for xpcall: a user error as it is, any other error with a traceback.
function M.traceback(err)
  if M.is_user_error(err) then return err end
  return debug.traceback(tostring(err), 2)
end

-- A function's short_src, made once per function: every task of a plan asks where it was
-- declared, and "S" formats the source name again at each call.
local source_of = setmetatable({}, { __mode = "k" })

--- Where the code `level` frames above the caller of this function's caller is: "file:line".
function M.where(level)
  local info = debug.getinfo((level or 1) + 2, "fl")
  if not info or info.currentline < 0 then return "?" end
  local src = source_of[info.func]
  if not src then
    src = debug.getinfo(info.func, "S").short_src
    source_of[info.func] = src
  end
  return src .. ":" .. info.currentline
end

-- Edit distance (insertions, deletions, substitutions, and swaps of two neighbours).
local function distance(a, b)
  local prev2, prev = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        cur[j] = math.min(cur[j], prev2[j - 2] + 1)
      end
    end
    prev2, prev = prev, cur
  end
  return prev[#b]
end

--- The word of `candidates` nearest to `word` (a typo: at most a third of its letters off),
-- or nil.
function M.nearest(word, candidates)
  word = tostring(word)
  local best, best_d
  for _, c in ipairs(candidates) do
    local d = distance(word:lower(), c:lower())
    if d <= math.max(1, #word // 3) and (not best_d or d < best_d) then best, best_d = c, d end
  end
  return best
end

--- " (did you mean 'x'?)" for a typo of one of `candidates`, else "".
function M.did_you_mean(word, candidates)
  local near = M.nearest(word, candidates)
  return near and string.format(" (did you mean '%s'?)", near) or ""
end

-- "string|list" -> { string = true, list = true }: split once per spelling, not at every check
-- (a plan of 100,000 tasks checks each option of each task).
local wanted = setmetatable({}, { __index = function(sets, want)
  local set = {}
  for t in want:gmatch("[^|]+") do set[t] = true end
  sets[want] = set
  return set
end })

local function type_ok(value, want)
  local set, tv = wanted[want], type(value)
  if set[tv] then return true end
  if set.list and tv == "table" then return true end
  return set.integer and math.type(value) == "integer" or false
end

--- Checks that `opts` only has keys of `spec` (key -> "type|type") with those types.
-- Raises "what: unknown option 'x'" or "what: option 'x' must be a number, got string" at
-- `level` (as in error()), so the message points at the recipe line that passed the table.
---@param what string name of the call, e.g. "coral.task"
---@param opts table|nil
---@param spec table<string, string>
---@param level integer
function M.options(what, opts, spec, level)
  local err = M.option_error(what, opts, spec)
  if err then M.fail(err, level + 1) end
end

--- What is wrong with `opts` against `spec` (as options() checks it), or nil.
function M.option_error(what, opts, spec)
  if opts == nil then return nil end
  if type(opts) ~= "table" then
    return string.format("%s: options must be a table, got %s", what, type(opts))
  end
  for k, v in pairs(opts) do
    local want = spec[k]
    if not want then
      local known = {}
      for name in pairs(spec) do known[#known + 1] = name end
      table.sort(known)
      local near = M.nearest(k, known)
      return string.format("%s: unknown option '%s' (%sknown: %s)", what, tostring(k),
                           near and ("did you mean '" .. near .. "'? ") or "", table.concat(known, ", "))
    end
    if not type_ok(v, want) then
      return string.format("%s: option '%s' must be %s, got %s", what, k, want:gsub("|", " or "),
                           math.type(v) or type(v))
    end
    if v ~= v then return string.format("%s: option '%s' must be a number, got NaN", what, k) end
  end
  return nil
end

--- What is wrong with `value` if it is not one of the words in `allowed`, or nil.
function M.choice_error(what, name, value, allowed)
  for _, a in ipairs(allowed) do if a == value then return nil end end
  return string.format("%s: %s must be one of %s, got '%s'", what, name, table.concat(allowed, ", "), tostring(value))
end

--- Raises unless `value` is one of the words in `allowed`.
function M.one_of(what, name, value, allowed, level)
  local err = M.choice_error(what, name, value, allowed)
  if err then M.fail(err, level + 1) end
end

return M
