--- The one vocabulary of task, attempt and run states. The journal, summary.json, the JSON
-- lines, status, the report, history and the project state all use these words; docs/runner.md
-- has the same tables for readers (spec/cli_docs_spec.lua checks it names every word here).
local M = {}

--- What a task is: waiting for its dependencies, running, waiting to retry, or ended.
M.TASK = {
  pending = "waiting for its dependencies (or for a worker)",
  running = "an attempt is running",
  retrying = "an attempt failed; waiting out the backoff before the next",
  succeeded = "an attempt succeeded; its output goes to its dependents",
  failed = "its last attempt failed and no retry is left",
  skipped = "not run: a dependency failed, or the run stopped first",
  up_to_date = "not run: its declared outputs are as its last success left them, its inputs are not newer, " ..
    "and its definition is unchanged (--force runs it)",
  awaiting_approval = "its dependencies are done and it has an approval gate (approve): it waits for " ..
    "`coral ctl approve` (or reject, or its timeout) without taking a worker",
  budget_exhausted = "not started: its expected spend would take the run past its budget; its dependents " ..
    "wait with it (coral resume --budget-usd N goes on)",
  interrupted = "unfinished: its attempt was stopped by Ctrl-C, SIGTERM or SIGHUP, or coral was killed " ..
    "while it ran (a plain resume runs it again)",
}

--- How one attempt ended.
M.ATTEMPT = {
  succeeded = "the process exited 0 (and the driver found no error in its output)",
  failed = "the process exited non-zero, or the driver found an error",
  timeout = "killed after the task's timeout",
  ["idle-timeout"] = "killed after printing nothing for the task's idle_timeout",
  ["rate-limited"] = "the agent's API refused for a rate limit; retried on its own budget",
  budget_exceeded = "stopped: its spend passed the task's own budget",
  cancelled = "stopped by coral (on_failure = stop, a failed upstream in a pipeline)",
  interrupted = "stopped by Ctrl-C, SIGTERM or SIGHUP, or coral was killed while it ran",
  running = "still running (a live run)",
}

--- How a run is, or ended.
M.RUN = {
  running = "coral is running it",
  succeeded = "every task succeeded",
  failed = "a task failed or was skipped",
  interrupted = "stopped by Ctrl-C, SIGTERM or SIGHUP; resume goes on",
  killed = "coral died without ending it (kill -9, a crash); resume goes on",
}

-- Words of earlier coral versions.
local LEGACY = { success = "succeeded", completed = "succeeded" }

--- A state word as this version spells it.
function M.normalize(word)
  return LEGACY[word] or word
end

--- True when a task in `state` will not change any more in this run.
function M.ended(state)
  return state == "succeeded" or state == "failed" or state == "skipped" or state == "up_to_date"
end

return M
