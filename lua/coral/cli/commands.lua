--- The subcommands, each declared once: its arguments, its options (parsing, --help and, for
-- `coral run`, the runner options all come from the declaration; a spec checks the docs list
-- them) and what it does. run(opts, args) returns an exit code:
-- 0 all tasks succeeded, 1 a task failed or was skipped (or an operation failed), 2 usage or
-- recipe error, 130 interrupted.
local cjson = require "cjson"
local check = require "coral.check"
local fsutil = require "coral.fsutil"
local host = require "coral.host"
local records = require "coral.records"
local run_options = require "coral.run.options"
local uv = require "luv"

local M = {}

-- The runner and the views are required inside the commands that use them: loading all of
-- coral's modules costs 12 ms per start (measured), and `coral note` / `coral log`, which
-- agents call often, need none of them.

local EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
M.EXIT_OK, M.EXIT_FAILED, M.EXIT_USAGE, M.EXIT_INTERRUPTED = EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED

-- An option: { flag = "--dir", key = "dir", kind = "string"|"integer"|"number"|"flag",
-- value = "PROJECT" (its placeholder in --help), help = "...", short = "-o" }.
local RETRY_FAILED = { flag = "--retry-failed", key = "retry_failed", kind = "flag",
                       help = "with --resume: run the failed tasks again too" }
local DIR = { flag = "--dir", key = "dir", kind = "string", value = "PROJECT", help = "project directory (.)" }
local JSON = { flag = "--json", key = "json", kind = "flag", help = "JSON instead of text" }

-- {{{ `coral run`: its options are the runner's (run/options.lua) and these

local function kind_of(type_)
  if type_ == "integer" or type_ == "number" then return type_ end
  if type_ == "boolean|list" then return "flag_or_list" end
  return "string"
end

local function default_text(o)
  local d = o.default
  if d == nil or type(d) == "table" then return "" end
  if o.key == "output_cap" then return " (64 MiB)" end
  return " (" .. tostring(d) .. ")"
end

-- The runner options that have a command-line flag, then the run command's own.
local RUN_OPTIONS = {}
for _, o in ipairs(run_options.LIST) do
  if o.flag then
    local help = o.help
    if o.key == "mode" then help = help:format(table.concat(require("coral.run.modes").names(), ", ")) end
    RUN_OPTIONS[#RUN_OPTIONS + 1] = { flag = o.flag, key = o.key, kind = kind_of(o.type), value = o.value,
                                      help = help .. default_text(o), runner = true }
  end
end
for _, o in ipairs {
  { flag = "--no-retry", key = "no_retry", kind = "flag", help = "no retries (rate-limit retries stay)",
    apply = function(r) r.retry_failed = false end },
  { flag = "--json", key = "json", kind = "flag", help = "JSON lines, one per event, then the summary",
    apply = function(r) r.output = "json" end },
  { flag = "--quiet", key = "quiet", kind = "flag", help = "only the summary",
    apply = function(r) if r.output ~= "json" then r.output = "quiet" end end },
  { flag = "--budget-usd", key = "budget_usd", kind = "number", value = "N",
    help = "the run's spend ceiling in dollars: a task whose expected spend would pass it does not start",
    apply = function(r, v) r.budget = r.budget or {}; r.budget.usd = v end },
  { flag = "--budget-tokens", key = "budget_tokens", kind = "number", value = "N",
    help = "the run's ceiling in tokens (input + output), planned with as --budget-usd",
    apply = function(r, v) r.budget = r.budget or {}; r.budget.tokens = v end },
  { flag = "--limit", key = "limit", kind = "string", value = "NAME=N", many = true,
    help = "at most N units of NAME at once: a driver (claude), model:NAME, or a resource (gpu, cpus, mem_gb)",
    apply = function(r, v)
      local limits, err = require("coral.run.limits").parse(v)
      if not limits then r.limits_error = err; return end
      r.limits = r.limits or {}
      for k, n in pairs(limits) do r.limits[k] = n end
    end },
  { flag = "--param", key = "param", kind = "string", value = "NAME=VALUE", many = true,
    help = "a parameter of the recipe (repeatable; coral run TYPE --help lists them)" },
  { flag = "--params", key = "params_file", kind = "string", value = "FILE",
    help = "the recipe's parameters from a JSON or YAML file (--param wins)" },
  { flag = "--approve-all", key = "approve_all", kind = "flag",
    help = "pass every approval gate (a task's approve) without asking: for unattended runs",
    apply = function(r) r.approve_all = true end },
  { flag = "--show-plan", key = "show_plan", kind = "flag", help = "print the plan and run nothing" },
  { flag = "--default-plan", key = "default_plan", kind = "flag",
    help = "for a project type the library does not have: the default plan (architect, full-stack engineer, QA)" },
  { flag = "--format", key = "format", kind = "string", value = "F",
    help = "the --show-plan format: text (default), dot, mermaid, json" },
  { flag = "--resume", key = "resume", kind = "flag",
    help = "continue the project's last run: finished tasks are not run again" },
  RETRY_FAILED,
  { flag = "--apply", key = "apply", kind = "flag",
    help = "commit the worktree tasks' result to the current branch, if no tracked file has uncommitted changes" },
  { flag = "--no-report", key = "no_report", kind = "flag",
    help = "do not keep <run dir>/report.html up to date during the run (plans of more than 1000 tasks have none)" },
  { flag = "--slurm-partition", key = "slurm_partition", kind = "string", value = "P", help = "sbatch --partition of every task" },
  { flag = "--slurm-cpus", key = "slurm_cpus", kind = "integer", value = "N", help = "sbatch --cpus-per-task" },
  { flag = "--slurm-mem", key = "slurm_mem", kind = "string", value = "M", help = "sbatch --mem" },
  { flag = "--slurm-time", key = "slurm_time", kind = "string", value = "T", help = "sbatch --time" },
  { flag = "--slurm-account", key = "slurm_account", kind = "string", value = "A", help = "sbatch --account" },
  { flag = "--slurm-qos", key = "slurm_qos", kind = "string", value = "Q", help = "sbatch --qos" },
  { flag = "--slurm-args", key = "slurm_args", kind = "string", value = "ARGS", help = "more sbatch arguments" },
  { flag = "--slurm-coral-bin", key = "slurm_coral_bin", kind = "string", value = "PATH",
    help = "the coral binary on the nodes (a task's slurm table wins over these defaults)" },
} do RUN_OPTIONS[#RUN_OPTIONS + 1] = o end
M.RUN_OPTIONS = RUN_OPTIONS

--- The runner options of parsed `coral run` options; nil and a message for a bad value.
function M.runner_options(opts)
  local r = {}
  for _, o in ipairs(RUN_OPTIONS) do
    local v = opts[o.key]
    if v ~= nil then
      if o.runner then r[o.key] = v elseif o.apply then o.apply(r, v) end
    end
  end
  if r.limits_error then return nil, r.limits_error end
  local err = run_options.check(r, true)
  if err then return nil, err end
  if opts.executor == "slurm" then r.executor = require("coral.exec.slurm").from_cli(opts) end
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

-- The one place the command line reports an error: a user's mistake as its message (exit 2),
-- anything else as its first line (the traceback with CORAL_DEBUG=1) and `code`.
local function report_error(err, code, prefix)
  if check.is_user_error(err) then
    io.stderr:write("coral: ", tostring(err), "\n")
    return EXIT_USAGE
  end
  local message = tostring(err)
  -- Ctrl-C (or TERM, HUP) that came before a run watched for it: a stop asked for, not a
  -- failure (as src/main.c reports a script's)
  local signal = host.interrupted()
  local interrupted = signal and message:match("^[^\n]*interrupted by " .. signal)
  if os.getenv("CORAL_DEBUG") ~= "1" then
    if interrupted then
      io.stderr:write("coral: interrupted by ", signal, "\n")
      return EXIT_INTERRUPTED
    end
    message = message:match("^[^\n]*")
  end
  io.stderr:write("coral: ", prefix or "", message, "\n")
  return interrupted and EXIT_INTERRUPTED or code
end
M.report_error = report_error

--- Runs a plan with the command-line options; prints the summary; returns the exit code.
function M.run_plan(plan, opts, invocation)
  if opts.show_plan then return show_plan(plan, opts.format) end
  local ropts, oerr = M.runner_options(opts)
  if not ropts then io.stderr:write("coral: ", oerr, "\n"); return EXIT_USAGE end
  local runner = require("coral.run").new(ropts)
  -- The live report is for plans a person watches; a big plan's report costs more to redraw
  -- than its tasks (5000 tasks: 0.45 s and 40 MB a time): `coral report` writes it after.
  local report = require "coral.view.report"
  local live_report = not opts.no_report and #plan.tasks <= report.LIVE_MAX_TASKS and report.attach(runner)
  local resume = opts.resume
  if resume == true then
    -- --resume: the newest run of the project
    local ids = records.run_ids(opts.project_dir or ".")
    resume = ids[#ids]
    if not resume then
      io.stderr:write("coral: --resume: no run to resume in ", opts.project_dir or ".", "\n")
      return EXIT_USAGE
    end
  end
  local ok, summary = xpcall(runner.execute_plan, check.traceback, runner, plan,
                             { description = plan.description, invocation = invocation,
                               resume = resume, retry_failed = opts.retry_failed,
                               -- what is printed: the JSON summary, or the tasks that did not succeed
                               results = opts.json and "all" or "unsuccessful" })
  if live_report then live_report:close() end
  -- A bad plan or a busy project is the user's to fix (2); anything else stopped the run
  -- itself, e.g. a full disk under its records (1). What was recorded stays valid.
  if not ok then return report_error(summary, EXIT_FAILED, "the run stopped: ") end
  if opts.json then
    io.stdout:write(cjson.encode { event = "summary", summary = summary }, "\n")
  else
    io.stdout:write(require("coral.view.progress").summary_text(summary))
  end
  if summary.interrupted then return EXIT_INTERRUPTED end
  if opts.apply and summary.status == "succeeded" and summary.workspace and summary.workspace.result_branch then
    local ws = summary.workspace
    local err = require("coral.workspace").apply(opts.project_dir or ".", ws.base, ws.result_branch,
                                                  summary.run_dir .. "/result.patch")
    if err then
      io.stderr:write("coral: --apply: ", err, "\n")
      return EXIT_FAILED
    end
    io.stdout:write("  Applied                ", summary.workspace.result_branch,
                    ": its changes committed to the current branch\n")
  end
  return summary.status == "succeeded" and EXIT_OK or EXIT_FAILED
end

--- What `coral resume` needs to rebuild a run: the recipe (a path made absolute) and the
-- arguments, without --resume / --retry-failed.
function M.invocation(name, args)
  if name:find("/") or name:match("%.lua$") then name = fsutil.absolute(name) end
  local kept = {}
  for _, a in ipairs(args) do
    if a ~= "--resume" and a ~= "--retry-failed" then kept[#kept + 1] = a end
  end
  return { recipe = name, args = kept, cwd = uv.cwd() }
end

--- The recipe parameters of parsed options: --params FILE, then each --param NAME=VALUE, then
-- `extra` (NAME=VALUE words after a recipe file's description). Returns name -> value (values
-- from the command line are text; the recipe's declaration types them), or nil and an error.
function M.params(opts, extra)
  local params = {}
  if opts.params_file then
    local text = fsutil.read(opts.params_file)
    if not text then return nil, "--params: cannot read " .. opts.params_file end
    local value, err
    if opts.params_file:match("%.ya?ml$") then
      value, err = require("coral.records.yaml").decode(text)
    else
      value, err = require("cjson.safe").decode(text)
    end
    if type(value) ~= "table" then
      return nil, string.format("--params: %s is not a table of parameters%s", opts.params_file,
                                err and (": " .. tostring(err)) or "")
    end
    for k, v in pairs(value) do params[k] = v end
  end
  for _, list in ipairs { opts.param or {}, extra or {} } do
    for _, kv in ipairs(list) do
      local k, v = kv:match("^([%a_][%w_]*)=(.*)$")
      if not k then return nil, "a parameter is NAME=VALUE, got '" .. kv .. "'" end
      params[k] = v
    end
  end
  return params
end

--- Loads a recipe (library name or file) and runs it with the parsed options.
local function run_recipe(name, description, opts, args)
  local params, perr = M.params(opts)
  if not params then io.stderr:write("coral: ", perr, "\n"); return EXIT_USAGE end
  local ok, plan = pcall(require("coral.recipes").plan, name, description or "(no description)",
                         { project_dir = opts.project_dir, default_plan = opts.default_plan, params = params })
  if not ok then return report_error(plan, EXIT_USAGE) end
  return M.run_plan(plan, opts, M.invocation(name, args))
end
M.run_recipe = run_recipe

--- The plan of a run started from the command line, built again from its recorded invocation
-- (`inv`) for project `dir`, with more command-line `flags`. Returns the plan and the parsed
-- options, or nil and the exit code (the error printed).
function M.rebuild(inv, dir, flags)
  local rargs = { table.unpack(inv.args) }
  rargs[#rargs + 1] = "--dir"
  rargs[#rargs + 1] = fsutil.absolute(dir)
  for _, f in ipairs(flags or {}) do rargs[#rargs + 1] = f end
  local ropts, positional = M.parse(rargs, RUN_OPTIONS)
  if not ropts then
    io.stderr:write("coral: ", positional, "\n")
    return nil, EXIT_USAGE
  end
  local params, perr = M.params(ropts, { table.unpack(positional, 2) })
  if not params then
    io.stderr:write("coral: ", perr, "\n")
    return nil, EXIT_USAGE
  end
  local ok, plan = pcall(require("coral.recipes").plan, inv.recipe, positional[1] or "(no description)",
                         { project_dir = ropts.project_dir, default_plan = ropts.default_plan, params = params })
  if not ok then return nil, report_error(plan, EXIT_USAGE) end
  return plan, ropts
end

-- The definition of each task of the run in `run_dir` as its recipe declares it now (digests,
-- run/uptodate.lua), for `coral why`; nil when the run was not started from the command line
-- or its recipe no longer builds.
local function current_definitions(run_dir, dir)
  local inv = records.read_invocation(run_dir)
  if not (inv and inv.recipe) then return nil end
  local plan, ropts = M.rebuild(inv, dir)
  if not plan then return nil end
  local runner = M.runner_options(ropts) or {}
  runner.driver = runner.driver or run_options.default("driver")
  local uptodate = require "coral.run.uptodate"
  local out = {}
  for _, t in ipairs(plan.tasks) do out[t.id] = uptodate.digests(uptodate.definition(t, runner)) end
  return out
end

-- }}}
-- {{{ the commands

local function fail(err, code)
  io.stderr:write("coral: ", err, "\n")
  return code or EXIT_USAGE
end

-- A run of a project and how it was started.
local function load_run(dir, id)
  local run_dir, err = records.find_run(dir, id)
  if not run_dir then return nil, err end
  return require("coral.view.timeline").load(run_dir)
end

-- A command that appends its arguments, joined, to `file` of the project (or to the file the
-- environment variable `env_name` names: an agent's run sets it) with `append(path, text, who)`.
local function coordination_command(file, env_name, append)
  return {
    args = { "TEXT..." }, min = 1, max = math.huge, options = { DIR },
    run = function(opts, args)
      local path = os.getenv(env_name)
      if opts.dir or not path or path == "" then path = (opts.dir or ".") .. "/" .. file end
      local ok, err, code = append(path, table.concat(args, " "), os.getenv("CORAL_AGENT"))
      if not ok then return fail(err, code == "EINTR" and EXIT_INTERRUPTED or EXIT_FAILED) end
      return EXIT_OK
    end,
  }
end

--- The commands, in the order --help lists them.
M.LIST = {
  {
    name = "run", args = { "TYPE", '"DESCRIPTION"' }, min = 1, missing = "a project type (see 'coral recipes')",
    summary = "run a plan from the recipe library (or a recipe file) for a project",
    options = RUN_OPTIONS,
    notes = "exit status: 0 all tasks succeeded (or a when condition skipped them), 1 a task failed or was\n" ..
            "skipped otherwise, 2 usage or recipe error, 130 interrupted",
    run = function(opts, args, raw)
      return run_recipe(args[1], args[2], opts, { table.unpack(raw, 2) })
    end,
    -- coral run TYPE --help: the recipe's parameters too
    help_extra = function(raw)
      local name = raw[1]
      if not name or name:sub(1, 1) == "-" then return nil end
      local recipes = require "coral.recipes"
      local lines = recipes.params_help(name, ".")
      if #lines == 0 then return nil end
      local ok, real = pcall(recipes.resolve, name, ".")
      local alias = ok and real ~= name and ("; " .. name .. " is its alias") or ""
      local out = { "parameters of " .. (ok and real or name) .. " (--param NAME=VALUE" .. alias .. "):" }
      for _, l in ipairs(lines) do M.two_columns(out, l[1], l[2], 20) end
      return table.concat(out, "\n") .. "\n"
    end,
  },
  {
    name = "resume", args = { "[RUN]" },
    summary = "continue the last or a given run: finished tasks are not run again",
    notes = "A run that a script file started (coral script.lua, whose code calls execute_plan) is continued\n" ..
            "by running the script again, in the directory and with the arguments it had: each of its\n" ..
            "execute_plan calls continues its own run, in order (--json and --quiet are the script's to choose).",
    options = { DIR, { flag = "--retry-failed", key = "retry_failed", kind = "flag", help = "run the failed tasks again too" },
                { flag = "--quiet", key = "quiet", kind = "flag", help = "only the summary" },
                { flag = "--json", key = "json", kind = "flag", help = "JSON lines, then the summary" },
                { flag = "--budget-usd", key = "budget_usd", kind = "number", value = "N",
                  help = "a new spend ceiling in dollars for the run (what it spent so far counts)" },
                { flag = "--budget-tokens", key = "budget_tokens", kind = "number", value = "N",
                  help = "a new ceiling in tokens" },
                { flag = "--limit", key = "limit", kind = "string", value = "NAME=N", many = true,
                  help = "a limit, as coral run takes it (repeatable; it replaces the run's own for NAME)" } },
    run = function(opts, args)
      local dir = opts.dir or "."
      local run_dir, err = records.find_run(dir, args[1])
      if not run_dir then return fail(err) end
      local run_id = run_dir:match("([^/]+)$")
      local inv = records.read_invocation(run_dir)
      if not inv then
        return fail(string.format("run %s was started from Lua (coral -e, standard input or the REPL), not " ..
          "from the command line or a script file; resume it with runner:execute_plan(plan, { resume = \"%s\" })",
          run_id, run_id))
      end
      if inv.script then
        -- The script runs again and chooses its runners' output itself.
        for _, k in ipairs { "quiet", "json" } do
          if opts[k] then
            return fail(string.format("option '--%s': run %s was started by the script %s, whose runners " ..
              "choose their own output", k, run_id, tostring(inv.script)))
          end
        end
        local _, serr = require("coral.run.script").resume(run_id, inv, opts.retry_failed)
        return fail(serr)
      end
      local flags = {}
      for _, k in ipairs { "retry_failed", "quiet", "json" } do
        if opts[k] then flags[#flags + 1] = "--" .. k:gsub("_", "-") end
      end
      for _, k in ipairs { "budget_usd", "budget_tokens" } do
        if opts[k] then flags[#flags + 1] = "--" .. k:gsub("_", "-"); flags[#flags + 1] = tostring(opts[k]) end
      end
      for _, l in ipairs(opts.limit or {}) do flags[#flags + 1] = "--limit"; flags[#flags + 1] = l end
      local plan, ropts = M.rebuild(inv, dir, flags)
      if not plan then return ropts end
      ropts.resume = run_id
      return M.run_plan(plan, ropts, inv)
    end,
  },
  {
    name = "why", args = { "TASK", "[RUN]" }, min = 1,
    summary = "why a task will or will not run on resume",
    options = { DIR },
    run = function(opts, args)
      local run, err = load_run(opts.dir or ".", args[2])
      if not run then return fail(err) end
      local text, werr = require("coral.view.status").why(run, args[1], current_definitions(run.dir, opts.dir or "."))
      if not text then return fail(werr) end
      io.stdout:write(text, "\n")
      return EXIT_OK
    end,
  },
  {
    name = "status", args = { "[RUN]" },
    summary = "the state of the last or a given run",
    options = { DIR, JSON, { flag = "--gantt", key = "gantt", kind = "flag", help = "the run as a terminal timeline" } },
    run = function(opts, args)
      local run, err = load_run(opts.dir or ".", args[1])
      if not run then return fail(err) end
      local status = require "coral.view.status"
      if opts.gantt then
        local color = host.isatty(1) and (os.getenv("NO_COLOR") or "") == ""
        io.stdout:write(require("coral.view.timeline").text(run, { color = color }))
      elseif opts.json then
        io.stdout:write(require("coral.json").encode(status.json(run)), "\n")
      else
        io.stdout:write(status.text(run))
      end
      return EXIT_OK
    end,
  },
  {
    name = "report", args = { "[RUN]" },
    summary = "write the HTML report of the last or a given run (timeline, plan graph, summary)",
    options = { DIR, { flag = "--output", short = "-o", key = "output", kind = "string", value = "FILE",
                       help = "where to write it (default: <run dir>/report.html)" } },
    notes = "RUN is a run id (default: the project's newest run) or a run directory. The report is one\n" ..
            "self-contained HTML file; its links to task files are relative to it.",
    run = function(opts, args)
      local run_dir, err = records.find_run(opts.dir or ".", args[1])
      if not run_dir then return fail(err) end
      local path, werr = require("coral.view.report").write(run_dir, opts.output)
      if not path then return fail(werr, EXIT_FAILED) end
      io.stdout:write(path, "\n")
      return EXIT_OK
    end,
  },
  {
    name = "history", args = {},
    summary = "past runs of the project, and each agent's median duration (the runner's estimates)",
    options = { DIR, JSON },
    run = function(opts)
      local history = require "coral.view.history"
      local dir = opts.dir or "."
      if opts.json then
        io.stdout:write(require("coral.json").encode { runs = history.runs(dir), agents = history.agents(dir) }, "\n")
      else
        io.stdout:write(history.text(dir))
      end
      return EXIT_OK
    end,
  },
  {
    name = "workspaces", args = { "[RUN]" },
    summary = "the worktrees and branches runs left in the project's git repository; --prune removes them",
    options = { DIR, { flag = "--prune", key = "prune", kind = "flag",
                       help = "remove the worktrees and branches of RUN, or of every run but a running one" },
                { flag = "--older-than", key = "older_than", kind = "string", value = "D",
                  help = "with --prune: only runs started more than D ago (30m, 12h, 7d)" } },
    run = function(opts, args)
      local workspace = require "coral.workspace"
      local dir = fsutil.absolute(opts.dir or ".")
      local top = workspace.toplevel(dir)
      if not top then return fail("the project dir " .. dir .. " is not inside a git work tree") end
      local wt_dir = (uv.fs_realpath(dir) or dir) .. "/.coral/worktrees"
      local runs, ids = workspace.list(top, wt_dir)
      if args[1] then
        if not runs[args[1]] then return fail("run " .. args[1] .. " left no worktree or branch in " .. top) end
        ids = { args[1] }
      end
      if opts.older_than and not opts.prune then return fail("option '--older-than' goes with --prune") end
      if opts.prune then
        local older
        if opts.older_than then
          local n, unit = opts.older_than:match("^(%d+%.?%d*)([smhd]?)$")
          if not n then return fail("option '--older-than' needs a duration like 30m, 12h or 7d, got '" .. opts.older_than .. "'") end
          older = tonumber(n) * ({ s = 1, m = 60, h = 3600, d = 86400 })[unit ~= "" and unit or "s"]
        end
        local owner = records.read_owner(records.paths(dir))
        local lock = require("coral.run.resume").lock(records.paths(dir))
        local running = not lock and owner and owner.run_id
        if lock then lock:unlock() end
        for _, id in ipairs(ids) do
          local y, mo, d, h, mi, sec = id:match("^(%d%d%d%d)(%d%d)(%d%d)%-(%d%d)(%d%d)(%d%d)")
          local started = y and os.time { year = y, month = mo, day = d, hour = h, min = mi, sec = sec }
          if id == running then
            io.stderr:write("coral: run ", id, " is running: its workspaces stay\n")
          elseif not older or (started and os.time() - started > older) then
            local w, b = workspace.prune(top, wt_dir, id)
            io.stdout:write(string.format("run %s: %d worktree%s, %d branch%s removed\n", id, w, w == 1 and "" or "s",
                                          b, b == 1 and "" or "es"))
          end
        end
        return EXIT_OK
      end
      for _, id in ipairs(ids) do
        local r = runs[id]
        io.stdout:write("run ", id, "\n")
        for _, b in ipairs(r.branches) do
          io.stdout:write(string.format("  %-14s %s  coral/%s/%s\n", b.name:match("^[^/]+"), b.commit, id, b.name))
        end
        for _, path in ipairs(r.worktrees) do io.stdout:write("  worktree ", path, "\n") end
      end
      if #ids == 0 then io.stdout:write("no run left a worktree or a branch in ", top, "\n") end
      return EXIT_OK
    end,
  },
  {
    name = "recipes", args = {},
    summary = "list the recipe library, each recipe with its aliases",
    options = {},
    run = function()
      local recipes = require "coral.recipes"
      local broken = 0
      local aliases = recipes.aliases(".")
      local names, width = recipes.names("."), 0
      for _, name in ipairs(names) do width = math.max(width, #name) end
      for _, name in ipairs(names) do
        local summary, err = recipes.summary(name, ".")
        if summary then
          local also = aliases.of[name] or {}
          io.stdout:write(string.format("%-" .. width .. "s  %s%s\n", name, summary,
                                        #also > 0 and (" (aliases: " .. table.concat(also, ", ") .. ")") or ""))
        else
          broken = broken + 1
          io.stderr:write("coral: warning: recipe ", name, " does not load: ", err, "\n")
        end
      end
      if aliases.conflict then
        broken = broken + 1
        io.stderr:write("coral: ", tostring(aliases.conflict), "\n")
      end
      return broken == 0 and EXIT_OK or EXIT_FAILED
    end,
  },
  {
    name = "agents", args = { "[show ID]" },
    summary = "list the agent roles, or print one",
    options = { DIR },
    notes = "Roles come from coral (built in), ~/.claude/agents/*.md, and the project's .claude/agents/*.md\n" ..
            "and .coral/agents/*.md, later ones overriding earlier ones with the same id. A task's agent\n" ..
            "name picks its role; its prompt starts with the role's text. A role file with a mistake in its\n" ..
            "front matter is exit 2 here and for every command that loads the roles, naming its file:line.",
    max = 2,
    run = function(opts, args)
      local agents = require "coral.agents"
      local dir = opts.dir or "."
      if args[1] == "show" then
        if not args[2] then return fail("agents show needs a role id (see 'coral agents')") end
        -- a role file's mistake raises a user error (its file:line): exit 2
        local ok, text, err = pcall(agents.show, args[2], dir)
        if not ok then return report_error(text, EXIT_USAGE) end
        if not text then return fail(err) end
        io.stdout:write(text)
        return EXIT_OK
      elseif args[1] then
        return fail("unknown agents subcommand '" .. args[1] .. "' (try 'coral agents --help')")
      end
      local ok, text = pcall(agents.list_text, dir)
      if not ok then return report_error(text, EXIT_USAGE) end
      io.stdout:write(text)
      return EXIT_OK
    end,
  },
  {
    name = "ctl", args = { "COMMAND", "[ARGS]" }, min = 1, max = math.huge,
    missing = "a command: status, tail, cancel, retry, pause, resume, workers, limit, add, approve or reject",
    summary = "steer the project's running run: status, tail, cancel, retry, pause, resume, workers, limit, add, " ..
              "approve, reject",
    options = { DIR, { flag = "--run", key = "run", kind = "string", value = "RUN", help = "the run's id (default: the running one)" },
                JSON,
                { flag = "--lines", short = "-n", key = "lines", kind = "integer", value = "N", help = "ctl tail: lines (20)" },
                { flag = "--note", key = "note", kind = "string", value = "TEXT", help = "ctl approve: a note kept in the journal" },
                { flag = "--reason", key = "reason", kind = "string", value = "TEXT", help = "ctl reject: why (needed)" } },
    notes = "commands: status | tail TASK [-n N] | cancel TASK | retry TASK | pause | resume | workers N |\n" ..
            "limit NAME=N | add FILE.lua | approve TASK [--note TEXT] | reject TASK --reason TEXT (docs/control.md)\n" ..
            "exit status: 0 done, 1 refused (the reason on stderr), 2 usage error, 3 no running run",
    run = function(opts, args) return require("coral.cli.ctl").ctl(opts, args) end,
  },
  {
    name = "attach", args = { "[RUN]" },
    summary = "the REPL inside the project's running run: a `run` object to inspect and steer it, its events as they happen",
    options = { DIR },
    notes = "Code typed at the prompt runs inside the running coral between scheduling steps; an error is\n" ..
            "printed and the run goes on. Ctrl-D detaches (the run goes on). Exit 3: no running run.",
    run = function(opts, args) return require("coral.cli.ctl").attach(opts, args) end,
  },
  -- note and log: one locked append to a coordination file, from an agent or a person
  (function()
    local c = coordination_command("scratchpad.md", "CORAL_SCRATCHPAD", function(...) return records.note(...) end)
    c.name, c.summary = "note", "append a note to the project's scratchpad.md, under its lock"
    return c
  end)(),
  (function()
    local c = coordination_command("activity_tracker.md", "CORAL_ACTIVITY", function(...) return records.log(...) end)
    c.name, c.summary = "log", "append a progress line to the project's activity_tracker.md, under its lock"
    return c
  end)(),
}

--- name -> command
M.BY_NAME = {}
for _, c in ipairs(M.LIST) do M.BY_NAME[c.name] = c end

-- }}}
-- {{{ parsing and help

--- Parses `args` against a list of option declarations. Returns the options and the
-- positional arguments, or nil and a message saying what is wrong.
function M.parse(args, options)
  local by_flag = {}
  for _, o in ipairs(options) do
    by_flag[o.flag] = o
    if o.short then by_flag[o.short] = o end
  end
  local opts, positional = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do positional[#positional + 1] = args[j] end
      break
    elseif a:sub(1, 1) == "-" and #a > 1 then
      local name, inline = a:match("^(%-%-[^=]+)=(.*)$")
      name = name or a
      local o = by_flag[name]
      if not o then
        local flags = {}
        for flag in pairs(by_flag) do flags[#flags + 1] = flag end
        table.sort(flags)
        return nil, "unknown option '" .. name .. "'" .. check.did_you_mean(name, flags)
      end
      if o.kind == "flag" then
        if inline then return nil, "option '" .. name .. "' takes no value" end
        opts[o.key] = true
      elseif o.kind == "flag_or_list" then
        -- --force: all; --force=a,b: those (repeatable); a separate word is never its value
        if not inline then
          opts[o.key] = true
        elseif opts[o.key] ~= true then
          opts[o.key] = opts[o.key] or {}
          for item in inline:gmatch("[^,]+") do table.insert(opts[o.key], item) end
          if inline:find("^,*$") then return nil, "option '" .. name .. "=' needs task ids" end
        end
      else
        local v = inline
        if v == nil then
          i = i + 1
          v = args[i]
          if v == nil then return nil, "option '" .. name .. "' needs a value" end
        end
        if o.kind == "integer" then
          local n = math.tointeger(tonumber(v))
          if not n then return nil, "option '" .. name .. "' needs a whole number, got '" .. v .. "'" end
          v = n
        elseif o.kind == "number" then
          local n = tonumber(v)
          if not n then return nil, "option '" .. name .. "' needs a number, got '" .. v .. "'" end
          v = n
        end
        if o.many then
          opts[o.key] = opts[o.key] or {}
          table.insert(opts[o.key], v)
        else
          opts[o.key] = v
        end
      end
    else
      positional[#positional + 1] = a
    end
    i = i + 1
  end
  return opts, positional
end

local function option_label(o)
  -- "--force[=ID,...]": an optional value is written against its flag
  local value = o.value and ((o.value:sub(1, 1) == "[" and "" or " ") .. o.value) or ""
  local label = o.flag .. value
  if o.short then label = o.short .. value .. ", " .. label end
  return label
end

--- The usage line of a command: its name, arguments and options.
function M.usage(c)
  local parts = { c.name }
  for _, a in ipairs(c.args) do parts[#parts + 1] = a end
  if #c.options > 3 then
    parts[#parts + 1] = "[options]"
  else
    for _, o in ipairs(c.options) do parts[#parts + 1] = "[" .. option_label(o) .. "]" end
  end
  return table.concat(parts, " ")
end

--- Adds a help line to `lines`: `label` in a column `width` wide, then `text`; a longer label
-- gets a line of its own.
function M.two_columns(lines, label, text, width)
  if #label <= width then
    lines[#lines + 1] = string.format("  %-" .. width .. "s %s", label, text)
  else
    lines[#lines + 1] = "  " .. label
    lines[#lines + 1] = string.format("  %-" .. width .. "s %s", "", text)
  end
end

--- `coral COMMAND --help`.
function M.help(c)
  local lines = { "usage: coral " .. M.usage(c), c.summary }
  if #c.options > 0 then
    lines[#lines + 1] = "options:"
    for _, o in ipairs(c.options) do M.two_columns(lines, option_label(o), o.help, 20) end
  end
  if c.notes then lines[#lines + 1] = c.notes end
  return table.concat(lines, "\n") .. "\n"
end

local function roff(text)
  return (text:gsub("\\", "\\e"):gsub("%-", "\\-"):gsub("\n%.", "\n\\&."):gsub("^%.", "\\&."))
end

--- The COMMANDS section of the man page (docs/coral.1), made from the declarations:
-- scripts/manpage.lua writes it, a spec checks the page has it.
function M.man_commands()
  local out = { ".SH COMMANDS" }
  for _, c in ipairs(M.LIST) do
    out[#out + 1] = ".TP"
    out[#out + 1] = '\\fB' .. roff(M.usage(c)) .. '\\fR'
    out[#out + 1] = roff(c.summary:sub(1, 1):upper() .. c.summary:sub(2)) .. "."
    if #c.options > 0 then
      out[#out + 1] = ".RS"
      for _, o in ipairs(c.options) do
        out[#out + 1] = ".TP"
        out[#out + 1] = ".B " .. roff(option_label(o))
        out[#out + 1] = roff(o.help)
      end
      out[#out + 1] = ".RE"
    end
  end
  return table.concat(out, "\n") .. "\n"
end

--- Runs command `c` with its raw arguments; returns its exit code.
function M.dispatch(c, raw)
  for _, a in ipairs(raw) do
    if a == "--" then break end
    if a == "-h" or a == "--help" then
      io.stdout:write(M.help(c), c.help_extra and c.help_extra(raw) or "")
      return EXIT_OK
    end
  end
  local opts, args = M.parse(raw, c.options)
  local err
  if not opts then
    err = args
  elseif #args < (c.min or 0) then
    err = string.format("%s needs %s", c.name, c.missing or c.args[#args + 1])
  elseif #args > (c.max or #c.args) then
    err = "unexpected argument '" .. args[(c.max or #c.args) + 1] .. "'"
  end
  if err then
    io.stderr:write("coral: ", err, " (try 'coral ", c.name, " --help')\n")
    return EXIT_USAGE
  end
  return c.run(opts, args, raw)
end

-- }}}

return M
