--- Workspaces: a git worktree per task, started from the run's base merged with the results of
-- exactly the task's dependencies, committed when the task succeeds; at the end, the results of
-- the tasks nothing depends on merged into one branch. What coral writes in the user's
-- repository: refs under refs/heads/coral/<run-id>/, worktrees under .coral/worktrees/ (with
-- their admin files in .git/worktrees/), and a `/.coral/` line in .git/info/exclude when the
-- project does not ignore .coral already. The user's working tree, index, HEAD, stash and
-- branches are never touched: the base is captured through a copy of the index.
--
-- The functions that run before the run's loop or after it block (base, result, remove); those
-- that prepare or finish a task run inside a coroutine (coral.workspace.git.async), on the loop.
local fsutil = require "coral.fsutil"
local git = require "coral.workspace.git"
local uv = require "luv"

local M = {}

--- The top of the git work tree that `dir` is in, or nil (not in one, or no git).
function M.toplevel(dir)
  local out = git.run(dir, { "rev-parse", "--show-toplevel" })
  return out and out:match("^(.-)%s*$") or nil
end

--- The branch names of a run: base, result, and each task's.
function M.branch(run_id, name)
  return "coral/" .. run_id .. "/" .. name
end

-- A path git gives relative to the repository (rev-parse --git-path), made absolute.
local function git_path(top, name)
  local out, err = git.run(top, { "rev-parse", "--git-path", name })
  if not out then return nil, err end
  local path = out:match("^(.-)%s*$")
  if path:sub(1, 1) ~= "/" then path = top .. "/" .. path end
  return path
end

--- Keeps coral's own files out of the user's `git status`: adds `/.coral/` to
-- .git/info/exclude unless .coral is ignored already. Returns true, or nil and an error.
function M.exclude_coral(top)
  if git.run(top, { "check-ignore", "-q", ".coral/" }) then return true end
  local path, err = git_path(top, "info/exclude")
  if not path then return nil, err end
  fsutil.mkdirs(path:match("^(.*)/[^/]*$"))
  local f, ferr = io.open(path, "a")
  if not f then return nil, "cannot add .coral/ to " .. path .. ": " .. ferr end
  f:write("/.coral/\n")
  f:close()
  return true
end

--- The arguments of `git add` that stage every change in `dir` but coral's own files: .coral,
-- and `excludes` (paths from the repository's top: the project's coordination files, which
-- are coral's and every run's, not a task's work). .coral is left out by a pathspec unless git
-- ignores it already (naming an ignored path, even to exclude it, makes git add fail).
-- `run`: git.run or git.await.
function M.add_all(dir, run, excludes)
  local args = { "add", "-A", "--", "." }
  if not run(dir, { "check-ignore", "-q", ".coral/" }) then args[#args + 1] = ":(exclude,top).coral" end
  for _, path in ipairs(excludes or {}) do
    if not run(dir, { "check-ignore", "-q", path }) then args[#args + 1] = ":(exclude,top,literal)" .. path end
  end
  return args
end

local function trim(s)
  return (s:gsub("%s+$", ""))
end

--- Captures the run's base: HEAD plus the user's uncommitted and untracked (not ignored)
-- changes (but `excludes`, as M.add_all), as a commit on `coral/<run-id>/base` (HEAD itself
-- when nothing is changed). Runs
-- git on a copy of the user's index (GIT_INDEX_FILE), so the user's index keeps what it had;
-- the copy keeps its stat data, so only changed files are hashed. `scratch`: a directory of
-- coral's for the copy. Returns the commit id, or nil and an error.
function M.capture_base(top, run_id, scratch, excludes)
  local head = git.run(top, { "rev-parse", "--verify", "-q", "HEAD^{commit}" })
  head = head and trim(head) or nil
  local index = scratch .. "/base.index"
  os.remove(index)
  local user_index = git_path(top, "index")
  local copied = user_index and head and fsutil.read(user_index)
  local env = { GIT_INDEX_FILE = index }
  if copied then
    assert(fsutil.write_file(index, copied, tonumber("600", 8)))
  else
    local _, err = git.run(top, head and { "read-tree", head } or { "read-tree", "--empty" }, env)
    if err then return nil, err end
  end
  local function finish(...)
    os.remove(index)
    return ...
  end
  local _, err = git.run(top, M.add_all(top, git.run, excludes), env)
  if err then return finish(nil, err) end
  local tree
  tree, err = git.run(top, { "write-tree" }, env)
  if not tree then return finish(nil, err) end
  tree = trim(tree)
  local base = head
  if not head or trim(git.run(top, { "rev-parse", head .. "^{tree}" }) or "") ~= tree then
    local args = { "commit-tree", tree, "-m", "coral: base of run " .. run_id .. " (HEAD and the uncommitted changes)" }
    if head then table.insert(args, 3, "-p"); table.insert(args, 4, head) end
    base, err = git.run(top, args)
    if not base then return finish(nil, err) end
    base = trim(base)
  end
  local _, uerr = git.run(top, { "update-ref", "refs/heads/" .. M.branch(run_id, "base"), base })
  if uerr then return finish(nil, uerr) end
  return finish(base)
end

--- Inside git.async: the files git reports unmerged in worktree `wt`.
local function conflicted(wt)
  local out = git.await(wt, { "diff", "--name-only", "--diff-filter=U" }) or ""
  local files = {}
  for f in out:gmatch("[^\n]+") do files[#files + 1] = f end
  return files
end

--- Inside git.async: creates the worktree `path` of a task on branch `branch` from `base`,
-- and merges each of `merges` (branch names, in order) into it. `mutex` (git.mutex) guards the
-- repository's shared state. Returns { path, branch, base = commit it started from,
-- conflicts = files (empty: clean) }, or nil and an error.
function M.prepare(top, mutex, path, branch, base, merges)
  local _, err = mutex:with(function()
    -- a worktree left by an earlier attempt or session is replaced
    if uv.fs_stat(path) then git.await(top, { "worktree", "remove", "--force", path }) end
    git.await(top, { "worktree", "prune" })
    return git.await(top, { "worktree", "add", "--quiet", "-B", branch, path, base })
  end)
  if err then return nil, err end
  for _, m in ipairs(merges) do
    local _, merr = git.await(path, { "merge", "--quiet", "--no-ff", "--no-edit", "-m", "coral: merge " .. m, m })
    if merr then
      local files = conflicted(path)
      if #files == 0 then return nil, merr end   -- not a conflict: something else went wrong
      return { path = path, branch = branch, base = base, conflicts = files, merging = m }
    end
  end
  local start = git.await(path, { "rev-parse", "HEAD" })
  return { path = path, branch = branch, base = start and trim(start) or base, conflicts = {} }
end

--- Inside git.async: commits everything that changed in worktree `path` but `excludes` (as
-- M.add_all; nothing to commit leaves the branch where it is), by `coral <task-id>`. Returns the branch's commit id and
-- whether a commit was made, or nil and an error.
function M.commit(path, task_id, message, excludes)
  local _, err = git.await(path, M.add_all(path, git.await, excludes))
  if err then return nil, err end
  local _, changed = git.await(path, { "diff", "--cached", "--quiet" })
  local made = false
  if changed then
    local _, cerr = git.await(path, { "commit", "--quiet", "--no-verify", "-m", message },
                              { GIT_AUTHOR_NAME = "coral " .. task_id })
    if cerr then return nil, cerr end
    made = true
  end
  local head, herr = git.await(path, { "rev-parse", "HEAD" })
  if not head then return nil, herr end
  return trim(head), made
end

--- Files changed, lines added and removed between two commits: { files = n, added = n,
-- removed = n, stat = `git diff --stat` text }. Blocking (git.run) unless `await`.
function M.diffstat(top, from, to, await)
  local run = await and git.await or git.run
  local numstat = run(top, { "diff", "--numstat", from, to }) or ""
  local out = { files = 0, added = 0, removed = 0 }
  for a, r in numstat:gmatch("(%S+)\t(%S+)\t[^\n]*") do
    out.files = out.files + 1
    out.added = out.added + (tonumber(a) or 0)
    out.removed = out.removed + (tonumber(r) or 0)
  end
  out.stat = run(top, { "diff", "--stat", from, to }) or ""
  return out
end

--- Merges `branches` (in order) onto `base` as the run's result branch `coral/<run-id>/result`,
-- in a worktree of its own at `path` (removed after). Blocking: after the run's loop. Returns
-- the result's commit id, or nil, an error, and the conflicting files.
function M.result(top, run_id, path, base, branches)
  local branch = M.branch(run_id, "result")
  local mutex = git.mutex()
  local out
  git.async(function()
    local ws, err = M.prepare(top, mutex, path, branch, base, branches)
    if not ws then return nil, err end
    if #ws.conflicts > 0 then
      git.await(path, { "merge", "--abort" })
      return nil, string.format("merging %s into %s conflicts in %s", ws.merging, branch,
                                table.concat(ws.conflicts, ", ")), ws.conflicts
    end
    return trim(git.await(path, { "rev-parse", "HEAD" }) or "")
  end, function(commit, err, files) out = { commit, err, files } end)
  while not out do uv.run("once") end
  M.remove(top, path)
  return table.unpack(out, 1, 3)
end

--- Lands the tasks' work in the user's current branch: the changes from `base` to `branch`
-- (the run's result; not the user's own uncommitted and untracked changes, which the base
-- holds and the tree still has) applied to the index and the tree, and committed as one commit.
-- Only when no tracked file has uncommitted changes; `patch`: a path of coral's for the diff.
-- Blocking. Returns nil, or what stopped it (nothing touched then).
function M.apply(dir, base, branch, patch)
  local status, err = git.run(dir, { "status", "--porcelain", "--untracked-files=no" })
  if not status then return err end
  local again = "; then: git diff " .. base .. " " .. branch .. " | git apply --index"
  if status ~= "" then return "the working tree has uncommitted changes; commit or stash them" .. again end
  local diff, derr = git.run(dir, { "diff", "--binary", base, branch })
  if not diff then return derr end
  if diff == "" then return nil end
  assert(fsutil.write_file(patch, diff, tonumber("600", 8)))
  local _, cerr = git.run(dir, { "apply", "--check", "--index", patch })
  if cerr then return cerr .. " (nothing was changed" .. again .. " after resolving)" end
  local _, aerr = git.run(dir, { "apply", "--index", patch })
  if aerr then return aerr end
  local _, merr = git.run(dir, { "commit", "--quiet", "--no-verify", "-m", "coral: the work of " .. branch })
  return merr
end

--- The runs that left workspaces in repository `top` (worktrees under `worktrees_dir`, a
-- project's .coral/worktrees): run id -> { branches = { { name, commit } }, worktrees = { path } },
-- and the run ids, sorted. Blocking.
function M.list(top, worktrees_dir)
  local runs, ids = {}, {}
  local function run_of(id)
    if not runs[id] then
      runs[id] = { branches = {}, worktrees = {} }
      ids[#ids + 1] = id
    end
    return runs[id]
  end
  local refs = git.run(top, { "for-each-ref", "--format=%(refname:short) %(objectname:short)", "refs/heads/coral/" }) or ""
  for name, commit in refs:gmatch("(coral/[^ \n]+) (%x+)") do
    local id, rest = name:match("^coral/([^/]+)/(.+)$")
    if id then table.insert(run_of(id).branches, { name = rest, commit = commit }) end
  end
  local list = git.run(top, { "worktree", "list", "--porcelain" }) or ""
  local prefix = worktrees_dir .. "/"
  for path in list:gmatch("worktree ([^\n]+)") do
    if path:sub(1, #prefix) == prefix then
      local id = path:sub(#prefix + 1):match("^([^/]+)/")
      if id then table.insert(run_of(id).worktrees, path) end
    end
  end
  table.sort(ids)
  return runs, ids
end

--- Removes what run `run_id` left in repository `top`: its worktrees under `worktrees_dir` and
-- its branches (refs/heads/coral/<run-id>/...). Blocking. Returns the count of each removed.
function M.prune(top, worktrees_dir, run_id)
  local runs = M.list(top, worktrees_dir)
  local r = runs[run_id] or { branches = {}, worktrees = {} }
  for _, path in ipairs(r.worktrees) do git.run(top, { "worktree", "remove", "--force", path }) end
  git.run(top, { "worktree", "prune" })
  os.remove(worktrees_dir .. "/" .. run_id)
  for _, b in ipairs(r.branches) do git.run(top, { "update-ref", "-d", "refs/heads/" .. M.branch(run_id, b.name) }) end
  return #r.worktrees, #r.branches
end

--- Removes a worktree (its branch stays). Blocking.
function M.remove(top, path)
  git.run(top, { "worktree", "remove", "--force", path })
  git.run(top, { "worktree", "prune" })
end

return M
