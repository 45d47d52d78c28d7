-- coral.fsutil: directories, whole-file reads and writes (plain and atomic), paths, time, and
-- finding executables on PATH; failures come back as nil and a message naming the path.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local fsutil = require "coral.fsutil"

local function mode_of(path)
  return assert(uv.fs_stat(path)).mode & tonumber("777", 8)
end

local function oct(s) return tonumber(s, 8) end

-- The permission bits the process umask leaves of `mode` (the specs may run under any umask).
local function masked(mode)
  local probe = H.tmpdir() .. "/umask-probe"
  assert(uv.fs_mkdir(probe, oct("777")))
  local allowed = mode_of(probe)
  uv.fs_rmdir(probe)
  return mode & allowed
end

-- Runs `code` in a coral process whose file size limit is 2 KiB (SIGXFSZ ignored, so a write
-- past the limit is cut short rather than killed). `dir` is given to the code as arg[1].
local function with_small_file_limit(dir, code)
  local script = dir .. "/script.lua"
  H.write_file(script, code)
  return H.run({ "-c", "trap '' XFSZ; ulimit -f 4; exec \"$0\" \"$@\"", H.coral, script, dir },
               { exe = "/bin/sh" })
end

describe("coral.fsutil", function()
  describe("mkdirs", function()
    it("creates a directory and its missing parents, 0755 by default", function()
      local base = H.tmpdir()
      assert.are.equal(true, fsutil.mkdirs(base .. "/a/b/c"))
      for _, p in ipairs { base .. "/a", base .. "/a/b", base .. "/a/b/c" } do
        assert.are.equal("directory", uv.fs_stat(p).type)
        assert.are.equal(masked(oct("755")), mode_of(p))
      end
    end)

    it("gives the missing parents the mode too", function()
      local base = H.tmpdir()
      assert.is_true(fsutil.mkdirs(base .. "/x/y", oct("700")))
      assert.are.equal(oct("700"), mode_of(base .. "/x"))
      assert.are.equal(oct("700"), mode_of(base .. "/x/y"))
    end)

    it("succeeds for a directory that exists, leaving its mode", function()
      local base = H.tmpdir()
      uv.fs_chmod(base, oct("750"))
      assert.is_true(fsutil.mkdirs(base, oct("700")))
      assert.are.equal(oct("750"), mode_of(base))
      assert.is_true(fsutil.mkdirs(base .. "/trailing/slash/"))
      assert.are.equal("directory", uv.fs_stat(base .. "/trailing/slash").type)
    end)

    it("returns nil and the error when a parent is a file", function()
      local base = H.tmpdir()
      H.write_file(base .. "/file", "x")
      local ok, err = fsutil.mkdirs(base .. "/file/sub/dir")
      assert.is_nil(ok)
      assert.matches("^create directory " .. base:gsub("%p", "%%%0") .. "/file[/%w]*: E[A-Z]+: ", err)
      assert.are.same({ "file" }, H.entries(base))
    end)

    it("returns nil and the error when the path is a file", function()
      local base = H.tmpdir()
      H.write_file(base .. "/file", "x")
      local ok, err = fsutil.mkdirs(base .. "/file")
      assert.is_nil(ok)
      assert.matches("^create directory " .. (base .. "/file"):gsub("%p", "%%%0") .. ": EEXIST: ", err)
    end)
  end)

  describe("read", function()
    it("returns the whole content, bytes as they are", function()
      local p = H.tmpdir() .. "/f"
      local data = "line\r\n\0binary\255" .. string.rep("x", 100000)
      H.write_file(p, data)
      assert.are.equal(data, fsutil.read(p))
      H.write_file(p, "")
      assert.are.equal("", fsutil.read(p))
    end)

    it("returns nil and the error for a missing file", function()
      local p = H.tmpdir() .. "/missing"
      local data, err = fsutil.read(p)
      assert.is_nil(data)
      assert.are.equal(p .. ": No such file or directory", err)
    end)

    it("returns nil and the error for a directory", function()
      local p = H.tmpdir()
      local data, err = fsutil.read(p)
      assert.is_nil(data)
      assert.are.equal(p .. ": Is a directory", err)
    end)
  end)

  describe("write_file", function()
    it("writes a new file with the mode, 0644 by default", function()
      local dir = H.tmpdir()
      assert.are.equal(true, fsutil.write_file(dir .. "/a", "alpha"))
      assert.are.equal("alpha", H.read_file(dir .. "/a"))
      assert.are.equal(masked(oct("644")), mode_of(dir .. "/a"))
      assert.is_true(fsutil.write_file(dir .. "/b", "beta", oct("600")))
      assert.are.equal(oct("600"), mode_of(dir .. "/b"))
    end)

    it("replaces the whole content of a file", function()
      local p = H.tmpdir() .. "/f"
      H.write_file(p, string.rep("old ", 100))
      assert.is_true(fsutil.write_file(p, "new"))
      assert.are.equal("new", H.read_file(p))
      assert.is_true(fsutil.write_file(p, ""))
      assert.are.equal("", H.read_file(p))
    end)

    it("returns nil and the error naming the path", function()
      local dir = H.tmpdir()
      local ok, err = fsutil.write_file(dir .. "/no/such/f", "x")
      assert.is_nil(ok)
      assert.are.equal("write " .. dir .. "/no/such/f: ENOENT: no such file or directory: " .. dir .. "/no/such/f", err)
      ok, err = fsutil.write_file(dir, "x")
      assert.is_nil(ok)
      assert.matches("^write " .. dir:gsub("%p", "%%%0") .. ": EISDIR: ", err)
    end)

    it("reports a write cut short by why the rest was refused (the file size limit: EFBIG)", function()
      local dir = H.tmpdir()
      local r = with_small_file_limit(dir, [[
        print(require("coral.fsutil").write_file(arg[1] .. "/big", string.rep("x", 8192)))
      ]])
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("nil\twrite " .. dir .. "/big: EFBIG: file too large\n", r.stdout)
    end)
  end)

  describe("write_atomic", function()
    it("writes the file with the mode and leaves no temp file", function()
      local dir = H.tmpdir()
      assert.are.equal(true, fsutil.write_atomic(dir .. "/state", "one"))
      assert.are.equal("one", H.read_file(dir .. "/state"))
      assert.are.equal(masked(oct("644")), mode_of(dir .. "/state"))
      assert.is_true(fsutil.write_atomic(dir .. "/private", "two", oct("600")))
      assert.are.equal(oct("600"), mode_of(dir .. "/private"))
      assert.are.same({ "private", "state" }, H.entries(dir))
    end)

    it("replaces a file, giving it the new mode", function()
      local dir = H.tmpdir()
      H.write_file(dir .. "/f", string.rep("old ", 100), oct("644"))
      assert.is_true(fsutil.write_atomic(dir .. "/f", "new", oct("640")))
      assert.are.equal("new", H.read_file(dir .. "/f"))
      assert.are.equal(oct("640"), mode_of(dir .. "/f"))
      assert.are.same({ "f" }, H.entries(dir))
    end)

    it("returns nil and the error when the directory is missing", function()
      local dir = H.tmpdir()
      local ok, err = fsutil.write_atomic(dir .. "/no/f", "x")
      assert.is_nil(ok)
      assert.matches("^write " .. (dir .. "/no/f"):gsub("%p", "%%%0") .. ": ENOENT: no such file or directory", err)
      assert.are.same({}, H.entries(dir))
    end)

    it("leaves no temp file and the target as it was when the rename fails", function()
      local dir = H.tmpdir()
      uv.fs_mkdir(dir .. "/target", oct("755"))
      H.write_file(dir .. "/target/inside", "kept")
      local ok, err = fsutil.write_atomic(dir .. "/target", "x")
      assert.is_nil(ok)
      assert.matches("^write " .. (dir .. "/target"):gsub("%p", "%%%0") .. ": E[A-Z]+: ", err)
      assert.are.same({ "target" }, H.entries(dir))
      assert.are.equal("kept", H.read_file(dir .. "/target/inside"))
    end)

    it("keeps the old content and no temp file when the write is cut short", function()
      local dir = H.tmpdir()
      H.write_file(dir .. "/state", "old content\n")
      local r = with_small_file_limit(dir, [[
        print(require("coral.fsutil").write_atomic(arg[1] .. "/state", string.rep("x", 8192)))
      ]])
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("nil\twrite " .. dir .. "/state: EFBIG: file too large\n", r.stdout)
      assert.are.equal("old content\n", H.read_file(dir .. "/state"))
      assert.are.same({ "script.lua", "state" }, H.entries(dir))
    end)

    it("honours the mode and follows no link when a temp file was left behind", function()
      local dir = H.tmpdir()
      local tmp = string.format("%s/state.tmp-%d", dir, uv.os_getpid())
      H.write_file(tmp, "left by a crash", oct("644"))
      assert.is_true(fsutil.write_atomic(dir .. "/state", "new", oct("600")))
      assert.are.equal("new", H.read_file(dir .. "/state"))
      assert.are.equal(oct("600"), mode_of(dir .. "/state"))
      -- a link in its place is replaced, not written through
      H.write_file(dir .. "/victim", "untouched")
      assert(uv.fs_symlink(dir .. "/victim", tmp))
      assert.is_true(fsutil.write_atomic(dir .. "/state", "newer", oct("600")))
      assert.are.equal("untouched", H.read_file(dir .. "/victim"))
      assert.are.equal("file", uv.fs_lstat(dir .. "/state").type)
      assert.are.equal("newer", H.read_file(dir .. "/state"))
      assert.are.same({ "state", "victim" }, H.entries(dir))
    end)
  end)

  describe("absolute", function()
    it("normalises an absolute path", function()
      assert.are.equal("/a/c/d", fsutil.absolute("/a/b/../c/./d/"))
      assert.are.equal("/a/b", fsutil.absolute("//a///b"))
      assert.are.equal("/", fsutil.absolute("/"))
      assert.are.equal("/", fsutil.absolute("/.."))
      assert.are.equal("/x", fsutil.absolute("/../../x"))
    end)

    it("resolves a relative path against the current directory", function()
      local cwd = uv.cwd()
      assert.are.equal(cwd .. "/x/y", fsutil.absolute("x/y"))
      assert.are.equal(cwd .. "/y", fsutil.absolute("./x/../y"))
      assert.are.equal(cwd, fsutil.absolute("."))
      assert.are.equal(cwd, fsutil.absolute(""))
      assert.are.equal(cwd:match("^(.*)/[^/]+$") .. "/z", fsutil.absolute("../z"))
    end)
  end)

  describe("timestamp", function()
    it("formats a time, whole seconds, in local time by default", function()
      local t = 1700000000.75
      assert.are.equal(os.date("%Y-%m-%d %H:%M:%S", 1700000000), fsutil.timestamp(t))
      assert.matches("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d$", fsutil.timestamp(t))
      assert.are.equal("2023-11-14 22:13:20", fsutil.timestamp(t, "!%Y-%m-%d %H:%M:%S"))
      assert.are.equal("00:00:00", fsutil.timestamp(0, "!%H:%M:%S"))
      assert.are.equal("23:59:59", fsutil.timestamp(86399.99, "!%H:%M:%S"))
    end)

    it("uses the current time without one", function()
      local before = os.time()
      local stamp = fsutil.timestamp()
      local after = os.time()
      assert.is_true(stamp == os.date("%Y-%m-%d %H:%M:%S", before) or stamp == os.date("%Y-%m-%d %H:%M:%S", after),
                     stamp)
    end)
  end)

  describe("now", function()
    it("is the wall clock with sub-second precision", function()
      -- bounds taken around the call, so a busy machine that stalls this process cannot fail it
      local before = os.time()
      local a = fsutil.now()
      local after = os.time()
      assert.are.equal("float", math.type(a))
      assert.is_true(a >= before and a < after + 1, string.format("%f not in [%d, %d]", a, before, after + 1))
      uv.sleep(50)
      local b = fsutil.now()
      assert.is_true(b - a >= 0.04, tostring(b - a))
    end)
  end)

  describe("which", function()
    local old_path
    before_each(function() old_path = os.getenv("PATH") end)
    after_each(function() uv.os_setenv("PATH", old_path) end)

    -- Two directories on PATH: first has tool (executable), plain (not executable) and a
    -- directory called sub; second has plain and tool, both executable.
    local function setup()
      local first, second = H.tmpdir(), H.tmpdir()
      H.write_file(first .. "/tool", "#!/bin/sh\n", oct("755"))
      H.write_file(first .. "/plain", "#!/bin/sh\n", oct("644"))
      uv.fs_mkdir(first .. "/sub", oct("755"))
      H.write_file(second .. "/plain", "#!/bin/sh\n", oct("755"))
      H.write_file(second .. "/tool", "#!/bin/sh\n", oct("755"))
      H.write_file(second .. "/sub", "#!/bin/sh\n", oct("755"))
      uv.os_setenv("PATH", first .. "::" .. second)
      return first, second
    end

    it("finds the first executable file of the name on PATH", function()
      local first, second = setup()
      assert.are.equal(first .. "/tool", fsutil.which("tool"))
      assert.are.equal(second .. "/plain", fsutil.which("plain"), "a file that is not executable is skipped")
      assert.are.equal(second .. "/sub", fsutil.which("sub"), "a directory is skipped")
      assert.is_nil(fsutil.which("missing"))
    end)

    it("finds nothing with an empty PATH", function()
      uv.os_setenv("PATH", "")
      assert.is_nil(fsutil.which("sh"))
    end)

    it("finds a system command", function()
      local sh = fsutil.which("sh")
      assert.matches("^/.*/sh$", sh)
      assert.is_true(uv.fs_access(sh, "X"))
    end)

    it("checks a name with a slash as a path, not on PATH", function()
      local first = setup()
      assert.are.equal(first .. "/tool", fsutil.which(first .. "/tool"))
      assert.is_nil(fsutil.which(first .. "/plain"))
      assert.is_nil(fsutil.which(first .. "/missing"))
      assert.is_nil(fsutil.which("./tool"))
      assert.is_nil(fsutil.which(first .. "/sub"), "a directory is not an executable")
      assert.is_nil(fsutil.which(first))
    end)
  end)
end)
