--- The recipe library: recipes/NAME.lua compiled into the binary, overridable by files in the
-- project (.coral/recipes/NAME.lua) or, in --dev mode, the source tree. A recipe file returns
-- coral.recipe{summary=, aliases=, plan=function(description, opts)}, a function(description)
-- -> plan, or a plan. A recipe's aliases (the project types of the tool coral replaces, such as
-- full_stack_app) name it too; a recipe's own name always beats an alias.
local check = require "coral.check"
local fsutil = require "coral.fsutil"
local host = require "coral.host"
local uv = require "luv"

local M = {}

M.Recipe = {}
M.Recipe.__index = M.Recipe

--- The project types of the tool coral replaces, for the default plan's warning.
local function embedded_names()
  local names = {}
  for _, path in ipairs(host.embedded_files("recipes/")) do
    local name = path:match("^recipes/([%w_%-]+)%.lua$") or path:match("^recipes/(examples/[%w_%-]+)%.lua$")
    if name then names[#names + 1] = name end
  end
  return names
end

local function dir_names(dir, into, prefix)
  local handle = uv.fs_scandir(dir)
  while handle do
    local name, kind = uv.fs_scandir_next(handle)
    if not name then break end
    local base = name:match("^([%w_%-]+)%.lua$")
    if base and kind ~= "directory" then into[(prefix or "") .. base] = dir .. "/" .. name end
  end
end

--- Recipes by name -> where they come from ("built-in" or a path), later sources overriding.
function M.sources(project_dir)
  local found = {}
  for _, name in ipairs(embedded_names()) do found[name] = "built-in" end
  if host.source_root then
    dir_names(host.source_root .. "/recipes", found)
    dir_names(host.source_root .. "/recipes/examples", found, "examples/")
  end
  dir_names((project_dir or ".") .. "/.coral/recipes", found)
  return found
end

function M.names(project_dir)
  local names = {}
  for name in pairs(M.sources(project_dir)) do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- Loads a recipe chunk from a path on disk or from the binary.
local function load_chunk(name, project_dir)
  local where = M.sources(project_dir)[name]
  if not where and (name:find("/") or name:match("%.lua$")) then
    local chunk, err = loadfile(name)
    if not chunk then return nil, err end
    return chunk, name
  end
  if not where then return nil end
  if where == "built-in" then
    local path = "recipes/" .. name .. ".lua"
    return assert(load(host.embedded(path), "@" .. path)), path
  end
  local chunk, err = loadfile(where)
  if not chunk then return nil, err end
  return chunk, where
end

-- Runs the top level of recipe `name` for `description`: true, what it returns (coral.recipe{},
-- a function, or a plan it built) and where the recipe is; or false and the first line of its
-- error. The plan of a coral.recipe{} or a function is not built.
local function top_level(name, project_dir, description)
  local chunk, where = load_chunk(name, project_dir)
  if not chunk then return false, where or ("no recipe " .. name) end
  local ok, value = pcall(chunk, description, {})
  if not ok then return false, tostring(value):match("^[^\n]*") end
  return true, value, where
end

--- What a recipe is for: the `summary` of the coral.recipe{} it returns, else its header
-- comment (the first line starting with -- at the top, without the recipe's own name). Returns
-- nil and the error for a recipe that does not load (a syntax error, an error at its top level).
function M.summary(name, project_dir)
  local where = M.sources(project_dir)[name]
  local text = where == "built-in" and host.embedded("recipes/" .. name .. ".lua") or (where and fsutil.read(where))
  if not text then return "" end
  local ok, value = top_level(name, project_dir, "(listing)")
  if not ok then return nil, value end
  if getmetatable(value) == M.Recipe and value.summary then return value.summary end
  local first = text:match("^%-%-%s*([^\n]*)") or ""
  -- Headers start with the recipe's own name ("-- api: a backend API ..."); the listing has it.
  local short = name:match("([^/]+)$")
  for _, prefix in ipairs { name, short } do
    if first:sub(1, #prefix + 1) == prefix .. ":" then return (first:sub(#prefix + 2):gsub("^%s+", "")) end
  end
  return first
end

-- {{{ aliases

--- What is wrong with a recipe's `aliases` declaration (a list of names), or nil.
function M.aliases_error(aliases)
  if aliases == nil then return nil end
  local seen = {}
  for k, alias in pairs(aliases) do
    if math.type(k) ~= "integer" then
      return "aliases must be a list of names, as { \"full_stack_app\", \"web_app\" }"
    end
    if type(alias) ~= "string" or not alias:match("^[%w_%-]+$") then
      return string.format("aliases: '%s' is not a recipe name (letters, digits, _ and -)", tostring(alias))
    end
    if seen[alias] then return string.format("aliases: '%s' is given twice", alias) end
    seen[alias] = true
  end
  return nil
end

-- A project's recipe files come after the library's, so that a clash blames the project's file.
local function in_project(where)
  return where:find("/.coral/recipes/", 1, true) ~= nil
end

--- The aliases of the recipes visible from `project_dir`, read from each recipe's
-- coral.recipe{ aliases = } (so every recipe is loaded: only for a name that is no recipe's,
-- and for the listing). Returns { by_alias = alias -> recipe name, of = recipe name -> its
-- aliases (sorted), conflict = a user error (two recipes declaring one alias) or nil,
-- broken = names of recipes that do not load (their aliases are unknown) }.
-- An alias that is also a recipe's name is left out: the recipe of that name wins.
function M.aliases(project_dir)
  local sources = M.sources(project_dir)
  local declared = {}   -- { name =, where =, aliases = }, library first, then the project's
  local out = { by_alias = {}, of = {}, broken = {} }
  for _, name in ipairs(M.names(project_dir)) do
    local ok, value, where = top_level(name, project_dir, "(aliases)")
    if not ok then
      out.broken[#out.broken + 1] = name
    elseif getmetatable(value) == M.Recipe and value.aliases then
      declared[#declared + 1] = { name = name, where = where, aliases = value.aliases }
    end
  end
  table.sort(declared, function(a, b)
    if in_project(a.where) ~= in_project(b.where) then return not in_project(a.where) end
    return a.name < b.name
  end)
  local claimed = {}   -- alias -> the entry of declared that claimed it first
  for _, d in ipairs(declared) do
    local list = {}
    for _, alias in ipairs(d.aliases) do
      local first = claimed[alias]
      if first and not out.conflict then
        out.conflict = setmetatable({ where = d.where, message = string.format(
          "alias '%s' of recipe %s is also an alias of recipe %s (%s); rename one of them",
          alias, d.name, first.name, first.where) }, check.UserError)
      end
      claimed[alias] = claimed[alias] or d
      if not sources[alias] and not first then
        out.by_alias[alias] = d.name
        list[#list + 1] = alias
      end
    end
    table.sort(list)
    out.of[d.name] = list
  end
  return out
end

--- The recipe name that `name` stands for: itself when it is a recipe's name (or a file path)
-- or no alias, else the recipe whose alias it is. Raises the user error of two recipes
-- declaring one alias.
function M.resolve(name, project_dir)
  if M.sources(project_dir)[name] or not name:match("^[%w_%-]+$") then return name end
  local aliases = M.aliases(project_dir)
  if aliases.conflict then error(aliases.conflict, 0) end
  return aliases.by_alias[name] or name, aliases
end

-- }}}

--- The default plan for an unknown project type: architect, full-stack engineer, QA.
local function default_plan(description)
  local coral = require "coral"
  local t = coral.task
  return coral.plan({
    { t("project-architect", "Design the architecture of: " .. description, { estimate = 120 }) },
    { t("full-stack-engineer", "Implement the project following the architecture", { estimate = 300 }) },
    { t("qa-testing", "Test the implementation and report defects", { estimate = 120 }) },
  }, { name = "default", description = description })
end

--- Builds the plan of recipe `name` (library name or file path) for `description`.
-- Raises a user error (coral.check) for a recipe that cannot be loaded or returns no plan;
-- errors inside the recipe carry its own file:line. An unknown name is a user error naming the
-- nearest known types, or with opts.default_plan the default plan and a warning. opts:
-- project_dir (its .coral/recipes/), default_plan.
function M.plan(name, description, opts)
  local project_dir = opts and opts.project_dir
  local aliases
  name, aliases = M.resolve(name, project_dir)
  local chunk, where = load_chunk(name, project_dir)
  if not chunk then
    if where then check.user_error(where) end
    if name:find("/") or name:match("%.lua$") then check.user_error("cannot open recipe " .. name) end
    local known = M.names(project_dir)
    if not (opts and opts.default_plan) then
      -- a typo of an alias is a typo too
      local candidates = { table.unpack(known) }
      for alias in pairs(aliases.by_alias) do candidates[#candidates + 1] = alias end
      table.sort(candidates)
      local unread = #aliases.broken > 0 and string.format("; recipes that do not load, whose aliases are " ..
        "unknown: %s ('coral recipes' says why)", table.concat(aliases.broken, ", ")) or ""
      check.user_error(string.format("unknown project type '%s'%s; known types: %s (--default-plan runs the " ..
        "default plan: architect, full-stack engineer, QA)%s", name, check.did_you_mean(name, candidates),
        table.concat(known, ", "), unread))
    end
    io.stderr:write(string.format("coral: warning: unknown project type '%s'; using the default plan " ..
      "(architect, full-stack engineer, QA). Known types: %s\n", name, table.concat(known, ", ")))
    return default_plan(description)
  end
  local ok, value = xpcall(chunk, check.traceback, description, opts)
  if ok then ok, value = xpcall(M.to_plan, check.traceback, value, name, description, opts) end
  if not ok then
    -- A plan returned by a tail call lost the recipe's line: blame the recipe's file.
    if check.is_user_error(value) and not value.where then value.where = where end
    error(value, 0)
  end
  return value
end

-- {{{ parameters

local PARAM_TYPES = { string = true, number = true, integer = true, boolean = true }
local A_TYPE = { string = "a string", number = "a number", integer = "a whole number",
                 boolean = "true or false (yes, no, 1, 0)" }
local PARAM_FIELDS = { default = "string|number|boolean", help = "string", type = "string" }

local function type_of(v)
  return math.type(v) == "integer" and "integer" or type(v)
end

--- What is wrong with a recipe's `params` declaration, or nil.
function M.params_error(params)
  if params == nil then return nil end
  for name, p in pairs(params) do
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") or name == "project_dir" then
      return string.format("params: '%s' is not a parameter name (letters, digits and _; not project_dir)",
                           tostring(name))
    end
    local err = check.option_error("params." .. name, p, PARAM_FIELDS)
    if err then return err end
    if type(p) ~= "table" then return "params." .. name .. " must be a table { default =, help =, type = }" end
    local t = p.type or (p.default ~= nil and type_of(p.default)) or "string"
    if not PARAM_TYPES[t] then
      return string.format("params.%s: type must be one of string, number, integer, boolean, got '%s'", name, t)
    end
    local d = p.default
    if d ~= nil and not (type_of(d) == t or (t == "number" and type(d) == "number")) then
      return string.format("params.%s: default must be %s, got %s", name, A_TYPE[t], type_of(d))
    end
  end
  return nil
end

-- `value` (text from the command line, or a value from a params file) as a `want`, or nil.
local function convert(value, want)
  if type(value) == "string" and want ~= "string" then
    if want == "boolean" then
      local b = ({ ["true"] = true, yes = true, ["1"] = true, ["false"] = false, no = false, ["0"] = false })[value]
      if b == nil then return nil end
      return b
    end
    value = tonumber(value)
    if value == nil then return nil end
  end
  if want == "integer" then return math.tointeger(value) end
  if want == "number" then return type(value) == "number" and value or nil end
  if want == "boolean" then return type(value) == "boolean" and value or nil end
  return type(value) == "string" and value or (type(value) == "number" and tostring(value)) or nil
end

--- The parameters a recipe gets: its declared ones, from `given` (name -> value) or their
-- defaults, checked and typed; plus project_dir. A recipe without declarations (a function)
-- gets `given` as it is. Raises a user error for an unknown, missing or ill-typed one.
function M.params(declared, given, recipe, project_dir)
  local out = {}
  if declared then
    local names = {}
    for n in pairs(declared) do names[#names + 1] = n end
    table.sort(names)
    for n, v in pairs(given) do
      if not declared[n] then
        check.user_error(string.format("no parameter '%s'%s (its parameters: %s)", n,
          check.did_you_mean(n, names), #names > 0 and table.concat(names, ", ") or "none"), recipe)
      end
      local p = declared[n]
      local want = p.type or (p.default ~= nil and type_of(p.default)) or "string"
      out[n] = convert(v, want)
      if out[n] == nil then
        check.user_error(string.format("parameter '%s' must be %s, got '%s'", n, A_TYPE[want], tostring(v)), recipe)
      end
    end
    for n, p in pairs(declared) do
      if out[n] == nil then out[n] = p.default end
    end
  else
    for n, v in pairs(given) do out[n] = v end
  end
  out.project_dir = project_dir
  return out
end

--- The --help lines of a recipe's parameters (none: an empty list), `name` an alias or not.
function M.params_help(name, project_dir)
  local resolved, real = pcall(M.resolve, name, project_dir)
  local ok, value = top_level(resolved and real or name, project_dir, "(help)")
  if not (ok and getmetatable(value) == M.Recipe and value.params) then return {} end
  local lines, names = {}, {}
  for n in pairs(value.params) do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do
    local p = value.params[n]
    lines[#lines + 1] = { n .. "=" .. (p.type or (p.default ~= nil and type_of(p.default)) or "string"):upper(),
      (p.help or "") .. (p.default ~= nil and (" (" .. tostring(p.default) .. ")") or "") }
  end
  return lines
end

-- }}}

--- Turns what a recipe chunk returned into a plan. opts.params: the parameters given (name ->
-- value), checked against the recipe's declaration.
function M.to_plan(value, name, description, opts)
  local plan_mod = require "coral.plan"
  local given = opts and opts.params or {}
  local project_dir = opts and opts.project_dir
  local p = value
  if getmetatable(value) == M.Recipe then
    p = value.plan(description, M.params(value.params or {}, given, name, project_dir))
  elseif type(value) == "function" then
    p = value(description, M.params(nil, given, name, project_dir))
  elseif next(given) then
    check.user_error("takes no parameters (it returns a plan, not coral.recipe{ params = ... })", name)
  end
  if getmetatable(p) ~= plan_mod.Plan then
    if type(p) == "table" then p = plan_mod.plan(p)
    else check.user_error(string.format("recipe %s must return coral.recipe{...}, a function or a plan (got %s)", name, type(p))) end
  end
  p.name = p.name or (name:match("([%w_%-]+)%.lua$") or name)
  p.description = p.description or description
  return p
end

return M
