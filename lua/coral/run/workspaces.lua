--- A run's workspaces: which tasks work in a git worktree of their own, and what the run does
-- with them — the base captured at its start, each worktree task's attempt started from the
-- base merged with its dependencies' results, its success committed, the results of the tasks
-- nothing depends on merged at the end into coral/<run-id>/result. The git is in
-- coral.workspace; this is the runner's policy over it.
--
-- Branches (refs/heads/...): coral/<run-id>/base, coral/<run-id>/result,
-- coral/<run-id>/task/<id> (a task's result), coral/<run-id>/attempt/<id>/<n> (what a failed
-- attempt left). A task's branch is not coral/<run-id>/<id> as such: a task called `base` or
-- `result` would meet the run's own, and git cannot hold both a/b and a/b/c.
local fsutil = require "coral.fsutil"
local git = require "coral.workspace.git"
local uv = require "luv"
local workspace = require "coral.workspace"

local M = {}

--- The words of the `workspace` option (runner, plan, task).
M.KINDS = { "auto", "worktree", "shared" }
--- The words of a task's `on_conflict`, besides a role id.
M.ON_CONFLICT = { "fail", "agent" }

-- A task id as one component of a ref name: every byte but a letter, a digit, `-` and `_` as
-- %XX (so dots, slashes and `@{` never reach git, and two ids never meet).
local function ref_part(id)
  return (id:gsub("[^%w%-_]", function(c) return string.format("%%%02X", c:byte()) end))
end

--- The branch of task `id` in run `run_id`.
function M.task_branch(run_id, id)
  return workspace.branch(run_id, "task/" .. ref_part(id))
end

-- Does `task`, run by `driver`, want a worktree? "auto": an agent that edits files does (a
-- driver says so with `edits_files`; agent CLIs do unless they say not), commands and the
-- built-in drivers share the project dir.
local function wanted(run, task, driver)
  local kind = task.workspace or run.plan.workspace or run.runner.workspace
  if kind == "shared" then return false, kind end
  if kind == "worktree" then return true, kind end
  if driver.edits_files ~= nil then return driver.edits_files, kind end
  return driver.program ~= nil, kind
end

--- Before anything is written: which tasks of `run` get a worktree (st.workspace = true).
-- Raises a user error for `worktree` outside a git work tree. Needs the run's drivers (called
-- from the preflight).
function M.plan(run, driver_of)
  local any, top_checked, top = false, false, nil
  for _, t in ipairs(run.plan.tasks) do
    local want, kind = wanted(run, t, driver_of(t))
    if want then
      if not top_checked then
        top, top_checked = workspace.toplevel(run.project_dir), true
      end
      if top then
        run.state[t.id].workspace = true
        any = true
      elseif kind == "worktree" then
        require("coral.check").user_error(string.format("task '%s' wants a worktree (workspace = \"worktree\"), " ..
          "but the project dir %s is not inside a git work tree (git init, or --workspace shared)",
          t.id, run.project_dir), t.where)
      end
    end
  end
  if any then run.workspace = { top = top } end
end

--- Before the run's graph is built: for each task whose on_conflict names a role (not "fail" or
-- "agent") and that will work in a worktree, a resolver task of that role is put before it: it
-- depends on the task's dependencies, starts from their merged work, resolves what conflicts
-- (at once and without an agent when nothing does), and the task then depends on it too, so
-- that it starts from the resolved work. Raises a user error for a role that does not exist.
function M.insert_resolvers(run)
  local plan = run.plan
  local top_checked, top = false, nil
  local tasks = { table.unpack(plan.tasks) }
  for _, t in ipairs(tasks) do
    local role = t.on_conflict
    local kind = t.workspace or plan.workspace or run.runner.workspace
    if role and role ~= "fail" and role ~= "agent" and not t.resolver_id and kind ~= "shared"
       and #t.depends_on >= 2 then   -- one dependency merges onto the base it came from: no conflict
      if not top_checked then top, top_checked = workspace.toplevel(run.project_dir), true end
      if top then
        if not (run.roles and run.roles({ agent = role, id = t.id })) then
          local known = require("coral.agents").load(run.project_dir).order
          require("coral.check").user_error(string.format("task '%s': on_conflict names no agent role '%s'%s " ..
            "(\"fail\", \"agent\", or a role: 'coral agents' lists them)", t.id, role,
            require("coral.check").did_you_mean(role, known)), t.where)
        end
        local id = t.id .. ".resolve"
        while plan.by_id[id] do id = id .. "-2" end
        local r = require("coral.plan").task {
          id = id, agent = role, depends_on = { table.unpack(t.depends_on) }, workspace = "worktree",
          on_conflict = "agent",
          task = string.format("Resolve the merge conflicts between the work of %s, so that task '%s' (%s) " ..
            "starts from work that fits together. Change nothing else.", table.concat(t.depends_on, ", "), t.id,
            t.task ~= "" and t.task or t.agent),
        }
        r.where, r.resolves = t.where, t.id
        t.resolver_id = id
        t.depends_on = { id, table.unpack(t.depends_on) }   -- its branch first: the rest merge as no-ops
        for i, pt in ipairs(plan.tasks) do
          if pt == t then table.insert(plan.tasks, i, r); break end
        end
        plan.by_id[id] = r
        for _, phase in ipairs(plan.declared_phases or {}) do
          for i, pt in ipairs(phase) do
            if pt.id == t.id then table.insert(phase, i, r); break end
          end
        end
        plan.analysis, plan.checked_graph, plan.dependents_index = nil, nil, nil
      end
    end
  end
end

--- When the run's records are open: captures the base (or, on resume, takes the one the run
-- captured then). Raises an error when git fails (the run stops with it).
function M.open(run, resuming)
  local ws = run.workspace
  if not ws then return end
  ws.mutex = git.mutex()
  ws.dir = run.project_dir .. "/.coral/worktrees/" .. run.records.id
  -- where the project dir is inside the repository: a task works there in its worktree
  -- (git names the top by its real path: compare real paths)
  local real = uv.fs_realpath(run.project_dir) or run.project_dir
  ws.subdir = real == ws.top and "" or real:sub(#ws.top + 2)
  assert(workspace.exclude_coral(ws.top))
  -- the coordination files are coral's, written by every run: neither the base nor a task's work
  ws.excludes = {}
  for _, key in ipairs { "scratchpad", "activity" } do
    local path = real .. "/" .. run.records.paths[key]:match("[^/]+$")
    if path:sub(1, #ws.top + 1) == ws.top .. "/" then ws.excludes[#ws.excludes + 1] = path:sub(#ws.top + 2) end
  end
  local base_ref = workspace.branch(run.records.id, "base")
  local base = resuming and git.run(ws.top, { "rev-parse", "--verify", "-q", base_ref })
  if base then
    ws.base = base:match("%x+")
  else
    ws.base = assert(workspace.capture_base(ws.top, run.records.id, run.records.dir, ws.excludes))
  end
end

--- The branches a worktree task starts from: its dependencies' results, in the plan's order.
local function merges_of(run, st)
  local out = {}
  for _, d in ipairs(st.task.depends_on) do
    local dst = run.state[d]
    if dst.branch then out[#out + 1] = dst.branch end
  end
  return out
end

-- Inside git.async: commits what an earlier attempt left in the worktree to the attempt's own
-- branch, for inspection, before the worktree is made anew.
local function keep_attempt(run, st, path, n)
  if not fsutil.read(path .. "/.git") then return end
  local status = git.await(path, { "status", "--porcelain" })
  if not status or status == "" then return end
  local commit = workspace.commit(path, st.task.id, string.format("coral: attempt %d of task %s (failed)", n,
                                                                   st.task.id), run.workspace.excludes)
  if commit then
    git.await(run.workspace.top, { "branch", "-f",
      workspace.branch(run.records.id, "attempt/" .. ref_part(st.task.id) .. "/" .. n), commit })
  end
end

--- Prepares the worktree of `st`'s attempt `a` on the loop, then calls done() or done(err).
-- A conflict follows the task's on_conflict: "fail" ends the attempt naming the files; "agent"
-- (the default) starts it in the conflicted worktree, its prompt opening with the files.
function M.prepare(run, st, a, done)
  local ws, task = run.workspace, st.task
  local path = ws.dir .. "/" .. ref_part(task.id)
  local branch = M.task_branch(run.records.id, task.id)
  git.async(function()
    if a.n > 1 then keep_attempt(run, st, path, a.n - 1) end
    local w, err = workspace.prepare(ws.top, ws.mutex, path, branch, ws.base, merges_of(run, st))
    if not w then return err end
    st.worktree = w
    w.cwd = ws.subdir == "" and path or (path .. "/" .. ws.subdir)
    fsutil.mkdirs(w.cwd)
    if #w.conflicts > 0 and (task.on_conflict or "agent") == "fail" then
      return string.format("merge conflict in %s (merging %s into the task's worktree; on_conflict = \"fail\")",
        table.concat(w.conflicts, ", "), w.merging)
    end
    -- what each dependency hands on: its branch, commit and diff stat against this base
    st.handoffs = {}
    for _, d in ipairs(task.depends_on) do
      local dst = run.state[d]
      if dst.branch then
        st.handoffs[d] = { branch = dst.branch, commit = dst.commit,
                           diffstat = git.await(ws.top, { "diff", "--stat", ws.base, dst.commit }) }
      end
    end
    run:emit("worktree", { task = task.id, attempt = a.n, path = path, branch = branch, base = w.base,
                           conflicts = #w.conflicts > 0 and w.conflicts or nil })
    return nil
  end, function(err, raised)
    done(err or raised)
  end)
end

--- The text a conflicted worktree task's prompt opens with, or nil.
function M.prompt_preface(st)
  local w = st.worktree
  if not (w and #w.conflicts > 0) then return nil end
  local lines = { "## First: resolve the merge conflicts in your worktree", "",
    "Your dependencies' results were merged into your working directory, and these files conflict:", "" }
  for _, f in ipairs(w.conflicts) do lines[#lines + 1] = "- " .. f end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Resolve each (keep what both sides meant), remove every conflict marker (<<<<<<<, =======, " ..
    ">>>>>>>), then do your task. coral commits your work when you finish, and refuses it while markers remain."
  return table.concat(lines, "\n") .. "\n\n"
end

-- Inside git.async: the conflicted files of `w` that still hold conflict markers.
local function markers_left(w)
  local left = {}
  for _, f in ipairs(w.conflicts) do
    local text = fsutil.read(w.path .. "/" .. f) or ""
    if text:find("\n<<<<<<< ", 1, true) or text:find("^<<<<<<< ") or text:find("\n>>>>>>> ", 1, true) then
      left[#left + 1] = f
    end
  end
  return left
end

--- On the loop: a worktree task's attempt succeeded; commits its work to its branch, then
-- calls done() or done(err) (the attempt then fails).
function M.commit(run, st, a, done)
  local w, task = st.worktree, st.task
  git.async(function()
    local left = markers_left(w)
    if #left > 0 then return "conflict markers left in " .. table.concat(left, ", ") end
    if #w.conflicts > 0 then
      -- the merge the conflicts came from is concluded by the commit
      local _, err = git.await(w.path, { "add", "-A", "--", "." })
      if err then return err end
    end
    local commit, made = workspace.commit(w.path, task.id, string.format("coral: %s (%s), run %s, attempt %d",
      task.id, task.agent, run.records.id, a.n), run.workspace.excludes)
    if not commit then return made end
    st.branch, st.commit = w.branch, commit
    st.changes = workspace.diffstat(w.path, w.base, commit, true)
    st.changes.committed = made
    return nil
  end, function(err, raised) done(err or raised) end)
end

--- What dependency `d` hands `st` of its worktree, for inputs.json and the prompt: its branch,
-- commit and diff stat against the run's base; nil for a dependency without one.
function M.handoff(st, d)
  return st.handoffs and st.handoffs[d]
end

--- After the run's loop: merges the results of the worktree tasks nothing depends on into
-- coral/<run-id>/result, removes the worktrees of succeeded tasks (failed and interrupted ones
-- stay, for inspection and resume), and returns what the summary says of it: { base, result,
-- branches, error, conflicts }.
function M.finish(run)
  local ws = run.workspace
  if not ws then return nil end
  local has_dependents = {}
  for _, t in ipairs(run.plan.tasks) do
    for _, d in ipairs(t.depends_on) do has_dependents[d] = true end
  end
  local leaves = {}
  for _, t in ipairs(run.plan.tasks) do
    local st = run.state[t.id]
    if st.branch and not has_dependents[t.id] and (st.status == "succeeded" or st.status == "up_to_date") then
      leaves[#leaves + 1] = st.branch
    end
  end
  local out = { base = ws.base, base_branch = workspace.branch(run.records.id, "base") }
  if #leaves > 0 then
    local commit, err, files = workspace.result(ws.top, run.records.id, ws.dir .. "/%result", ws.base, leaves)
    out.result, out.error, out.conflicts = commit, err, files
    out.branch = commit and workspace.branch(run.records.id, "result") or nil
  end
  -- (also the worktree an earlier session of a resumed run left of a task that succeeded then)
  for _, t in ipairs(run.plan.tasks) do
    local st = run.state[t.id]
    local path = ws.dir .. "/" .. ref_part(t.id)
    if st.workspace and st.status == "succeeded" and uv.fs_stat(path) then workspace.remove(ws.top, path) end
  end
  return out
end

return M
