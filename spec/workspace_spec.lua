-- Workspaces' git layer (coral.workspace) against real git: the run's base captured without
-- touching the user's index, working tree or HEAD; worktrees from the base merged with
-- exactly a task's dependencies; commits of what a task changed; conflicts named by file; the
-- result branch; eight worktrees prepared at once.
local H = require("spec.helper").guard(_ENV)
local git = require "coral.workspace.git"
local uv = require "luv"
local ws = require "coral.workspace"

local function sh(dir, cmd)
  assert(os.execute("cd '" .. dir .. "' && (" .. cmd .. ") >/dev/null 2>&1"), cmd)
end

local function out(dir, args)
  return assert(git.run(dir, args))
end

-- A repository with one commit, an uncommitted change, an untracked file and an ignored one.
local function repo()
  local dir = H.tmpdir()
  sh(dir, "git init -q -b main . && printf 'one\\ntwo\\n' > f.txt && printf 'ignored.log\\n' > .gitignore" ..
          " && git add . && git -c user.name=u -c user.email=u@x commit -qm first")
  H.write_file(dir .. "/f.txt", "one\ntwo changed\n")
  H.write_file(dir .. "/new.txt", "untracked\n")
  H.write_file(dir .. "/ignored.log", "noise\n")
  assert(os.execute("mkdir -p '" .. dir .. "/.coral'"))
  return dir
end

-- Runs fn inside git.async and the loop until it is done; returns what it returned.
local function on_loop(fn)
  local result
  git.async(fn, function(...) result = table.pack(...) end)
  while not result do uv.run("once") end
  return table.unpack(result, 1, result.n)
end

describe("coral.workspace", function()
  it("captures the base without touching the user's index, working tree or HEAD", function()
    local dir = repo()
    local top = ws.toplevel(dir)
    assert.are.equal(uv.fs_realpath(dir), top)
    local index_before = H.read_file(dir .. "/.git/index")
    local status_before = out(dir, { "status", "--porcelain" })
    local head_before = out(dir, { "rev-parse", "HEAD" })
    assert(ws.exclude_coral(top))
    local base = assert(ws.capture_base(top, "r1", dir .. "/.coral"))
    assert.are.equal(index_before, H.read_file(dir .. "/.git/index"))
    assert.are.equal(status_before, out(dir, { "status", "--porcelain" }))   -- .coral is excluded, too
    assert.are.equal(head_before, out(dir, { "rev-parse", "HEAD" }))
    assert.are.equal("main\n", out(dir, { "branch", "--show-current" }))
    -- the base holds the uncommitted and untracked changes, not the ignored file
    assert.are.equal("one\ntwo changed\n", out(dir, { "show", base .. ":f.txt" }))
    assert.are.equal("untracked\n", out(dir, { "show", base .. ":new.txt" }))
    assert.is_nil(git.run(dir, { "show", base .. ":ignored.log" }))
    assert.are.equal(base .. "\n", out(dir, { "rev-parse", "coral/r1/base" }))
    assert.are.equal(head_before, out(dir, { "rev-parse", base .. "^" }))
    -- nothing changed: the base is HEAD itself
    local clean = H.tmpdir()
    sh(clean, "git init -q -b main . && echo x > a && git add a && git -c user.name=u -c user.email=u@x commit -qm a")
    assert(os.execute("mkdir -p '" .. clean .. "/.coral'"))
    local clean_head = out(clean, { "rev-parse", "HEAD" }):gsub("%s+$", "")
    assert.are.equal(clean_head, ws.capture_base(clean, "r2", clean .. "/.coral"))
  end)

  it("starts a task from the base merged with its dependencies, commits what it changed, and merges the result", function()
    local dir = repo()
    local top = ws.toplevel(dir)
    assert(ws.exclude_coral(top))
    local base = assert(ws.capture_base(top, "r", dir .. "/.coral"))
    local mutex = git.mutex()
    local wt = dir .. "/.coral/worktrees/r/"
    -- a and b in parallel, each writes its own file
    local results = {}
    for _, id in ipairs { "a", "b" } do
      git.async(function()
        local w = assert(ws.prepare(top, mutex, wt .. id, ws.branch("r", id), base, {}))
        H.write_file(w.path .. "/" .. id .. ".txt", id .. "\n")
        return ws.commit(w.path, id, "coral: task " .. id)
      end, function(commit, made) results[id] = { commit = commit, made = made } end)
    end
    while not (results.a and results.b) do uv.run("once") end
    assert.is_true(results.a.made)
    assert.truthy(results.a.commit:match("^%x+$"), tostring(results.a.commit))
    -- c depends on both: it sees both files, and the user's changes
    local c = on_loop(function()
      local w = assert(ws.prepare(top, mutex, wt .. "c", ws.branch("r", "c"), base,
                                  { ws.branch("r", "a"), ws.branch("r", "b") }))
      assert.are.same({}, w.conflicts)
      assert.are.equal("a\n", H.read_file(w.path .. "/a.txt"))
      assert.are.equal("b\n", H.read_file(w.path .. "/b.txt"))
      assert.are.equal("untracked\n", H.read_file(w.path .. "/new.txt"))
      return ws.commit(w.path, "c", "coral: task c")   -- nothing changed: no commit
    end)
    assert.truthy(c)
    local stat = ws.diffstat(top, base, ws.branch("r", "a"))
    assert.are.same({ 1, 1, 0 }, { stat.files, stat.added, stat.removed })
    local result = assert(ws.result(top, "r", wt .. "_result", base, { ws.branch("r", "c") }))
    assert.are.equal("b\n", out(dir, { "show", result .. ":b.txt" }))
    assert.are.equal(result .. "\n", out(dir, { "rev-parse", "coral/r/result" }))
    for _, id in ipairs { "a", "b", "c" } do ws.remove(top, wt .. id) end
    assert.are.equal("main\n", out(dir, { "branch", "--show-current" }))
    assert.are.equal("one\ntwo changed\n", H.read_file(dir .. "/f.txt"))   -- the user's tree as it was
  end)

  it("names the files two dependencies both changed", function()
    local dir = repo()
    local top = ws.toplevel(dir)
    local base = assert(ws.capture_base(top, "r", dir .. "/.coral"))
    local mutex = git.mutex()
    local wt = dir .. "/.coral/worktrees/r/"
    for _, id in ipairs { "x", "y" } do
      on_loop(function()
        local w = assert(ws.prepare(top, mutex, wt .. id, ws.branch("r", id), base, {}))
        H.write_file(w.path .. "/f.txt", "one\n" .. id .. " was here\n")
        return ws.commit(w.path, id, "coral: task " .. id)
      end)
    end
    local w = on_loop(function()
      return ws.prepare(top, mutex, wt .. "z", ws.branch("r", "z"), base, { ws.branch("r", "x"), ws.branch("r", "y") })
    end)
    assert.are.same({ "f.txt" }, w.conflicts)
    assert.are.equal("coral/r/y", w.merging)
    assert.matches("<<<<<<<", H.read_file(w.path .. "/f.txt"))
    local commit, err, files = ws.result(top, "r", wt .. "_result", base, { ws.branch("r", "x"), ws.branch("r", "y") })
    assert.is_nil(commit)
    assert.matches("conflicts in f.txt", err)
    assert.are.same({ "f.txt" }, files)
    for _, id in ipairs { "x", "y", "z" } do ws.remove(top, wt .. id) end
  end)

  it("prepares eight worktrees at once without meeting git's locks", function()
    local dir = repo()
    local top = ws.toplevel(dir)
    local base = assert(ws.capture_base(top, "r", dir .. "/.coral"))
    local mutex = git.mutex()
    local done, errors = 0, {}
    for i = 1, 8 do
      git.async(function()
        local w, err = ws.prepare(top, mutex, dir .. "/.coral/worktrees/r/t" .. i, ws.branch("r", "t" .. i), base, {})
        if not w then return nil, err end
        H.write_file(w.path .. "/t" .. i, "x\n")
        return ws.commit(w.path, "t" .. i, "coral: task t" .. i)
      end, function(commit, err)
        done = done + 1
        if not commit then errors[#errors + 1] = err end
      end)
    end
    while done < 8 do uv.run("once") end
    assert.are.same({}, errors)
    for i = 1, 8 do ws.remove(top, dir .. "/.coral/worktrees/r/t" .. i) end
    assert.are.equal("", out(dir, { "worktree", "list", "--porcelain" }):gsub("worktree [^\n]*\nHEAD [^\n]*\nbranch [^\n]*\n\n?", "", 1))
  end)
end)
