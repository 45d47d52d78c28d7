--- The command line above the interpreter options: subcommands (`coral run ...`), --help,
-- and the REPL entry. src/main.c calls is_command, main, help and repl.
local host = require "coral.host"

local M = {}

local EXIT_USAGE = 2

--- The subcommands, in the order --help lists them. Each has a usage line, a summary and
-- run(args) returning an exit code. Later modules add theirs with M.add_command.
local commands = {}
local order = {}

--- Registers a subcommand.
---@param name string
---@param spec {usage: string, summary: string, run: fun(args: string[]): integer}
function M.add_command(name, spec)
  if not commands[name] then order[#order + 1] = name end
  commands[name] = spec
end

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

local function usage_error(message)
  io.stderr:write("coral: ", message, " (try 'coral --help')\n")
  return EXIT_USAGE
end

--- True when `name` is a subcommand rather than a script file.
---@param name string
---@return integer 1 if it is a subcommand, 0 if not
function M.is_command(name)
  return commands[name] and 1 or 0
end

--- Runs a subcommand; returns its exit code.
---@param name string
function M.main(name, ...)
  local args = { ... }
  for _, a in ipairs(args) do
    if a == "-h" or a == "--help" then
      local c = commands[name]
      io.stdout:write("usage: coral ", c.usage, "\n", c.summary, "\n", c.help and (c.help .. "\n") or "")
      return 0
    end
  end
  local ok, code = xpcall(commands[name].run, debug.traceback, args)
  if not ok then error(code, 0) end
  return code or 0
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
  if #order > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "commands:"
    for _, name in ipairs(order) do
      local c = commands[name]
      if #c.usage <= 30 then
        lines[#lines + 1] = string.format("  %-30s %s", c.usage, c.summary)
      else
        lines[#lines + 1] = "  " .. c.usage
        lines[#lines + 1] = string.format("  %-30s %s", "", c.summary)
      end
    end
    lines[#lines + 1] = "  (coral COMMAND --help for its options)"
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "environment:"
  lines[#lines + 1] = "  CORAL_LUA_PATH   a source tree whose lua/ and recipes/ replace the built-in copies"
  lines[#lines + 1] = ""
  lines[#lines + 1] = "exit status: 0 success, 2 usage error or error in a script, 130 interrupted"
  io.stdout:write(table.concat(lines, "\n"), "\n")
  return 0
end

--- Runs the REPL until end of input.
function M.repl()
  return require("coral.repl").run()
end

--- A script returned a value: a recipe, a plan or a function run as a recipe with the
-- script's arguments ("DESCRIPTION" [options]). Other values are ignored. Returns an exit code.
function M.script_result(value, script, ...)
  local recipes = require "coral.recipes"
  local plan_mod = require "coral.plan"
  if not (getmetatable(value) == recipes.Recipe or getmetatable(value) == plan_mod.Plan
          or type(value) == "function") then
    return 0
  end
  local commands_mod = require "coral.cli.commands"
  local opts, positional = commands_mod.parse({ ... }, commands_mod.RUN_OPTIONS)
  if not opts then return positional end
  local ok, plan = xpcall(recipes.to_plan, plan_mod.traceback, value, script, positional[1] or "(no description)", opts)
  if not ok then
    io.stderr:write("coral: ", tostring(plan):gsub("^coral: ", ""), "\n")
    return EXIT_USAGE
  end
  return commands_mod.run_plan(plan, opts, commands_mod.invocation(script, { ... }))
end

M.usage_error = usage_error

-- The subcommands register themselves (and require this module while it loads).
package.loaded["coral.cli"] = M
require "coral.cli.commands"
return M
