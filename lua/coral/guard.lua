--- coral's own files in a project: where the lock file of each coordination file is. Every
-- writer (a run, `coral note`, `coral log`, an agent through them) must lock the same file,
-- so this is the one place that says where: under .coral/locks/, out of the user's tree.
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

return M
