--- coral's own files in a project, and what coral refuses in their place.
--
-- coral writes scratchpad.md, activity_tracker.md and everything under .coral/ (the project
-- state, the locks, the run dirs). A symbolic link planted at one of those places (by an
-- agent, a cloned repository, a mistake) would make coral write wherever it points, outside
-- the project; a dangling one used to make it spin. So coral never follows a link there:
-- coral.coord opens the coordination files from the project dir down without following one,
-- fsutil opens the run's files with O_NOFOLLOW, and a run first checks every such place and
-- stops, naming the path, before it writes anything (docs/runner.md, "What coral refuses").
--
-- This is also the one place that says where the lock file of a coordination file is: every
-- writer (a run, `coral note`, `coral log`, an agent through them) must lock the same file.
local fsutil = require "coral.fsutil"
local uv = require "luv"

local M = {}

--- Where the lock files of the coordination files live, relative to the project dir: inside
-- .coral/, so that none shows up in the user's tree.
M.LOCKS_DIR = ".coral/locks"

local PRIVATE_DIR = tonumber("700", 8)

-- The last component of a path.
local function basename(path)
  return path:match("([^/]*)$")
end

--- The lock file of coordination file `path` of project `project_dir`:
-- <project_dir>/.coral/locks/<name>.lock.
function M.lock_path(project_dir, path)
  return project_dir .. "/" .. M.LOCKS_DIR .. "/" .. basename(path) .. ".lock"
end

--- The coral.coord options every writer of coordination file `path` (inside `project_dir`)
-- uses: its lock file (M.lock_path), and the project dir as the root below which no link is
-- followed; missing directories below it (.coral, .coral/locks) are made private. Adds them
-- to `opts` (header, mode, ...) and returns it.
function M.coord_opts(project_dir, path, opts)
  opts = opts or {}
  opts.root, opts.lock = project_dir, M.lock_path(project_dir, path)
  opts.mkdir, opts.dir_mode = true, PRIVATE_DIR
  return opts
end

--- The project of a coordination file known by its path alone (`coral note`, or the
-- CORAL_SCRATCHPAD an agent was given): the directory it is in. Returns the project dir and
-- the path (given a directory part when it had none, so that it is below that dir).
function M.project_of(path)
  local dir = path:match("^(.*)/[^/]*$")
  if not dir then return ".", "./" .. path end
  return dir == "" and "/" or dir, path
end

--- Checks every place of the project where coral writes its own files or makes its own
-- directories (records.paths `paths`): each is missing or what coral makes there, never a
-- symbolic link, a file where a directory belongs or a FIFO where a file does. Returns true,
-- or nil and "<path> is a symbolic link (coral does not follow it)" for the first that is not.
function M.check(paths)
  local p = paths.project
  local own = {
    { paths.coral, "directory" }, { paths.runs, "directory" }, { p .. "/" .. M.LOCKS_DIR, "directory" },
    { paths.scratchpad, "file" }, { paths.activity, "file" }, { paths.state, "file" },
    { paths.coral .. "/run.lock", "file" }, { paths.coral .. "/run.owner", "file" },
  }
  for _, file in ipairs { paths.scratchpad, paths.activity, paths.state } do
    own[#own + 1] = { M.lock_path(p, file), "file" }
  end
  -- in this order a directory is checked before what is inside it, so lstat never passes
  -- through a link that was not reported first
  for _, o in ipairs(own) do
    local err = fsutil.refusal(o[1], uv.fs_lstat(o[1]), o[2])
    if err then return nil, err end
  end
  return true
end

return M
