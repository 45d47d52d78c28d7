-- Workspaces as a user meets them, through the real binary and real git: tasks in worktrees of
-- their own, a dependent that starts from exactly its dependencies' work, the user's tree left
-- as it was, conflicts named, --apply, and a resume after kill -9.
local H = require "spec.helper"
local uv = require "luv"

local function sh(dir, cmd)
  local ok = os.execute("cd '" .. dir .. "' && (" .. cmd .. ") >/dev/null 2>&1")
  assert(ok, cmd)
end

local function git(dir, args)
  local r = H.run(args, { exe = "/usr/bin/git", cwd = dir })
  return r.code == 0 and r.stdout or nil, r.stderr
end

-- A repository with a commit, an uncommitted change and an untracked file.
local function repo()
  local dir = H.tmpdir()
  sh(dir, "git init -q -b main . && echo base > readme.txt && git add . && " ..
          "git -c user.name=u -c user.email=u@x commit -qm init")
  H.write_file(dir .. "/readme.txt", "base\nmy uncommitted line\n")
  H.write_file(dir .. "/notes.txt", "untracked\n")
  return dir
end

-- How many worktrees the repository has (its own main one included).
local function worktrees(dir)
  return #(git(dir, { "worktree", "list" }):gsub("[^\n]", ""))
end

local function newest_run(dir)
  local runs = H.entries(dir .. "/.coral/runs")
  return runs[#runs]
end

local PLAN = [[
local coral = require "coral"
local t = coral.task
return coral.plan({
  t("backend", "api", { id = "backend", cmd = "echo api > api.txt; cat notes.txt" }),
  t("frontend", "ui", { id = "frontend", cmd = "echo ui > ui.txt; grep -c uncommitted readme.txt" }),
  t("qa", "check both", { id = "qa", depends_on = { "backend", "frontend" },
    cmd = "cat api.txt ui.txt > qa.txt" }),
}, { workspace = "worktree" })
]]

describe("workspaces", function()
  it("give each task a worktree; a dependent starts from both results; the user's tree stays as it was", function()
    local dir = repo()
    H.write_file(dir .. "/plan.lua", PLAN)
    local index = H.read_file(dir .. "/.git/index")
    local head = git(dir, { "rev-parse", "HEAD" })
    local r = H.run { dir .. "/plan.lua", "x", "--dir", dir }
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local id = newest_run(dir)
    assert.matches("Result%s+coral/" .. id:gsub("%-", "%%-") .. "/result", r.stdout)
    -- the user's index, HEAD, branch and files: as they were; no task file landed in the tree
    assert.are.equal(index, H.read_file(dir .. "/.git/index"))
    assert.are.equal(head, git(dir, { "rev-parse", "HEAD" }))
    assert.are.equal("main\n", git(dir, { "branch", "--show-current" }))
    assert.are.equal("base\nmy uncommitted line\n", H.read_file(dir .. "/readme.txt"))
    assert.is_nil(uv.fs_stat(dir .. "/api.txt"))
    -- the tasks saw the user's uncommitted and untracked changes
    assert.are.equal("untracked\n", H.read_file(dir .. "/.coral/runs/" .. id .. "/tasks/backend/attempt-1.out"))
    assert.are.equal("1\n", H.read_file(dir .. "/.coral/runs/" .. id .. "/tasks/frontend/attempt-1.out"))
    -- the result holds all three tasks' work, and not coral's coordination files
    local result = "coral/" .. id .. "/result"
    assert.are.equal("api\nui\n", git(dir, { "show", result .. ":qa.txt" }))
    assert.is_nil(git(dir, { "show", result .. ":scratchpad.md" }))
    assert.is_nil(git(dir, { "show", result .. ":activity_tracker.md" }))
    -- each task's branch and what it changed are in the summary
    local summary = require("cjson").decode(H.read_file(dir .. "/.coral/runs/" .. id .. "/summary.json"))
    assert.are.equal("coral/" .. id .. "/task/qa", summary.results.qa.branch)
    assert.are.equal(1, summary.results.qa.files_changed)
    assert.are.equal(result, summary.workspace.result_branch)
    -- the report's Changes section: each task's branch and diff stat, and the result
    local report = H.run { "report", "--dir", dir }
    assert.are.equal(0, report.code, report.stderr)
    local html = H.read_file(dir .. "/.coral/runs/" .. id .. "/report.html")
    assert.matches('<section id="changes">', html)
    assert.matches("<code>coral/" .. id:gsub("%-", "%%-") .. "/task/qa</code></td><td><code>%x+</code></td><td>1</td>" ..
                   '<td class="added">%+2</td>', html)
    assert.matches("Result: <code>" .. result:gsub("%-", "%%-") .. "</code>", html)
        -- succeeded tasks' worktrees are gone, their branches stay
    assert.are.equal(1, worktrees(dir))
    assert.truthy(git(dir, { "rev-parse", "--verify", "coral/" .. id .. "/task/backend" }))
  end)

  it("name the files two dependencies both changed, as the task's on_conflict says", function()
    local dir = repo()
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan({
  t("a", "a", { id = "x", cmd = "echo x > readme.txt" }),
  t("b", "b", { id = "y", cmd = "echo y > readme.txt" }),
  t("c", "c", { id = "fails", depends_on = { "x", "y" }, on_conflict = "fail", cmd = "true" }),
  t("qa-testing", "merge them", { id = "agent", depends_on = { "x", "y" }, driver = "prompt" }),
}, { workspace = "worktree" })
]])
    local r = H.run { dir .. "/plan.lua", "x", "--dir", dir }
    assert.are.equal(1, r.code)
    assert.matches("fails: merge conflict in readme%.txt %(merging coral/[^ ]+/task/y", r.stdout)
    -- an agent task starts in the conflicted worktree, told so first; its work is refused while
    -- conflict markers remain
    local id = newest_run(dir)
    local prompt = H.read_file(dir .. "/.coral/runs/" .. id .. "/tasks/agent/prompt.md")
    assert.matches("^## First: resolve the merge conflicts", prompt)
    -- each dependency's commit and diff stat against the base
    assert.matches("## x %(a%)\n\nIts work, merged into your worktree: commit %x+ on coral/[^ ]+/task/x, against the " ..
                   "base:\n\n readme%.txt | %d+ %+*%-*\n 1 file changed", prompt)
    assert.matches("\n%- readme%.txt\n", prompt)
    assert.matches("agent: commit of its worktree failed: conflict markers left in readme%.txt", r.stdout)
  end)

  it("--apply merges the result into the user's branch when its tree is clean, and refuses otherwise", function()
    local dir = repo()
    sh(dir, "git add -A && git -c user.name=u -c user.email=u@x commit -qm mine")
    H.write_file(dir .. "/plan.lua", PLAN:gsub("grep %-c uncommitted readme.txt", "true"))
    local r = H.run { dir .. "/plan.lua", "x", "--dir", dir, "--apply", "--quiet" }
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("Applied", r.stdout)
    assert.are.equal("api\nui\n", H.read_file(dir .. "/qa.txt"))
    H.write_file(dir .. "/readme.txt", "dirty\n")
    r = H.run { dir .. "/plan.lua", "x", "--dir", dir, "--apply", "--quiet" }
    assert.are.equal(1, r.code)
    assert.matches("%-%-apply: the working tree has uncommitted changes", r.stderr)
    assert.are.equal("dirty\n", H.read_file(dir .. "/readme.txt"))
  end)

  it("are refused outside a git work tree when asked for, and are not used for commands in auto", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/plan.lua", PLAN)
    local r = H.run { dir .. "/plan.lua", "x", "--dir", dir }
    assert.are.equal(2, r.code)
    assert.matches("not inside a git work tree", r.stderr)
    assert.is_nil(uv.fs_stat(dir .. "/.coral/runs"))
    local git_dir = repo()
    H.write_file(git_dir .. "/plan.lua", "return { require('coral').task { id = 'c', cmd = 'echo hi > hi.txt' } }")
    r = H.run { git_dir .. "/plan.lua", "x", "--dir", git_dir, "--quiet" }
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("hi\n", H.read_file(git_dir .. "/hi.txt"))   -- a command shares the project dir
  end)

  it("resume after kill -9: no git lock left, finished work kept, the result complete", function()
    local dir = repo()
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan({
  t("a", "a", { id = "slow", cmd = "sleep 1.5; echo slow > slow.txt" }),
  t("b", "b", { id = "quick", cmd = "echo quick > quick.txt; echo once >> ]] .. dir .. [[/quick-ran" }),
  t("c", "c", { id = "join", depends_on = { "slow", "quick" }, cmd = "cat slow.txt quick.txt > join.txt" }),
}, { workspace = "worktree" })
]])
    local p = H.start { dir .. "/plan.lua", "x", "--dir", dir, "--quiet" }
    H.wait_until(function() return H.read_file(dir .. "/quick-ran") ~= nil end)
    uv.sleep(300)
    uv.kill(p.pid, "sigkill")
    H.wait_for(p)
    local r = H.run { "resume", "--dir", dir, "--quiet" }
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("once\n", H.read_file(dir .. "/quick-ran"))
    local id = newest_run(dir)
    assert.are.equal("slow\nquick\n", git(dir, { "show", "coral/" .. id .. "/result:join.txt" }))
    local locks = H.run({ dir .. "/.git", "-name", "*.lock" }, { exe = "/usr/bin/find" })
    assert.are.equal("", locks.stdout)
    assert.are.equal(1, worktrees(dir))
  end)

  it("are listed by coral workspaces and removed by --prune", function()
    local dir = repo()
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
return coral.plan({ coral.task { id = "ok", cmd = "echo ok > ok.txt" },
                    coral.task { id = "bad", cmd = "echo half > half.txt; exit 3", retries = 0 } }, { workspace = "worktree" })
]])
    assert.are.equal(1, H.run({ dir .. "/plan.lua", "x", "--dir", dir, "--quiet" }).code)
    local id = newest_run(dir)
    local r = H.run { "workspaces", "--dir", dir }
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("run " .. id:gsub("%-", "%%-") .. "\n", r.stdout)
    assert.matches("task%s+%x+%s+coral/[^\n]+/task/ok\n", r.stdout)
    assert.matches("worktree [^\n]*/%.coral/worktrees/[^\n]+/bad\n", r.stdout)   -- a failed task's stays
    assert.are.equal(2, H.run({ "workspaces", "--dir", dir, "--prune", "--older-than", "soon" }).code)
    r = H.run { "workspaces", "--dir", dir, "--prune", "--older-than", "1d" }
    assert.are.equal("", r.stdout)   -- it is younger
    r = H.run { "workspaces", "--dir", dir, "--prune" }
    assert.matches("1 worktree, %d branches removed", r.stdout)
    assert.are.equal("", git(dir, { "for-each-ref", "refs/heads/coral/" }))
    assert.are.equal(1, worktrees(dir))
  end)

  it("start eight worktree tasks at once, and Ctrl-C leaves no git lock; resume finishes", function()
    local dir = repo()
    local tasks = {}
    for i = 1, 8 do
      tasks[i] = string.format('coral.task { id = "t%d", cmd = "echo %d > f%d.txt; sleep 1" }', i, i, i)
    end
    H.write_file(dir .. "/plan.lua", "local coral = require 'coral'\nreturn coral.plan({ " .. table.concat(tasks, ", ") ..
      ", coral.task { id = 'all', depends_on = { 't1','t2','t3','t4','t5','t6','t7','t8' }, cmd = 'cat f*.txt > all.txt' } }," ..
      " { workspace = 'worktree' })\n")
    local p = H.start { dir .. "/plan.lua", "x", "--dir", dir, "--max-workers", "8", "--no-report" }
    -- interrupted while the eight run (their worktrees made, their commands sleeping)
    H.wait_until(function()
      local j = H.read_file(dir .. "/.coral/runs/" .. (newest_run(dir) or "") .. "/journal.jsonl") or ""
      return select(2, j:gsub('"event":"start"', "")) == 8
    end, 60)
    uv.kill(p.pid, "sigint")
    assert.are.equal(130, H.wait_for(p, 30))
    local out = table.concat(p.output)
    assert.is_nil(out:find("index.lock", 1, true), out)
    local locks = H.run({ dir .. "/.git", "-name", "*.lock" }, { exe = "/usr/bin/find" })
    assert.are.equal("", locks.stdout)
    local r = H.run { "resume", "--dir", dir, "--quiet" }
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local id = newest_run(dir)
    assert.are.equal("1\n2\n3\n4\n5\n6\n7\n8\n", git(dir, { "show", "coral/" .. id .. "/result:all.txt" }))
  end)

  it("put a resolver of the role on_conflict names before a task, which then starts from the resolved work", function()
    local dir = repo()
    assert(os.execute("mkdir -p '" .. dir .. "/.coral/agents' '" .. dir .. "/.coral/drivers'"))
    -- a role whose driver (a project's own) resolves by keeping both sides' lines
    H.write_file(dir .. "/.coral/agents/merger.md", "---\nname: merger\ndriver: keep-both\n---\nYou merge.\n")
    H.write_file(dir .. "/.coral/drivers/keep_both.lua", [=[
return { name = "keep-both", edits_files = true,
  prepare = function() return { cmd = "grep -v '^[<=>]\\{7\\}' readme.txt > r.tmp && mv r.tmp readme.txt && echo merged" } end }
]=])
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan({
  t("a", "a", { id = "x", cmd = "echo x > readme.txt" }),
  t("b", "b", { id = "y", cmd = "echo y > readme.txt" }),
  t("c", "after both", { id = "z", depends_on = { "x", "y" }, on_conflict = "merger", cmd = "cat readme.txt > z.txt" }),
  t("d", "no conflict", { id = "w", depends_on = { "x", "q" }, on_conflict = "merger", cmd = "true" }),
  t("q", "q", { id = "q", cmd = "echo q > q.txt" }),
}, { workspace = "worktree" })
]])
    local r = H.run { dir .. "/plan.lua", "x", "--dir", dir, "--quiet" }
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local id = newest_run(dir)
    local summary = require("cjson").decode(H.read_file(dir .. "/.coral/runs/" .. id .. "/summary.json"))
    assert.are.equal(7, summary.tasks)   -- two resolvers were put in
    assert.are.equal("succeeded", summary.results["z.resolve"].status)
    assert.are.equal("x\ny\n", git(dir, { "show", "coral/" .. id .. "/task/z:z.txt" }))
    -- the resolver before w had nothing to resolve: it ended at once, without its agent
    assert.matches("nothing to resolve", H.read_file(summary.results["w.resolve"].output_file))
    assert.are.equal(0, summary.results["w.resolve"].exit_code)
    -- a role that does not exist is refused before anything is written
    H.write_file(dir .. "/plan.lua", (H.read_file(dir .. "/plan.lua"):gsub('"merger"', '"mergr"', 1)))
    r = H.run { dir .. "/plan.lua", "x", "--dir", dir, "--quiet" }
    assert.are.equal(2, r.code)
    assert.matches("on_conflict names no agent role 'mergr' %(did you mean 'merger'%?%)", r.stderr)
  end)
end)
