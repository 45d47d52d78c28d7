-- Hostile ground: a project dir where coral's own files and directories are replaced by
-- symbolic links (dangling, or into a directory outside the project), files, FIFOs, or that
-- cannot be written. Each setup goes through the real binary with every command it concerns,
-- each under a deadline, and must give its exit code and a message naming the path, and must
-- write nothing outside the project (docs/runner.md, "What coral refuses").
--
-- To add a setup, add an entry to CASES; the harness below needs nothing else.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"

local DIR_MODE = tonumber("755", 8)

-- The commands a setup can be met with: each gives the arguments for the project in g.p.
-- `run` runs g.recipe (one command task); `resume` continues the run g.run_id.
local COMMANDS = {
  note = function(g) return { "note", "hello", "--dir", g.p } end,
  log = function(g) return { "log", "hello", "--dir", g.p } end,
  run = function(g) return { g.recipe, "x", "--dir", g.p, "--quiet", "--no-report" } end,
  resume = function(g) return { "resume", g.run_id, "--dir", g.p, "--quiet", "--retry-failed" } end,
}

local LINK = " is a symbolic link (coral does not follow it)"

-- One entry per hostile setup:
--   name      what is hostile
--   setup     function(g): makes it in the project dir g.p. g.outside is a directory beside
--             the project holding v.txt, for links to point into; g.link(target, name),
--             g.file(name, text), g.dir(name) and g.coral(args) help (names are relative to g.p)
--   commands  the commands (COMMANDS) that meet it
--   code      the exit code every one of them must give (default 1), or command -> code
--   says      text each must print on stderr, or command -> text; "{p}" is the project dir,
--             "{key}" any other string the setup left in g
--   skip      function(g): why the setup cannot be made here (nil: it can); the case is then pending
local CASES = {
  { name = "scratchpad.md is a dangling link",
    setup = function(g) g.link("/nonexistent/scratchpad.md", "scratchpad.md") end,
    commands = { "note", "run" }, says = "{p}/scratchpad.md" .. LINK },
  { name = "scratchpad.md links to a file outside the project",
    setup = function(g) g.link("../outside/v.txt", "scratchpad.md") end,
    commands = { "note", "run" }, says = "{p}/scratchpad.md" .. LINK },
  { name = "activity_tracker.md is a dangling link",
    setup = function(g) g.link("/nonexistent/activity.md", "activity_tracker.md") end,
    commands = { "log", "run" }, says = "{p}/activity_tracker.md" .. LINK },
  { name = "activity_tracker.md links to a file outside the project",
    setup = function(g) g.link("../outside/v.txt", "activity_tracker.md") end,
    commands = { "log", "run" }, says = "{p}/activity_tracker.md" .. LINK },
  { name = ".coral/project_state.yaml is a dangling link",
    setup = function(g) g.dir(".coral"); g.link("/nonexistent/state.yaml", ".coral/project_state.yaml") end,
    commands = { "run" }, says = "{p}/.coral/project_state.yaml" .. LINK },
  { name = ".coral/project_state.yaml links to a file outside the project",
    setup = function(g) g.dir(".coral"); g.link("../../outside/v.txt", ".coral/project_state.yaml") end,
    commands = { "run" }, says = "{p}/.coral/project_state.yaml" .. LINK },
  { name = ".coral is a link to a directory outside the project",
    setup = function(g) g.link("../outside", ".coral") end,
    commands = { "note", "log", "run" }, says = "{p}/.coral" .. LINK },
  { name = ".coral is a dangling link",
    setup = function(g) g.link("/nonexistent/coral-dir", ".coral") end,
    commands = { "note", "log", "run" }, says = "{p}/.coral" .. LINK },
  { name = ".coral/runs links outside the project",
    setup = function(g) g.dir(".coral"); g.link("../../outside", ".coral/runs") end,
    commands = { "run" }, says = "{p}/.coral/runs" .. LINK },
  { name = "a lock file links outside the project",
    setup = function(g) g.dir(".coral"); g.dir(".coral/locks"); g.link("../../../outside/v.txt", ".coral/locks/scratchpad.md.lock") end,
    commands = { "note", "run" }, says = "{p}/.coral/locks/scratchpad.md.lock" .. LINK },
  { name = ".coral/locks links outside the project",
    setup = function(g) g.dir(".coral"); g.link("../../outside", ".coral/locks") end,
    commands = { "note", "log", "run" }, says = "{p}/.coral/locks" .. LINK },
  { name = "a run dir is a link outside the project (resumed)",
    setup = function(g)
      -- two real runs, the first then moved outside and linked back in its place
      g.coral { g.recipe, "x", "--dir", g.p, "--quiet", "--no-report", "--no-retry" }
      g.coral { g.recipe, "x", "--dir", g.p, "--quiet", "--no-report", "--no-retry" }
      local runs = H.entries(g.p .. "/.coral/runs")
      assert(#runs == 2, "the setup's runs did not both start")
      g.run_id = runs[1]
      assert(uv.fs_rename(g.p .. "/.coral/runs/" .. g.run_id, g.outside .. "/run"))
      g.link("../../../outside/run", ".coral/runs/" .. g.run_id)
    end,
    commands = { "resume" }, says = "{p}/.coral/runs/{run_id}" .. LINK },
  { name = ".coral is a file",
    setup = function(g) g.file(".coral", "not a directory\n") end,
    commands = { "note", "log", "run" }, says = "{p}/.coral is not a directory" },
  { name = ".coral/locks is a file",
    setup = function(g) g.dir(".coral"); g.file(".coral/locks", "") end,
    commands = { "note", "log", "run" }, says = "{p}/.coral/locks is not a directory" },
  { name = "scratchpad.md is a FIFO",
    setup = function(g) assert(os.execute("mkfifo " .. g.p .. "/scratchpad.md")) end,
    commands = { "note", "run" }, says = "{p}/scratchpad.md is not a regular file" },
  { name = "the project dir is read-only",
    skip = function(g)
      if os.execute("mount -t tmpfs -o size=1m tmpfs " .. g.p .. " 2>/dev/null") then
        g.mounted = true
        -- a read-only mount: root ignores permission bits, a read-only file system it cannot
        if os.execute("mount -o remount,ro " .. g.p .. " 2>/dev/null") then return nil end
        return "cannot remount a tmpfs read-only here"
      end
      if uv.os_get_passwd().uid == 0 then return "root ignores modes and cannot mount a read-only tmpfs here" end
      return nil
    end,
    setup = function(g)
      if g.mounted then return end
      assert(uv.fs_chmod(g.p, tonumber("555", 8)))
      finally(function() uv.fs_chmod(g.p, DIR_MODE) end)
    end,
    commands = { "note", "log", "run" },
    code = { note = 1, log = 1, run = 2 },   -- a run checks first that it can write there: a usage error
    says = { note = "{p}/.coral", log = "{p}/.coral", run = "project dir {p} is not writable" } },
}

local RECIPE = [[
local coral = require "coral"
return coral.plan({ coral.task("w", "one", { id = "a", cmd = "exit 3" }) })
]]

-- Everything under `dir`: relative name -> "dir", "-> target" or the content.
local function snapshot(dir, into, prefix)
  into, prefix = into or {}, prefix or ""
  local it = uv.fs_scandir(dir)
  while it do
    local name, kind = uv.fs_scandir_next(it)
    if not name then break end
    local path, rel = dir .. "/" .. name, prefix .. name
    if kind == "directory" then
      into[rel] = "dir"
      snapshot(path, into, rel .. "/")
    elseif kind == "link" then
      into[rel] = "-> " .. tostring(uv.fs_readlink(path))
    else
      into[rel] = H.read_file(path) or ("<" .. kind .. ">")
    end
  end
  return into
end

local function fill(text, g)
  return (text:gsub("{(%w[%w_]*)}", function(key) return g[key] end))
end

-- A fresh project dir for one command of a case, and its helpers.
local function ground(case)
  local top = H.tmpdir()
  local g = { p = top .. "/project", outside = top .. "/outside", recipe = top .. "/recipe.lua" }
  uv.fs_mkdir(g.p, DIR_MODE)
  uv.fs_mkdir(g.outside, DIR_MODE)
  H.write_file(g.outside .. "/v.txt", "not coral's\n")
  H.write_file(g.recipe, RECIPE)
  function g.link(target, name) assert(uv.fs_symlink(target, g.p .. "/" .. name)) end
  function g.file(name, text) H.write_file(g.p .. "/" .. name, text) end
  function g.dir(name) assert(uv.fs_mkdir(g.p .. "/" .. name, DIR_MODE)) end
  function g.coral(args) return H.run(args, { timeout = 20 }) end
  local why_not = case.skip and case.skip(g)
  if g.mounted then
    finally(function() assert(os.execute("umount " .. g.p)) end)
  end
  return g, why_not
end

describe("hostile ground", function()
  for _, case in ipairs(CASES) do
    for _, command in ipairs(case.commands) do
      it(string.format("%s: coral %s refuses, names the path, writes nothing outside, does not hang", case.name, command),
        function()
          local g, why_not = ground(case)
          if why_not then
            pending(why_not)
            return
          end
          case.setup(g)
          local before = snapshot(g.outside)
          -- the deadline: coral used to spin forever on a dangling link, deaf to signals
          local r = H.run(COMMANDS[command](g), { timeout = 20 })
          local code = type(case.code) == "table" and case.code[command] or case.code or 1
          local says = fill(type(case.says) == "table" and case.says[command] or case.says, g)
          assert.are.equal(code, r.code, r.stdout .. r.stderr)
          assert.truthy(r.stderr:find(says, 1, true), "expected on stderr: " .. says .. "\ngot: " .. r.stderr)
          assert.are.equal(1, select(2, r.stderr:gsub("\n", "")), "one line: " .. r.stderr)
          assert.are.same(before, snapshot(g.outside), "something was written outside the project")
        end)
    end
  end

  it("a clean project of the same shape works: the refusals above are about the setups", function()
    local g = ground({})
    assert.are.equal(0, H.run(COMMANDS.note(g), { timeout = 20 }).code)
    assert.are.equal(0, H.run(COMMANDS.log(g), { timeout = 20 }).code)
    assert.are.equal(1, H.run(COMMANDS.run(g), { timeout = 20 }).code, "the recipe's one task fails on purpose")
    -- the lock files are under .coral/, not in the user's tree
    assert.are.same({ ".coral", "activity_tracker.md", "scratchpad.md" }, H.entries(g.p))
    assert.are.same({ "activity_tracker.md.lock", "project_state.yaml.lock", "scratchpad.md.lock" },
                    H.entries(g.p .. "/.coral/locks"))
    assert.are.same({ ["v.txt"] = "not coral's\n" }, snapshot(g.outside))
  end)
end)
