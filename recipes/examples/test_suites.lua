-- examples/test_suites: a plan of shell commands that runs a project's several test suites in parallel, then a report.
-- Each suite whose marker file exists in the project dir becomes a task running its command
-- (the cmd driver: no agent is involved); suites share nothing, so they all start at once.
-- A report task runs after them, whether they passed or not (run with --on-failure continue to
-- get it after a failing suite). Add your own suites to SUITES, or pass a pattern as the
-- description to keep only the suites whose name matches it.
-- Run it: coral run examples/test_suites "" --dir /path/to/project --on-failure continue
local coral = require "coral"
local t = coral.task
local uv = require "luv"

-- name, the file that says the suite exists, the command (run by /bin/sh -c in the project dir)
local SUITES = {
  { "make", "Makefile", "make test" },
  { "npm", "package.json", "npm test --silent" },
  { "pytest", "pytest.ini", "python3 -m pytest -q" },
  { "pytest-pyproject", "pyproject.toml", "python3 -m pytest -q" },
  { "go", "go.mod", "go test ./..." },
  { "cargo", "Cargo.toml", "cargo test --quiet" },
  { "busted", ".busted", "busted" },
  { "shell", "tests/run.sh", "sh tests/run.sh" },
}

return coral.recipe {
  summary = "shell commands: the project's test suites in parallel, then a report",
  plan = function(pattern, opts)
    local dir = opts and opts.project_dir or "."
    local tasks, ids = {}, {}
    for _, s in ipairs(SUITES) do
      local name, marker, cmd = s[1], s[2], s[3]
      if uv.fs_stat(dir .. "/" .. marker) and (pattern == nil or pattern == "" or name:find(pattern)) then
        tasks[#tasks + 1] = t { id = "test-" .. name, agent = "tests", task = cmd, cmd = cmd,
                                retries = 0, estimate = 30 }
        ids[#ids + 1] = "test-" .. name
      end
    end
    if #tasks == 0 then
      error("no test suite found in " .. dir .. " (looked for the marker files in recipes/examples/test_suites.lua)", 0)
    end
    -- The report lists each suite's result: coral gives a task the output of each dependency in
    -- CORAL_INPUT_<ID> (a failed suite's: the stdout of its last attempt) and all of them, with
    -- their status, in the JSON file $CORAL_INPUTS.
    local lines = {}
    for _, id in ipairs(ids) do
      lines[#lines + 1] = string.format('echo "== %s"; tail -n 3 "$%s"', id, coral.input_variable(id))
    end
    tasks[#tasks + 1] = t { id = "report", agent = "tests", depends_on = ids, task = "summarise the suites",
      cmd = table.concat(lines, "\n") }
    return coral.plan(tasks, { name = "examples/test_suites" })
  end,
}
