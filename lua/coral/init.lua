--- coral: run plans of agent tasks as a dependency graph.
-- This module is what recipes and the REPL see as `coral`:
--   coral.task(agent, text [, opts]) / coral.task{...}   declare a task
--   coral.plan(phases_or_tasks [, opts])                 a validated plan
--   coral.runner(opts)                                   a runner; runner:execute_plan(plan)
--   coral.modes                                          the execution modes
--   coral.recipe{summary=, aliases=, plan=function(description) ... end}   a reusable recipe
--   coral.orchestrator(opts):execute_workflow{project_type=, project_description=, mode=}
local host = require "coral.host"

local M = {}

--- The version of this coral build, e.g. "0.1.0".
M.version = host.version

local plan = require "coral.plan"
local run = require "coral.run"

M.task = plan.task
M.plan = plan.plan
M.runner = run.new
M.modes = run.modes
--- The environment variable that gives a task the output of its dependency `id`.
M.input_variable = require("coral.run.attempt").input_variable

--- Declares a recipe: { summary = "what it is for", plan = function(description, params) -> plan,
-- params = { ... }, aliases = { ... } }.
-- params = { name = { default =, help =, type = "string" | "number" | "integer" | "boolean" } }:
-- the recipe's plan gets them, checked and typed, as plan(description, params).
-- aliases = { "full_stack_app", ... }: other names `coral run` knows the recipe by.
function M.recipe(spec)
  local check = require "coral.check"
  local recipes = require "coral.recipes"
  check.options("coral.recipe", spec,
    { name = "string", summary = "string", plan = "function", aliases = "table", params = "table" }, 2)
  if type(spec.plan) ~= "function" then check.fail("coral.recipe: plan must be a function", 2) end
  local err = recipes.params_error(spec.params) or recipes.aliases_error(spec.aliases)
  if err then check.fail("coral.recipe: " .. err, 2) end
  return setmetatable(spec, recipes.Recipe)
end

--- The orchestrator of the tool coral replaces, under the name its users know:
-- coral.orchestrator(runner_opts):execute_workflow{project_type=, project_description=, mode=}.
function M.orchestrator(opts)
  local o = { opts = opts or {} }
  function o.execute_workflow(_, spec)
    local ropts = {}
    for k, v in pairs(o.opts) do ropts[k] = v end
    ropts.mode = spec.mode or ropts.mode
    local r = run.new(ropts)
    local p = r:create_parallel_plan(spec.project_type, spec.project_description)
    return r:execute_plan(p, { description = spec.project_description })
  end
  return o
end

return M
