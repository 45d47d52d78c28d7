--- The recipe library: recipes/NAME.lua compiled into the binary, overridable by files in the
-- project (.coral/recipes/NAME.lua) or, in --dev mode, the source tree. A recipe file returns
-- coral.recipe{summary=, plan=function(description, opts)}, a function(description) -> plan,
-- or a plan.
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

--- What a recipe is for: the `summary` of the coral.recipe{} it returns, else its header
-- comment (the first line starting with -- at the top, without the recipe's own name). Returns
-- nil and the error for a recipe that does not load (a syntax error, an error at its top level).
function M.summary(name, project_dir)
  local where = M.sources(project_dir)[name]
  local text = where == "built-in" and host.embedded("recipes/" .. name .. ".lua") or (where and fsutil.read(where))
  if not text then return "" end
  local chunk, err = load_chunk(name, project_dir)
  if not chunk then return nil, err end
  -- Loading a recipe runs its top level only (coral.recipe{} or a function); its plan is not built.
  local ok, value = pcall(chunk, "(listing)", {})
  if not ok then return nil, tostring(value):match("^[^\n]*") end
  if getmetatable(value) == M.Recipe and value.summary then return value.summary end
  local first = text:match("^%-%-%s*([^\n]*)") or ""
  -- Headers start with the recipe's own name ("-- api: a backend API ..."); the listing has it.
  local short = name:match("([^/]+)$")
  for _, prefix in ipairs { name, short } do
    if first:sub(1, #prefix + 1) == prefix .. ":" then return (first:sub(#prefix + 2):gsub("^%s+", "")) end
  end
  return first
end

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
  local chunk, where = load_chunk(name, opts and opts.project_dir)
  if not chunk then
    if where then check.user_error(where) end
    if name:find("/") or name:match("%.lua$") then check.user_error("cannot open recipe " .. name) end
    local known = M.names(opts and opts.project_dir)
    if not (opts and opts.default_plan) then
      check.user_error(string.format("unknown project type '%s'%s; known types: %s (--default-plan runs the " ..
        "default plan: architect, full-stack engineer, QA)", name, check.did_you_mean(name, known),
        table.concat(known, ", ")))
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

--- Turns what a recipe chunk returned into a plan.
function M.to_plan(value, name, description, opts)
  local plan_mod = require "coral.plan"
  local p = value
  if getmetatable(value) == M.Recipe then
    p = value.plan(description, opts)
  elseif type(value) == "function" then
    p = value(description, opts)
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
