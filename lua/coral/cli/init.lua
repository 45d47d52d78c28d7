--- The command line above the interpreter options: subcommands (`coral run ...`, declared in
-- coral.cli.commands), --help, script results and the REPL. src/main.c calls is_command,
-- main, help, repl, script_start and script_result.
local commands = require "coral.cli.commands"
local host = require "coral.host"

local M = {}

local OPTIONS = {
  { "-e CODE", "run CODE" },
  { "-l MOD", "require MOD and set the global MOD to it" },
  { "-i", "enter the REPL after running the script" },
  { "-v, --version", "print the version" },
  { "-h, --help", "print this help" },
  { "--dev", "read lua/ and recipes/ from the source tree next to the binary, not the built-in copies" },
  { "--", "stop handling options" },
  { "-", "run the script read from standard input" },
}

--- True when `name` is a subcommand rather than a script file.
---@param name string
---@return integer 1 if it is a subcommand, 0 if not
function M.is_command(name)
  return commands.BY_NAME[name] and 1 or 0
end

--- Runs a subcommand; returns its exit code.
---@param name string
function M.main(name, ...)
  return commands.dispatch(commands.BY_NAME[name], { ... })
end

--- Prints the help text: every option and every command.
function M.help()
  local lines = {
    "coral " .. host.version .. " - run plans of agent tasks as a dependency graph",
    "",
    "usage: coral [options] [script.lua [args...]]",
    "       coral COMMAND [args...]",
    "       coral                      (on a terminal: the REPL)",
    "",
    "options:",
  }
  for _, o in ipairs(OPTIONS) do
    lines[#lines + 1] = string.format("  %-16s %s", o[1], o[2])
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "commands:"
  for _, c in ipairs(commands.LIST) do commands.two_columns(lines, commands.usage(c), c.summary, 30) end
  lines[#lines + 1] = "  (coral COMMAND --help for its options)"
  lines[#lines + 1] = ""
  lines[#lines + 1] = "environment:"
  lines[#lines + 1] = "  CORAL_LUA_PATH   a source tree whose lua/ and recipes/ replace the built-in copies"
  lines[#lines + 1] = "  CORAL_DEBUG=1    print coral's own traceback with an error"
  lines[#lines + 1] = ""
  lines[#lines + 1] = "exit status: 0 success, 1 a task failed, 2 usage error or error in a script, 130 interrupted"
  io.stdout:write(table.concat(lines, "\n"), "\n")
  return 0
end

--- The script file `script` starts (src/main.c calls this just before it runs): the first
-- `noptions` values are coral's options before it, the rest its arguments.
function M.script_start(noptions, ...)
  local all = { ... }
  local options, args = {}, {}
  for i = 1, noptions do options[i] = all[i] end
  for i = noptions + 2, #all do args[#args + 1] = all[i] end
  require("coral.run.script").start(all[noptions + 1], args, options)
end

--- Runs the REPL until end of input.
function M.repl()
  -- `coral -i script.lua`: what is typed in the REPL is no part of the script's execution
  local script = package.loaded["coral.run.script"]
  if script then script.stop() end
  return require("coral.repl").run()
end

--- A script returned a value: a recipe, a plan, a list of tasks or a function run as a recipe with the
-- script's arguments ("DESCRIPTION" [options], as `coral run` takes them). Other values are
-- ignored. Returns an exit code.
function M.script_result(value, script, ...)
  local recipes = require "coral.recipes"
  local plan_mod = require "coral.plan"
  -- a bare list of tasks (or of phases) is a plan too
  local first = type(value) == "table" and value[1]
  local task_list = type(first) == "table"
    and (getmetatable(first) == plan_mod.Task or getmetatable(first[1]) == plan_mod.Task)
  if not (getmetatable(value) == recipes.Recipe or getmetatable(value) == plan_mod.Plan
          or type(value) == "function" or task_list) then
    return 0
  end
  local opts, positional = commands.parse({ ... }, commands.RUN_OPTIONS)
  if not opts then
    io.stderr:write("coral: ", positional, " (try 'coral run --help')\n")
    return commands.EXIT_USAGE
  end
  -- after the description, NAME=VALUE words are the recipe's parameters
  local params, perr = commands.params(opts, { table.unpack(positional, 2) })
  if not params then
    io.stderr:write("coral: ", perr, " (try 'coral run --help')\n")
    return commands.EXIT_USAGE
  end
  opts.params = params
  local ok, plan = xpcall(recipes.to_plan, require("coral.check").traceback, value, script,
                          positional[1] or "(no description)", opts)
  if not ok then return commands.report_error(plan, commands.EXIT_USAGE) end
  return commands.run_plan(plan, opts, commands.invocation(script, { ... }))
end

return M
