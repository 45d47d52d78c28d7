-- coral.guard: where the lock file of a coordination file is (the one rule every writer
-- follows), and the check a run makes of every place where coral's own files belong. Through
-- the real binary, spec/hostile_fs_spec.lua; here the rules themselves.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local guard = require "coral.guard"
local records = require "coral.records"

describe("coral.guard", function()
  it("puts every coordination file's lock under .coral/locks/ of its project", function()
    local paths = records.paths("/p")
    assert.are.equal("/p/.coral/locks/scratchpad.md.lock", guard.lock_path("/p", paths.scratchpad))
    assert.are.equal("/p/.coral/locks/activity_tracker.md.lock", guard.lock_path("/p", paths.activity))
    assert.are.equal("/p/.coral/locks/project_state.yaml.lock", guard.lock_path("/p", paths.state))
    assert.are.same({ header = "h", root = "/p", lock = "/p/.coral/locks/scratchpad.md.lock", mkdir = true,
                      dir_mode = tonumber("700", 8) }, guard.coord_opts("/p", paths.scratchpad, { header = "h" }))
  end)

  it("takes a file's directory as its project when only the file is named", function()
    assert.are.same({ "/p", "/p/scratchpad.md" }, { guard.project_of("/p/scratchpad.md") })
    assert.are.same({ ".", "./notes.md" }, { guard.project_of("notes.md") })
    assert.are.same({ "/", "/notes.md" }, { guard.project_of("/notes.md") })
    -- the run writes scratchpad.md of project P; an agent's `coral note` given its path locks the same file
    local project, path = guard.project_of(records.paths("/p").scratchpad)
    assert.are.equal(guard.lock_path("/p", "scratchpad.md"), guard.lock_path(project, path))
  end)

  it("check passes a fresh or a used project and names the first place that is not coral's", function()
    local dir = H.tmpdir()
    local paths = records.paths(dir)
    assert.is_true(guard.check(paths))
    assert.are.equal(0, H.run({ "note", "x", "--dir", dir }).code)
    assert.is_true(guard.check(paths))
    assert(uv.fs_symlink("/nonexistent", dir .. "/activity_tracker.md"))
    assert.are.same({ nil, dir .. "/activity_tracker.md is a symbolic link (coral does not follow it)" },
                    { guard.check(paths) })
    uv.fs_unlink(dir .. "/activity_tracker.md")
    -- a directory is reported before what is under it
    assert(uv.fs_rename(dir .. "/.coral", dir .. "/real"))
    assert(uv.fs_symlink("real", dir .. "/.coral"))
    assert.are.same({ nil, dir .. "/.coral is a symbolic link (coral does not follow it)" }, { guard.check(paths) })
  end)
end)
