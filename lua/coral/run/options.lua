--- The options of a runner, declared once. coral.runner checks its options and fills the
-- defaults from this list; `coral run` builds its command-line options, their --help lines
-- and the translation to runner options from it; a spec checks each is in docs/runner.md.
--   key:     the runner option          type: as coral.check takes it
--   default: the value when not given   flag, value, help: its command-line form (if any)
--   choices: the words it takes (modes come from the mode registry); min: its least value
local M = {}

M.LIST = {
  { key = "max_workers", type = "integer", min = 1, default = 4, flag = "--max-workers", value = "N",
    help = "tasks at once" },
  { key = "mode", type = "string", default = "dependency", flag = "--mode", value = "M",
    help = "how tasks are scheduled: %s" },
  { key = "timeout", type = "number", min = 0, default = 300, flag = "--timeout", value = "S",
    help = "per-task timeout in seconds, 0 = none" },
  { key = "idle_timeout", type = "number", min = 0, flag = "--idle-timeout", value = "S",
    help = "kill a task that prints nothing for S seconds" },
  { key = "retries", type = "integer", min = 0, default = 2, flag = "--retries", value = "N",
    help = "extra attempts for a failed task, with backoff" },
  { key = "retry_failed", type = "boolean", default = true },
  { key = "rate_limit_retries", type = "integer", min = 0, default = 5, flag = "--rate-limit-retries", value = "N",
    help = "attempts refused by an API rate limit are retried this often, apart from --retries" },
  { key = "on_failure", type = "string", default = "skip", flag = "--on-failure", value = "P",
    choices = { "skip", "stop", "continue" },
    help = "skip: skip the dependents of a failed task; stop: stop the run; continue: run them" },
  { key = "driver", type = "string", default = "auto", flag = "--agent", value = "DRIVER",
    help = "auto, claude, codex, gemini, aider, sim, prompt, cmd, or a project driver" },
  { key = "model", type = "string", flag = "--model", value = "NAME", help = "model passed to the agent CLI" },
  { key = "permission_mode", type = "string", flag = "--permission-mode", value = "M",
    help = "claude: its --permission-mode (acceptEdits); codex: bypassPermissions drops its sandbox" },
  { key = "project_dir", type = "string", default = ".", flag = "--dir", value = "PROJECT",
    help = "project directory" },
  { key = "sim_scale", type = "number", min = 0, flag = "--sim-scale", value = "X",
    help = "the sim driver sleeps a task's estimate times X (0.02)" },
  { key = "kill_grace", type = "number", min = 0, default = 5, flag = "--kill-grace", value = "S",
    help = "seconds between TERM and KILL when a task is stopped" },
  { key = "output_cap", type = "integer", min = 0, default = 64 * 1024 * 1024, flag = "--output-cap", value = "BYTES",
    help = "bytes kept of each stream of an attempt, 0 = all" },
  { key = "executor", type = "string|table", flag = "--executor", value = "E",
    help = "local (default) or slurm: each task a Slurm batch job (docs/slurm.md)" },
  { key = "force", type = "boolean|list", flag = "--force", value = "[=ID,...]",
    help = "run tasks that are up to date: all, or the tasks named (--force=a,b)" },
  { key = "workspace", type = "string", default = "auto", flag = "--workspace", value = "W",
    choices = { "auto", "worktree", "shared" },
    help = "auto: agents that edit files work in a git worktree each (in a git repository); worktree: every " ..
      "task; shared: all in the project dir" },
  { key = "limits", type = "table" },
  { key = "budget", type = "table" },
  { key = "output", type = "string", default = "auto", choices = { "auto", "live", "lines", "json", "quiet" } },
  { key = "backoff", type = "table", default = { base = 0.5, factor = 2, max = 30, jitter = 0.25 } },
  { key = "approve_all", type = "boolean", default = false },
  { key = "on_event", type = "function" },
  { key = "env", type = "table" },
  { key = "description", type = "string" },
  { key = "name", type = "string" },
}

--- key -> declaration
M.BY_KEY = {}
--- key -> type, as coral.check.options takes it
M.TYPES = {}
for _, o in ipairs(M.LIST) do
  M.BY_KEY[o.key] = o
  M.TYPES[o.key] = o.type
end

--- What is wrong with runner options `opts` (types, words, least values), or nil. `flags`:
-- name each option by its command-line flag, not its key.
function M.check(opts, flags)
  local check = require "coral.check"
  local err = check.option_error("coral.runner", opts, M.TYPES)
  if err then return err end
  for _, o in ipairs(M.LIST) do
    local v = opts and opts[o.key]
    local name = flags and o.flag and ("option '" .. o.flag .. "'") or ("coral.runner: " .. o.key)
    if v ~= nil and o.choices then
      err = check.choice_error(name, o.key, v, o.choices)
      if err then return err end
    end
    if v ~= nil and o.min and type(v) == "number" and v < o.min then
      return string.format("%s must be at least %s, got %s", name, tostring(o.min), tostring(v))
    end
  end
  if opts then
    err = require("coral.run.limits").check(opts.limits, flags and "option '--limit'" or "coral.runner: limits")
      or require("coral.run.budget").check(opts.budget, flags and "the budget options" or "coral.runner: budget")
    if err then return err end
  end
  local mode = opts and opts.mode
  if mode ~= nil then
    local _, merr = require("coral.run.modes").get(mode)
    if merr then return (flags and "option '--mode': " or "coral.runner: ") .. merr end
  end
  return nil
end

--- A fresh copy of the default of option `key` (tables are copied: a runner may change its own).
function M.default(key)
  local d = M.BY_KEY[key].default
  if type(d) == "table" then
    local c = {}
    for k, v in pairs(d) do c[k] = v end
    return c
  end
  return d
end

return M
