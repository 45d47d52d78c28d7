--- The subcommands: run, recipes, note, log, status. Each returns an exit code:
-- 0 all tasks succeeded, 1 a task failed or was skipped, 2 usage or recipe error,
-- 130 interrupted.
local cli = require "coral.cli"

local M = {}

local EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
M.EXIT_OK, M.EXIT_FAILED, M.EXIT_USAGE, M.EXIT_INTERRUPTED = EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED

-- Options of `coral run` and of recipe files: name -> { key, kind }.
M.RUN_OPTIONS = {
  ["--max-workers"] = { "max_workers", "integer" },
  ["--mode"] = { "mode", "string" },
  ["--timeout"] = { "timeout", "number" },
  ["--idle-timeout"] = { "idle_timeout", "number" },
  ["--retries"] = { "retries", "integer" },
  ["--on-failure"] = { "on_failure", "string" },
  ["--agent"] = { "driver", "string" },
  ["--model"] = { "model", "string" },
  ["--permission-mode"] = { "permission_mode", "string" },
  ["--dir"] = { "project_dir", "string" },
  ["--sim-scale"] = { "sim_scale", "number" },
  ["--format"] = { "format", "string" },
  ["--show-plan"] = { "show_plan", "flag" },
  ["--json"] = { "json", "flag" },
  ["--quiet"] = { "quiet", "flag" },
  ["--no-retry"] = { "no_retry", "flag" },
  ["--resume"] = { "resume", "flag" },
  ["--retry-failed"] = { "retry_failed", "flag" },
  ["--no-report"] = { "no_report", "flag" },
  ["--executor"] = { "executor", "string" },
  ["--slurm-partition"] = { "slurm_partition", "string" },
  ["--slurm-cpus"] = { "slurm_cpus", "integer" },
  ["--slurm-mem"] = { "slurm_mem", "string" },
  ["--slurm-time"] = { "slurm_time", "string" },
  ["--slurm-account"] = { "slurm_account", "string" },
  ["--slurm-qos"] = { "slurm_qos", "string" },
  ["--slurm-args"] = { "slurm_args", "string" },
  ["--slurm-coral-bin"] = { "slurm_coral_bin", "string" },
}

local function usage_error(message)
  io.stderr:write("coral: ", message, " (try 'coral --help')\n")
  return nil, EXIT_USAGE
end

--- Parses `args` against `spec`; returns options, positionals or nil, exit code.
local function parse(args, spec)
  local opts, positional = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do positional[#positional + 1] = args[j] end
      break
    elseif a:sub(1, 2) == "--" then
      local name, inline = a:match("^(%-%-[^=]+)=(.*)$")
      name = name or a
      local o = spec[name]
      if not o then return usage_error("unknown option '" .. name .. "'") end
      local key, kind = o[1], o[2]
      if kind == "flag" then
        if inline then return usage_error("option '" .. name .. "' takes no value") end
        opts[key] = true
      else
        local v = inline
        if v == nil then
          i = i + 1
          v = args[i]
          if v == nil then return usage_error("option '" .. name .. "' needs a value") end
        end
        if kind == "integer" then
          v = math.tointeger(tonumber(v))
          if not v then return usage_error("option '" .. name .. "' needs a whole number, got '" .. args[i] .. "'") end
        elseif kind == "number" then
          local n = tonumber(v)
          if not n then return usage_error("option '" .. name .. "' needs a number, got '" .. v .. "'") end
          v = n
        end
        opts[key] = v
      end
    elseif a:sub(1, 1) == "-" and #a > 1 then
      return usage_error("unknown option '" .. a .. "'")
    else
      positional[#positional + 1] = a
    end
    i = i + 1
  end
  return opts, positional
end
M.parse = parse

local function runner_options(opts)
  local r = {}
  for _, k in ipairs { "max_workers", "mode", "timeout", "idle_timeout", "retries", "on_failure",
                       "driver", "model", "project_dir", "sim_scale", "permission_mode" } do
    r[k] = opts[k]
  end
  if opts.no_retry then r.retry_failed = false end
  r.executor = opts.executor
  if opts.executor == "slurm" then r.executor = require("coral.exec.slurm").from_cli(opts) end
  if opts.json then r.output = "json" elseif opts.quiet then r.output = "quiet" end
  return r
end

local function show_plan(plan, format)
  format = format or "text"
  local f = ({ text = plan.to_text, dot = plan.to_dot, mermaid = plan.to_mermaid, json = plan.to_json })[format]
  if not f then
    io.stderr:write("coral: unknown plan format '", format, "' (text, dot, mermaid, json)\n")
    return EXIT_USAGE
  end
  io.stdout:write(f(plan))
  return EXIT_OK
end

-- Turns an error raised while loading a recipe or building its plan into a message and exit 2.
local function recipe_error(err)
  err = tostring(err)
  io.stderr:write("coral: ", err:gsub("^coral: ", ""), "\n")
  return EXIT_USAGE
end

--- Runs a plan with the command-line options; prints the summary; returns the exit code.
function M.run_plan(plan, opts, invocation)
  if opts.show_plan then return show_plan(plan, opts.format) end
  local coral = require "coral"
  local ok, runner = pcall(coral.runner, runner_options(opts))
  if not ok then return recipe_error(tostring(runner):gsub("^[^:]*:%d+: ", "")) end
  -- The live report is for plans a person watches; a big plan's report costs more to redraw
  -- than its tasks (5000 tasks: 0.45 s and 40 MB a time): `coral report` writes it after.
  local report = require "coral.view.report"
  local live_report = not opts.no_report and #plan.tasks <= report.LIVE_MAX_TASKS and report.attach(runner, plan)
  local resume = opts.resume
  if resume == true then
    -- --resume: the newest run of the project
    local ids = require("coral.view.status").run_ids(opts.project_dir or ".")
    resume = ids[#ids]
    if not resume then return recipe_error("--resume: no run to resume in " .. (opts.project_dir or ".")) end
  end
  local summary
  ok, summary = xpcall(runner.execute_plan, require("coral.plan").traceback, runner, plan,
                       { description = plan.description, invocation = invocation,
                         resume = resume, retry_failed = opts.retry_failed })
  if live_report then live_report:close() end
  if not ok then
    -- A bad plan or a busy project is the user's to fix (2); anything else stopped the run
    -- itself, e.g. a full disk under its records (1). What was recorded stays valid.
    if getmetatable(summary) == require("coral.plan").PlanError then return recipe_error(summary) end
    -- The first line says what failed; the traceback is for coral's developers (CORAL_DEBUG=1).
    local message = tostring(summary):gsub("^coral: ", "")
    if os.getenv("CORAL_DEBUG") ~= "1" then message = message:match("^[^\n]*") end
    io.stderr:write("coral: the run stopped: ", message, "\n")
    return EXIT_FAILED
  end
  if opts.json then
    io.stdout:write(require("cjson").encode { event = "summary", summary = summary }, "\n")
  else
    io.stdout:write(require("coral.view.progress").summary_text(summary))
  end
  if summary.interrupted then return EXIT_INTERRUPTED end
  return (summary.failed + summary.skipped == 0) and EXIT_OK or EXIT_FAILED
end

--- Loads a recipe (library name or file) and runs it with the arguments that follow it.
function M.run_recipe(name, args)
  local opts, positional = parse(args, M.RUN_OPTIONS)
  if not opts then return positional end
  if #positional > 1 then return select(2, usage_error("unexpected argument '" .. positional[2] .. "'")) end
  local description = positional[1] or "(no description)"
  local ok, plan = pcall(require("coral.recipes").plan, name, description, 1,
                         { project_dir = opts.project_dir })
  if not ok then return recipe_error(plan) end
  return M.run_plan(plan, opts, M.invocation(name, args))
end

--- What `coral resume` needs to rebuild a run: the recipe (a path made absolute) and the
-- arguments, without --resume / --retry-failed.
function M.invocation(name, args)
  local fsutil = require "coral.fsutil"
  if name:find("/") or name:match("%.lua$") then name = fsutil.absolute(name) end
  local kept = {}
  for _, a in ipairs(args) do
    if a ~= "--resume" and a ~= "--retry-failed" then kept[#kept + 1] = a end
  end
  return { recipe = name, args = kept, cwd = require("luv").cwd() }
end

cli.add_command("run", {
  usage = "run TYPE \"DESCRIPTION\" [options]",
  summary = "run a plan from the recipe library (or a recipe file) for a project",
  help = [[
options:
  --max-workers N      tasks at once (4)
  --mode M             dependency (default), phased, sequential, parallel, pipeline
  --timeout S          per-task timeout in seconds (300; 0 = none)
  --idle-timeout S     kill a task that prints nothing for S seconds
  --retries N          extra attempts for a failed task (2), with backoff
  --no-retry           no retries
  --on-failure P       skip (default: skip dependents), stop, continue
  --agent DRIVER       auto (default), claude, codex, gemini, aider, sim, prompt, cmd
  --model NAME         model passed to the agent CLI
  --permission-mode M  claude: its --permission-mode (acceptEdits); codex: bypassPermissions
                       drops its sandbox (else workspace-write)
  --dir PROJECT        project directory (.)
  --sim-scale X        the sim driver sleeps estimate x X seconds (0.02)
  --show-plan          print the plan and run nothing (--format text|dot|mermaid|json)
  --resume             continue the project's last run: finished tasks are not run again
  --retry-failed       with --resume: run the failed tasks again too
  --no-report          do not keep <run dir>/report.html up to date during the run
                       (plans of more than 1000 tasks have none: run coral report after)
  --executor E         local (default) or slurm: each task a Slurm batch job (docs/slurm.md)
  --slurm-partition P, --slurm-cpus N, --slurm-mem M, --slurm-time T, --slurm-account A,
  --slurm-qos Q, --slurm-args "ARGS", --slurm-coral-bin PATH
                       defaults of every task's sbatch options (a task's slurm table wins)
  --json               JSON lines, one per event, then the summary
  --quiet              only the summary
exit status: 0 all tasks succeeded, 1 a task failed or was skipped, 2 usage or recipe error,
130 interrupted]],
  run = function(args)
    local name = args[1]
    if not name or name:sub(1, 1) == "-" then return select(2, usage_error("run needs a project type (see 'coral recipes')")) end
    return M.run_recipe(name, { table.unpack(args, 2) })
  end,
})

-- Finds a run and how it was started, for resume and why.
local function load_run(dir, run_id)
  local status = require "coral.view.status"
  local run, err = status.load(dir, run_id)
  if not run then return nil, err end
  local records = require "coral.records"
  local rec = setmetatable({ dir = run.dir }, records.Records)
  run.invocation = rec:read_invocation()
  return run
end

cli.add_command("resume", {
  usage = "resume [RUN] [--dir PROJECT] [--retry-failed]",
  summary = "continue the last or a given run: finished tasks are not run again",
  run = function(args)
    local opts, positional = parse(args, { ["--dir"] = { "dir", "string" },
      ["--retry-failed"] = { "retry_failed", "flag" }, ["--quiet"] = { "quiet", "flag" },
      ["--json"] = { "json", "flag" } })
    if not opts then return positional end
    local dir = opts.dir or "."
    local run, err = load_run(dir, positional[1])
    if not run then io.stderr:write("coral: ", err, "\n"); return EXIT_USAGE end
    local inv = run.invocation
    if not inv then
      io.stderr:write("coral: run ", run.id, " was started from Lua, not from the command line; ",
        "resume it with runner:execute_plan(plan, { resume = \"", run.id, "\" })\n")
      return EXIT_USAGE
    end
    local rargs = { table.unpack(inv.args) }
    rargs[#rargs + 1] = "--dir"
    rargs[#rargs + 1] = require("coral.fsutil").absolute(dir)
    if opts.retry_failed then rargs[#rargs + 1] = "--retry-failed" end
    if opts.quiet then rargs[#rargs + 1] = "--quiet" end
    if opts.json then rargs[#rargs + 1] = "--json" end
    local ropts, positional2 = parse(rargs, M.RUN_OPTIONS)
    if not ropts then return positional2 end
    ropts.resume = run.id
    local ok, plan = pcall(require("coral.recipes").plan, inv.recipe, positional2[1] or "(no description)", 1,
                           { project_dir = ropts.project_dir })
    if not ok then return recipe_error(plan) end
    return M.run_plan(plan, ropts, inv)
  end,
})

cli.add_command("why", {
  usage = "why TASK [RUN] [--dir PROJECT]",
  summary = "why a task will or will not run on resume",
  run = function(args)
    local opts, positional = parse(args, { ["--dir"] = { "dir", "string" } })
    if not opts then return positional end
    local task = positional[1]
    if not task then return select(2, usage_error("why needs a task id")) end
    local run, err = load_run(opts.dir or ".", positional[2])
    if not run then io.stderr:write("coral: ", err, "\n"); return EXIT_USAGE end
    local deps
    if run.invocation then
      local rargs = run.invocation.args
      local ok, plan = pcall(require("coral.recipes").plan, run.invocation.recipe, rargs[1] or "", 1, {})
      if ok and plan.by_id[task] then deps = plan.by_id[task].depends_on
      elseif ok then io.stderr:write("coral: no task '", task, "' in run ", run.id, "\n"); return EXIT_USAGE end
    end
    io.stdout:write(require("coral.view.status").why(run, task, deps), "\n")
    return EXIT_OK
  end,
})

cli.add_command("recipes", {
  usage = "recipes",
  summary = "list the recipe library",
  run = function()
    local recipes = require "coral.recipes"
    for _, name in ipairs(recipes.names(".")) do
      io.stdout:write(string.format("%-16s %s\n", name, recipes.summary(name, ".")))
    end
    return EXIT_OK
  end,
})

local function coordination_path(env_name, file, args)
  local opts, positional = parse(args, { ["--dir"] = { "dir", "string" } })
  if not opts then return nil, positional end
  if #positional == 0 then return select(2, usage_error("needs the text to write")) end
  local path = os.getenv(env_name)
  if opts.dir or not path or path == "" then path = (opts.dir or ".") .. "/" .. file end
  return path, table.concat(positional, " ")
end

cli.add_command("note", {
  usage = "note TEXT [--dir PROJECT]",
  summary = "append a note to the project's scratchpad.md, under its lock",
  run = function(args)
    local path, text = coordination_path("CORAL_SCRATCHPAD", "scratchpad.md", args)
    if not path then return text end
    local ok, err = require("coral.records").note(path, text, os.getenv("CORAL_AGENT"))
    if not ok then io.stderr:write("coral: ", err, "\n"); return EXIT_FAILED end
    return EXIT_OK
  end,
})

cli.add_command("log", {
  usage = "log TEXT [--dir PROJECT]",
  summary = "append a progress line to the project's activity_tracker.md, under its lock",
  run = function(args)
    local path, text = coordination_path("CORAL_ACTIVITY", "activity_tracker.md", args)
    if not path then return text end
    local ok, err = require("coral.records").log(path, text, os.getenv("CORAL_AGENT"))
    if not ok then io.stderr:write("coral: ", err, "\n"); return EXIT_FAILED end
    return EXIT_OK
  end,
})

cli.add_command("status", {
  usage = "status [RUN] [--dir PROJECT] [--gantt]",
  summary = "the state of the last or a given run",
  run = function(args)
    local opts, positional = parse(args, { ["--dir"] = { "dir", "string" }, ["--json"] = { "json", "flag" },
                                           ["--gantt"] = { "gantt", "flag" } })
    if not opts then return positional end
    local status = require "coral.view.status"
    local run, err = status.load(opts.dir or ".", positional[1])
    if not run then io.stderr:write("coral: ", err, "\n"); return EXIT_USAGE end
    if opts.gantt then io.stdout:write(require("coral.view.timeline").gantt(run.dir)); return EXIT_OK end
    io.stdout:write(opts.json and require("cjson").encode(run) .. "\n" or status.text(run))
    return EXIT_OK
  end,
})

require("coral.agents").add_commands(cli, M)
require("coral.view.report").add_commands(cli, M)

return M
