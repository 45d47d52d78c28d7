-- coral.proc: spawning children, their stdio, timeouts, signals, exit information, and that no
-- child, fd or handle outlives its proc (the helper checks after every spec).
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local proc = require "coral.proc"

local function line() return debug.getinfo(2, "l").currentline end

--- Runs the loop until `cond()` holds (or fails after `secs`).
local function run_until(cond, secs)
  local deadline = uv.hrtime() + (secs or 5) * 1e9
  while not cond() do
    assert(uv.hrtime() < deadline, "condition not reached in time")
    uv.sleep(5)
    uv.run("nowait")
  end
end

local function collect(into)
  return function(data) into[#into + 1] = data end
end

local function open_fds()
  local n, dir = 0, uv.fs_scandir("/proc/self/fd")
  while dir and uv.fs_scandir_next(dir) do n = n + 1 end
  return n
end

local function alive(pid)
  local stat = H.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %(.*%) Z")
end

describe("coral.proc", function()
  it("documents every function and method in docs/proc.md", function()
    local doc = assert(H.read_file(H.root .. "/docs/proc.md"))
    for name in pairs(proc) do
      assert.truthy(doc:find("proc." .. name .. "(", 1, true), "undocumented: proc." .. name)
    end
    local p = proc.spawn { argv = { "true" } }
    local _, methods = debug.getupvalue(getmetatable(p).__index, 1)
    for name in pairs(methods) do
      assert.truthy(doc:find("p:" .. name .. "(", 1, true), "undocumented: p:" .. name)
    end
    p:wait()
  end)

  describe("spawn", function()
    it("runs argv without a shell and reports the exit", function()
      local out = {}
      local p = assert(proc.spawn { argv = { "sh", "-c", 'echo "$0 $1"; exit 7', "a b", 42 },
                                    stdout = collect(out) })
      assert.is_true(p.pid > 0)
      local info = p:wait()
      assert.are.equal("a b 42\n", table.concat(out))
      assert.are.equal(7, info.code)
      assert.is_nil(info.signal)
      assert.are.equal(p.pid, info.pid)
      assert.is_true(info.duration > 0 and info.duration < 5)
      assert.are.equal(0, info.stdout_dropped)
      assert.are.equal(0, info.stderr_dropped)
    end)

    it("runs a command line through /bin/sh only when asked", function()
      local out = {}
      local info = proc.spawn { cmd = "echo $((6 * 7)) | tr 4 x", shell = true, stdout = collect(out) }:wait()
      assert.are.equal(0, info.code)
      assert.are.equal("x2\n", table.concat(out))
      -- without shell, the same text is one program name that does not exist
      local p, err, code = proc.spawn { argv = { "echo $((6 * 7))" } }
      assert.is_nil(p)
      assert.are.equal("ENOENT", code)
      assert.are.equal("spawn echo $((6 * 7)): ENOENT: no such file or directory", err)
    end)

    it("returns nil, message, code for a missing program", function()
      local p, err, code = proc.spawn { argv = { "nosuchprog" } }
      assert.is_nil(p)
      assert.are.equal("spawn nosuchprog: ENOENT: no such file or directory", err)
      assert.are.equal("ENOENT", code)
    end)

    it("returns EACCES for a file that is not executable", function()
      local dir = H.tmpdir()
      H.write_file(dir .. "/script", "#!/bin/sh\necho hi\n", tonumber("644", 8))
      local p, err, code = proc.spawn { argv = { dir .. "/script" } }
      assert.is_nil(p)
      assert.are.equal("EACCES", code)
      assert.are.equal("spawn " .. dir .. "/script: EACCES: permission denied", err)
    end)

    it("searches PATH as posix_spawnp does: in order, past a directory it may not search", function()
      local dir = H.tmpdir()
      uv.fs_mkdir(dir .. "/a", tonumber("755", 8))
      uv.fs_mkdir(dir .. "/b", tonumber("755", 8))
      H.write_file(dir .. "/a/tool", "#!/bin/sh\necho a\n", tonumber("644", 8))   -- not executable
      H.write_file(dir .. "/b/tool", "#!/bin/sh\necho b\n", tonumber("755", 8))
      local code = "local p = assert(require('coral.proc').spawn { argv = { 'tool' } }); os.exit(p:wait().code)"
      local r = H.run({ "-e", code }, { env = H.env { PATH = dir .. "/nowhere:" .. dir .. "/a:" .. dir .. "/b" } })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("b\n", r.stdout)
      -- only a file it may not run: EACCES, not ENOENT
      r = H.run({ "-e", "print(select(3, require('coral.proc').spawn { argv = { 'tool' } }))" },
                { env = H.env { PATH = dir .. "/a" } })
      assert.are.equal("EACCES\n", r.stdout)
    end)

    it("gives the child the default action of the signals the host ignores or catches", function()
      -- coral ignores SIGPIPE and catches SIGINT, SIGTERM, SIGHUP and SIGCHLD: none of it is
      -- the child's (SigIgn and SigCgt of its /proc status are empty)
      local out = {}
      proc.spawn { argv = { "cat", "/proc/self/status" }, stdout = collect(out) }:wait()
      local status = table.concat(out)
      -- what coral's own parent left ignored is inherited, as by any exec (GNU make's recipes
      -- start with glibc's two internal signals ignored), but for the dispositions coral.proc
      -- puts back to their defaults (src/spawn.c, proc_child_defaults)
      local reset = 0
      for _, n in ipairs { 13, 2, 15, 1, 17, 3, 20, 21, 22, 14, 10, 12, 25, 24, 28, 18 } do
        reset = reset | (1 << (n - 1))
      end
      local f = assert(io.open("/proc/self/status"))
      local inherited = tonumber(f:read("a"):match("\nSigIgn:%s*(%x+)"), 16) & ~reset
      f:close()
      assert.are.equal(string.format("%016x", inherited), status:match("\nSigIgn:%s*(%x+)"))
      assert.are.equal("0000000000000000", status:match("\nSigCgt:%s*(%x+)"))
    end)

    it("gives the child SIGQUIT's default action when coral's own parent ignored it", function()
      -- as a non-interactive shell's background job (`cmd &`) has it; SIGQUIT is bit 3 - 1
      local script = "local out = {}; require('coral.proc').spawn { argv = { 'cat', '/proc/self/status' }, " ..
        "stdout = function(c) out[#out + 1] = c end }:wait(); " ..
        "io.write(table.concat(out):match('\\nSigIgn:%s*(%x+)'))"
      local r = H.run({ "-c", "trap '' QUIT; exec \"$0\" -e \"$1\"", H.coral, script }, { exe = "/bin/sh" })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal(0, tonumber(r.stdout, 16) & (1 << 2), r.stdout)
    end)

    it("names every errno: ENOEXEC for a file the kernel cannot run", function()
      local dir = H.tmpdir()
      -- an ELF header and nothing after it: executable, and not a program
      H.write_file(dir .. "/broken", "\127ELF\2\1\1\0" .. string.rep("\0", 8), tonumber("755", 8))
      local p, err, code = proc.spawn { argv = { dir .. "/broken" } }
      assert.is_nil(p)
      assert.are.equal("ENOEXEC", code)
      assert.are.equal("spawn " .. dir .. "/broken: ENOEXEC: exec format error", err)
    end)

    it("runs in cwd, and names a bad cwd as the cause", function()
      local dir = H.tmpdir()
      local out = {}
      assert.are.equal(0, proc.spawn { argv = { "pwd" }, cwd = dir, stdout = collect(out) }:wait().code)
      assert.are.equal(uv.fs_realpath(dir) .. "\n", table.concat(out))
      local p, err, code = proc.spawn { argv = { "pwd" }, cwd = dir .. "/missing" }
      assert.is_nil(p)
      assert.are.equal("ENOENT", code)
      assert.are.equal("spawn pwd: cwd " .. dir .. "/missing: ENOENT: no such file or directory", err)
      H.write_file(dir .. "/file", "")
      p, err, code = proc.spawn { argv = { "pwd" }, cwd = dir .. "/file" }
      assert.is_nil(p)
      assert.are.equal("ENOTDIR", code)
      assert.matches("^spawn pwd: cwd .*/file: ENOTDIR", err)
    end)

    it("raises on a mistake, at the caller's line", function()
      local l
      local ok, err = pcall(function() l = line(); proc.spawn { argv = { "true" }, bogus = 1 } end)
      assert.is_false(ok)
      assert.are.equal("spec/proc_spec.lua:" .. l .. ": bad argument #1 to 'spawn' (unknown option 'bogus')", err)
      local cases = {
        { { argv = "true" }, "option 'argv': table expected, got string" },
        { { argv = {} }, "option 'argv' is empty" },
        { { argv = { "true", {} } }, "option 'argv': item 2 must be a string, got table" },
        { {}, "option 'argv' (program and arguments) or cmd with shell = true is required" },
        { { cmd = "true" }, "option 'cmd' needs shell = true" },
        { { argv = { "true" }, shell = true }, "option 'argv' cannot be used with shell = true" },
        { { argv = { "true" }, cwd = 1 }, "option 'cwd': string expected, got number" },
        { { argv = { "true" }, env = { ["A=B"] = "x" } }, "option 'env': bad variable name 'A=B'" },
        { { argv = { "true" }, env = { A = true } }, "option 'env': value of 'A' must be a string or false" },
        { { argv = { "true" }, stdin = 5 }, "option 'stdin': string" },
        { { argv = { "true" }, stdin = { path = "x" } }, "option 'stdin': unknown key 'path'" },
        { { argv = { "true" }, stdout = true }, "option 'stdout': true is not a destination" },
        { { argv = { "true" }, stdout = { fil = "x" } }, "option 'stdout': unknown key 'fil'" },
        { { argv = { "true" }, stderr = { cap = -1 } }, "option 'stderr': 'cap' must be an integer >= 0" },
        { { argv = { "true" }, stdout = { lines = true } }, "option 'stdout': lines needs on_data" },
        { { argv = { "true" }, timeout = 0 }, "option 'timeout': seconds > 0 expected" },
        { { argv = { "true" }, kill_grace = "2" }, "option 'kill_grace': number expected, got string" },
        { { argv = { "true" }, on_exit = 1 }, "option 'on_exit': function expected, got number" },
      }
      for _, case in ipairs(cases) do
        ok, err = pcall(function() l = line(); proc.spawn(case[1]) end)
        assert.is_false(ok)
        assert.truthy(err:find("spec/proc_spec.lua:" .. l .. ": bad argument #1 to 'spawn' (" .. case[2], 1, true), err)
      end
      ok, err = pcall(function() l = line(); proc.spawn({ argv = { "true" } }, 2) end)
      assert.is_false(ok)
      assert.are.equal("spec/proc_spec.lua:" .. l .. ": bad argument #2 to 'spawn' (no more than 1 argument expected, got 2)", err)
    end)
  end)

  describe("the PATH search", function()
    -- Dirs put first on PATH for one spec, with their mtime set 10 s back: coral.proc does not
    -- remember a search through a dir changed in the last two seconds.
    local saved_path
    before_each(function() saved_path = os.getenv("PATH") end)
    after_each(function() uv.os_setenv("PATH", saved_path) end)
    local function path_dirs(n)
      local root, dirs = H.tmpdir(), {}
      for i = 1, n do
        dirs[i] = root .. "/bin" .. i
        assert(uv.fs_mkdir(dirs[i], tonumber("755", 8)))
      end
      uv.os_setenv("PATH", table.concat(dirs, ":") .. ":" .. saved_path)
      return dirs
    end
    local function age(dir)
      local past = os.time() - 10
      assert(uv.fs_utime(dir, past, past))
    end
    local function put(dir, says)
      H.write_file(dir .. "/coral-spec-prog", "#!/bin/sh\necho " .. says .. "\n", tonumber("755", 8))
    end
    local function run_prog()
      local out = {}
      local info = proc.spawn { argv = { "coral-spec-prog" }, stdout = collect(out) }:wait()
      return info.code == 0 and table.concat(out) or ("exit " .. tostring(info.code))
    end

    it("finds a program put since in a dir that comes first, and one moved further on", function()
      local dirs = path_dirs(3)
      put(dirs[2], "two")
      put(dirs[3], "three")
      for _, d in ipairs(dirs) do age(d) end
      assert.are.equal("two\n", run_prog())
      assert.are.equal("two\n", run_prog())
      put(dirs[1], "one")   -- dir 1 changes: the place remembered is not trusted
      assert.are.equal("one\n", run_prog())
      assert(uv.fs_unlink(dirs[1] .. "/coral-spec-prog"))
      assert(uv.fs_unlink(dirs[2] .. "/coral-spec-prog"))
      age(dirs[1])
      assert.are.equal("three\n", run_prog())   -- gone from where it was: searched again
      assert(uv.fs_unlink(dirs[3] .. "/coral-spec-prog"))
      local p, _, code = proc.spawn { argv = { "coral-spec-prog" } }
      assert.is_nil(p)
      assert.are.equal("ENOENT", code)
    end)

    it("remembers where it found a program: a dir before it that looks unchanged is not searched", function()
      -- The one case it cannot see, made on purpose to show the search is remembered: a program
      -- put in a dir whose mtime is then set back to what it was.
      local dirs = path_dirs(2)
      put(dirs[2], "two")
      age(dirs[1]); age(dirs[2])
      assert.are.equal("two\n", run_prog())
      local before = assert(uv.fs_stat(dirs[1]))
      put(dirs[1], "one")
      assert(uv.fs_utime(dirs[1], before.atime.sec, before.mtime.sec))
      local now = assert(uv.fs_stat(dirs[1]))
      assert.are.equal(before.mtime.sec, now.mtime.sec)
      if now.mtime.nsec == before.mtime.nsec then
        assert.are.equal("two\n", run_prog())
      end
      -- another PATH forgets all it remembered
      uv.os_setenv("PATH", dirs[1] .. ":" .. dirs[2] .. ":" .. saved_path .. ":")
      assert.are.equal("one\n", run_prog())
    end)

    it("looks at a dir PATH names twice once, and still finds a program put there since", function()
      local dirs = path_dirs(2)
      uv.os_setenv("PATH", dirs[1] .. ":" .. dirs[1] .. ":" .. dirs[2] .. ":" .. saved_path)
      put(dirs[2], "two")
      age(dirs[1]); age(dirs[2])
      assert.are.equal("two\n", run_prog())
      assert.are.equal("two\n", run_prog())
      put(dirs[1], "one")
      assert.are.equal("one\n", run_prog())
    end)

    it("does not remember a search through a dir changed in the last two seconds", function()
      local dirs = path_dirs(2)
      put(dirs[2], "two")
      age(dirs[2])
      local recent = os.time()   -- dir 1 changed within this second (a whole second: no nsec)
      assert(uv.fs_utime(dirs[1], recent, recent))
      assert.are.equal("two\n", run_prog())
      put(dirs[1], "one")
      assert(uv.fs_utime(dirs[1], recent, recent))   -- looks as it did
      assert.are.equal("one\n", run_prog())   -- searched: dir 1 was too new to be trusted
    end)
  end)

  describe("env", function()
    local function env_of(opts)
      local out = {}
      opts.argv, opts.stdout = { "env" }, collect(out)
      assert.are.equal(0, proc.spawn(opts):wait().code)
      local vars = {}
      for k, v in table.concat(out):gmatch("([^=\n]+)=([^\n]*)") do vars[k] = v end
      return vars
    end

    it("inherits, adds, overrides and removes variables", function()
      uv.os_setenv("CORAL_SPEC_KEEP", "kept")
      uv.os_setenv("CORAL_SPEC_DROP", "dropped")
      local vars = env_of { env = { CORAL_SPEC_NEW = "new", CORAL_SPEC_NUM = 5, CORAL_SPEC_DROP = false,
                                    HOME = "/elsewhere" } }
      uv.os_unsetenv("CORAL_SPEC_KEEP")
      uv.os_unsetenv("CORAL_SPEC_DROP")
      assert.are.equal("kept", vars.CORAL_SPEC_KEEP)
      assert.are.equal("new", vars.CORAL_SPEC_NEW)
      assert.are.equal("5", vars.CORAL_SPEC_NUM)
      assert.are.equal("/elsewhere", vars.HOME)
      assert.is_nil(vars.CORAL_SPEC_DROP)
    end)

    it("replaces the whole environment with clear_env", function()
      local vars = env_of { clear_env = true, env = { ONLY = "this", CORAL_SPEC_MARK = os.getenv("CORAL_SPEC_MARK") } }
      local n = 0
      for _ in pairs(vars) do n = n + 1 end
      assert.are.equal(2, n)
      assert.are.equal("this", vars.ONLY)
    end)
  end)

  describe("stdin", function()
    local function cat(stdin)
      local out = {}
      local info = proc.spawn { argv = { "cat" }, stdin = stdin, stdout = collect(out) }:wait()
      assert.are.equal(0, info.code)
      return table.concat(out)
    end

    it("is /dev/null by default", function()
      assert.are.equal("", cat(nil))
      assert.are.equal("", cat(false))
    end)

    it("can be a string, small or bigger than a pipe", function()
      assert.are.equal("hello", cat("hello"))
      assert.are.equal("pipe", cat({ data = "pipe" }))
      local big = string.rep("0123456789", 100000)
      assert.are.equal(big, cat(big))
    end)

    it("can be a file", function()
      local dir = H.tmpdir()
      H.write_file(dir .. "/in", "from a file\n")
      assert.are.equal("from a file\n", cat({ file = dir .. "/in" }))
      local p, err, code = proc.spawn { argv = { "cat" }, stdin = { file = dir .. "/none" } }
      assert.is_nil(p)
      assert.are.equal("ENOENT", code)
      assert.are.equal("spawn cat: stdin " .. dir .. "/none: ENOENT: no such file or directory", err)
    end)

    it("can be a pipe the caller streams into", function()
      local out = {}
      local p = proc.spawn { argv = { "cat" }, stdin = "pipe", stdout = collect(out) }
      assert.is_true(p:write("one "))
      assert.is_true(p:write(string.rep("x", 300000)))
      assert.is_true(p:write(" two"))
      p:close_stdin()
      p:close_stdin()  -- idempotent
      assert.are.equal(0, p:wait().code)
      assert.are.equal("one " .. string.rep("x", 300000) .. " two", table.concat(out))
      local ok, err = pcall(p.write, p, "late")
      assert.is_false(ok)
      assert.matches("stdin was closed by close_stdin", err)
    end)

    it("reports EPIPE after the child is gone, and refuses writes without a pipe", function()
      local p = proc.spawn { argv = { "true" }, stdin = true }
      p:wait()
      local ok, err, code = p:write("x")
      assert.is_nil(ok)
      assert.are.equal("EPIPE", code)
      assert.matches("^write to %d+: EPIPE", err)
      local q = proc.spawn { argv = { "true" } }
      local l
      ok, err = pcall(function() l = line(); q:write("x") end)
      assert.is_false(ok)
      assert.are.equal("spec/proc_spec.lua:" .. l .. ": proc write: stdin is not a pipe (spawn with stdin = true)", err)
      q:wait()
    end)

    it("tells a writer when its data has left coral: on_written and the queue size", function()
      local out, done = {}, {}
      local p = proc.spawn { argv = { "sh", "-c", "sleep 0.2; cat" }, stdin = true, stdout = collect(out) }
      assert.is_true(p:write(string.rep("a", 500000), function(err) done[#done + 1] = err or "written" end))
      assert.are.same({}, done)   -- from the loop, never from inside write
      assert.is_true(p:write_queue_size() > 0)
      run_until(function() return #done == 1 end)
      assert.are.same({ "written" }, done)
      assert.are.equal(0, p:write_queue_size())
      p:close_stdin()
      p:wait()
      assert.are.equal(500000, #table.concat(out))
      local l
      local ok, err = pcall(function() l = line(); p:write("x", 5) end)
      assert.is_false(ok)
      assert.are.equal("spec/proc_spec.lua:" .. l .. ": bad argument #2 to 'write' (function expected, got number)", err)
      local q = proc.spawn { argv = { "true" } }
      ok, err = pcall(function() l = line(); q:write_queue_size() end)
      assert.is_false(ok)
      assert.are.equal("spec/proc_spec.lua:" .. l .. ": proc write_queue_size: stdin is not a pipe (spawn with stdin = true)", err)
      ok, err = pcall(function() l = line(); q:pause_stdout() end)
      assert.is_false(ok)
      assert.are.equal("spec/proc_spec.lua:" .. l .. ": proc pause_stdout: coral does not read this stdout (give it an on_data)", err)
      q:wait()
    end)
  end)

  describe("stdout and stderr", function()
    it("with lazy, makes the file at the first byte: a quiet child leaves none", function()
      local dir = H.tmpdir()
      local quiet = proc.spawn { argv = { "true" }, stdout = { file = dir .. "/q.out", lazy = true },
                                 stderr = { file = dir .. "/q.err", lazy = true, nofollow = true } }:wait()
      assert.are.equal(0, quiet.code)
      assert.are.same({}, H.entries(dir))
      assert.are.equal(0, quiet.stdout_size)
      assert.are.equal(0, quiet.stderr_size)
      -- a file already there is left as it was, not truncated, when nothing is written
      H.write_file(dir .. "/kept", "before\n")
      proc.spawn { argv = { "true" }, stdout = { file = dir .. "/kept", lazy = true } }:wait()
      assert.are.equal("before\n", H.read_file(dir .. "/kept"))
      local loud = proc.spawn { argv = { "sh", "-c", "echo out; echo err >&2" },
                                stdout = { file = dir .. "/w.out", lazy = true, nofollow = true },
                                stderr = { file = dir .. "/w.err", lazy = true } }:wait()
      assert.are.equal("out\n", H.read_file(dir .. "/w.out"))
      assert.are.equal("err\n", H.read_file(dir .. "/w.err"))
      assert.are.equal(4, loud.stdout_size)
      assert.are.equal(4, loud.stderr_size)
      -- with a cap: the file holds what was passed on
      local capped = proc.spawn { argv = { "printf", "0123456789" },
                                  stdout = { file = dir .. "/c.out", lazy = true, cap = 4 } }:wait()
      assert.are.equal("0123", H.read_file(dir .. "/c.out"))
      assert.are.same({ 4, 6 }, { capped.stdout_size, capped.stdout_dropped })
    end)

    it("with lazy and nofollow, refuses a link put in the file's place before the first byte", function()
      local dir = H.tmpdir()
      H.write_file(dir .. "/victim", "keep\n")
      assert(uv.fs_symlink(dir .. "/victim", dir .. "/out"))
      local info = proc.spawn { argv = { "echo", "written" },
                                stdout = { file = dir .. "/out", lazy = true, nofollow = true } }:wait()
      assert.are.equal(0, info.code)   -- the child ran; its output had nowhere to go
      assert.matches("^ELOOP", info.stdout_error)
      assert.are.equal("keep\n", H.read_file(dir .. "/victim"))
      local ok, err = pcall(proc.spawn, { argv = { "true" }, stdout = { lazy = true } })
      assert.is_false(ok)
      assert.matches("lazy goes with file", err)
    end)

    it("with nofollow, writes only a regular file of its own: a link, a FIFO, a dir or a hard link is refused", function()
      local dir = H.tmpdir()
      H.write_file(dir .. "/victim", "keep\n")
      local function spawn_to(path)
        local p, err, code = proc.spawn { argv = { "echo", "written" }, stdout = { file = path, nofollow = true } }
        if p then p:wait() end
        return p, err, code
      end
      assert(uv.fs_symlink(dir .. "/victim", dir .. "/link"))
      local p, err, code = spawn_to(dir .. "/link")
      assert.is_nil(p)
      assert.are.equal("ELOOP", code, err)
      assert(uv.fs_link(dir .. "/victim", dir .. "/hard"))
      p, err, code = spawn_to(dir .. "/hard")
      assert.is_nil(p)
      assert.are.equal("EMLINK", code, err)
      assert.are.equal(0, os.execute("mkfifo " .. dir .. "/fifo") and 0 or 1)
      p, err, code = spawn_to(dir .. "/fifo")
      assert.is_nil(p)
      assert.are.equal("ENXIO", code, err)
      assert(uv.fs_mkdir(dir .. "/sub", tonumber("755", 8)))
      p, err, code = spawn_to(dir .. "/sub")
      assert.is_nil(p)
      assert.are.equal("EISDIR", code, err)
      assert.are.equal("keep\n", H.read_file(dir .. "/victim"))   -- nothing written through them
      -- its own file, new or there already (truncated)
      assert(spawn_to(dir .. "/new"))
      assert.are.equal("written\n", H.read_file(dir .. "/new"))
      H.write_file(dir .. "/old", "a much longer earlier text\n")
      assert(spawn_to(dir .. "/old"))
      assert.are.equal("written\n", H.read_file(dir .. "/old"))
      local info = proc.spawn { argv = { "echo", "more" }, stdout = { file = dir .. "/old", nofollow = true, append = true } }:wait()
      assert.are.equal(0, info.code)
      assert.are.equal("written\nmore\n", H.read_file(dir .. "/old"))
    end)

    it("takes a file opened ahead by open_output (as nofollow opens it), which is the child's from then on", function()
      local dir = H.tmpdir()
      local fds = open_fds()
      local out = assert(proc.open_output(dir .. "/out"))
      H.write_file(dir .. "/old", "an earlier, longer text\n")
      local err = assert(proc.open_output(dir .. "/old"))   -- there already: truncated
      assert.are.equal("", H.read_file(dir .. "/old"))
      assert.are.equal(fds + 2, open_fds())
      local info = proc.spawn { argv = { "sh", "-c", "echo out; echo err >&2" },
                                stdout = { file = dir .. "/out", opened = out },
                                stderr = { file = dir .. "/old", opened = err } }:wait()
      assert.are.equal(0, info.code)
      assert.are.equal(4, info.stdout_size)
      assert.are.equal("out\n", H.read_file(dir .. "/out"))
      assert.are.equal("err\n", H.read_file(dir .. "/old"))
      assert.are.equal(fds, open_fds())   -- the spawn owned them, and closed them
      assert.matches("closed", tostring(out))
      -- given once only
      local ok, msg = pcall(proc.spawn, { argv = { "true" }, stdout = { file = dir .. "/out", opened = out } })
      assert.is_false(ok)
      assert.matches("option 'stdout': the opened file was closed or given to a process already", msg, 1, true)
      ok, msg = pcall(proc.spawn, { argv = { "true" }, stdout = { opened = assert(proc.open_output(dir .. "/x")) } })
      assert.is_false(ok)
      assert.matches("opened goes with the file it opened", msg, 1, true)
      -- one file for both streams: the second finds it taken, and the spawn fails (EBADF)
      local both = assert(proc.open_output(dir .. "/both"))
      local none_p, berr, bcode = proc.spawn { argv = { "true" }, stdout = { file = dir .. "/both", opened = both },
                                               stderr = { file = dir .. "/both", opened = both } }
      assert.is_nil(none_p)
      assert.are.equal("EBADF", bcode, berr)
      -- a spawn that fails closes it too; close() and collection close one never given
      local f = assert(proc.open_output(dir .. "/y"))
      assert.is_nil(proc.spawn { argv = { dir .. "/missing" }, stdout = { file = dir .. "/y", opened = f } })
      local g = assert(proc.open_output(dir .. "/z"))
      g:close()
      g:close()
      collectgarbage()
      assert.are.equal(fds, open_fds())
      -- refused as nofollow refuses: a link, a hard link
      H.write_file(dir .. "/victim", "keep\n")
      assert(uv.fs_symlink(dir .. "/victim", dir .. "/link"))
      local none, why, code = proc.open_output(dir .. "/link")
      assert.is_nil(none)
      assert.are.equal("ELOOP", code, why)
      assert(uv.fs_link(dir .. "/victim", dir .. "/hard"))
      none, why, code = proc.open_output(dir .. "/hard")
      assert.is_nil(none)
      assert.are.equal("EMLINK", code, why)
      assert.are.equal("keep\n", H.read_file(dir .. "/victim"))
    end)

    it("can be paused: the child blocks, its idle timeout waits, nothing is lost", function()
      local n = 0
      local p = proc.spawn { argv = { "head", "-c", "3000000", "/dev/zero" }, idle_timeout = 0.1,
                             stdout = function(d) n = n + #d end }
      p:pause_stdout()
      local t0 = uv.hrtime()
      run_until(function() return uv.hrtime() - t0 > 0.4e9 end)
      assert.is_true(n < 3000000, "paused, yet it read " .. n)
      p:resume_stdout()
      p:resume_stdout()   -- idempotent
      local info = p:wait()
      assert.are.equal(3000000, n)
      assert.is_nil(info.timed_out)
      assert.are.equal(0, info.code)
    end)

    it("is not idle while coral, not the child, was late to read what it printed", function()
      -- the child prints every 50 ms; coral is busy for half a second (a loaded machine): when its
      -- loop comes back the idle timer is long due, but the pipe holds what the child printed
      local n = 0
      local p = proc.spawn { argv = { "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo x; sleep 0.05; done" },
                             idle_timeout = 0.2, stdout = function(d) n = n + #d end }
      uv.sleep(500)
      local info = p:wait()
      assert.is_nil(info.timed_out)
      assert.are.equal(0, info.code)
      assert.are.equal(16, n)
    end)

    it("go to files the child writes itself, or append", function()
      local dir = H.tmpdir()
      H.write_file(dir .. "/err", "old\n")
      local info = proc.spawn { cmd = "echo out; echo err >&2", shell = true,
                                stdout = dir .. "/out", stderr = { file = dir .. "/err", append = true } }:wait()
      assert.are.equal(0, info.code)
      assert.are.equal("out\n", H.read_file(dir .. "/out"))
      assert.are.equal("old\nerr\n", H.read_file(dir .. "/err"))
      -- their sizes come with the exit (an output cap needs no stat), the appended one whole
      assert.are.equal(4, info.stdout_size)
      assert.are.equal(8, info.stderr_size)
      local p, err, code = proc.spawn { argv = { "true" }, stdout = dir .. "/no/such/out" }
      assert.is_nil(p)
      assert.are.equal("ENOENT", code)
      assert.are.equal("spawn true: stdout " .. dir .. "/no/such/out: ENOENT: no such file or directory", err)
    end)

    it("merge with stderr = 'stdout', and are discarded with false", function()
      local out = {}
      proc.spawn { cmd = "echo a; echo b >&2; echo c", shell = true, stdout = collect(out), stderr = "stdout" }:wait()
      assert.are.equal("a\nb\nc\n", table.concat(out))
      local r = H.run { "-e", "require'coral.proc'.spawn{ argv = {'sh', '-c', 'echo hidden; echo hidden >&2'}, stdout = false, stderr = false }:wait()" }
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("", r.stdout)
      assert.are.equal("", r.stderr)
    end)

    it("go to a file and a callback at once, C writing the file", function()
      local dir = H.tmpdir()
      local out = {}
      local info = proc.spawn { argv = { "seq", "1", "3" }, stdout = { file = dir .. "/log", on_data = collect(out) } }:wait()
      assert.are.equal("1\n2\n3\n", H.read_file(dir .. "/log"))
      assert.is_nil(info.stdout_size)   -- C wrote it through a pipe: no size from the child's file
      assert.are.equal("1\n2\n3\n", table.concat(out))
    end)

    it("deliver lines, joining partial ones across reads", function()
      local lines = {}
      local p = proc.spawn {
        cmd = "printf 'a\\nb'; sleep 0.1; printf 'c\\n\\nd'; sleep 0.1; printf 'e'", shell = true,
        stdout = { lines = true, on_data = collect(lines) },
      }
      p:wait()
      assert.are.same({ "a", "bc", "", "de" }, lines)
    end)

    it("stop at the cap and count what was dropped", function()
      local dir = H.tmpdir()
      local n = 0
      local info = proc.spawn { argv = { "head", "-c", "1000000", "/dev/zero" },
                                stdout = { cap = 1000, on_data = function(d) n = n + #d end },
                                stderr = { file = dir .. "/e", cap = 3 } }:wait()
      assert.are.equal(1000, n)
      assert.are.equal(999000, info.stdout_dropped)
      -- a cap on a file alone: C copies up to the cap
      info = proc.spawn { cmd = "printf 0123456789", shell = true, stdout = { file = dir .. "/f", cap = 4 } }:wait()
      assert.are.equal("0123", H.read_file(dir .. "/f"))
      assert.are.equal(6, info.stdout_dropped)
      -- a cap on the host's own stdout
      local r = H.run { "-e", "require'coral.proc'.spawn{ argv = {'echo', 'abcdef'}, stdout = { cap = 3 } }:wait()" }
      assert.are.equal("abc", r.stdout)
    end)

    it("keep coral's memory flat when a child floods past the cap", function()
      local script = [[
        local proc = require "coral.proc"
        local n = 0
        local p = proc.spawn { argv = { "head", "-c", "209715200", "/dev/zero" },
                               stdout = { cap = 1048576, on_data = function(d) n = n + #d end } }
        local info = p:wait()
        local hwm = io.open("/proc/self/status"):read("a"):match("VmHWM:%s*(%d+)")
        print(n, info.stdout_dropped, math.floor(collectgarbage("count")), hwm)
      ]]
      local r = H.run { "-e", script }
      assert.are.equal(0, r.code, r.stderr)
      local n, dropped, lua_kb, hwm_kb = r.stdout:match("^(%d+)\t(%d+)\t(%d+)\t(%d+)")
      assert.are.equal(1048576, tonumber(n))
      assert.are.equal(209715200 - 1048576, tonumber(dropped))
      assert.is_true(tonumber(lua_kb) < 4096, "Lua heap " .. lua_kb .. " KiB")
      assert.is_true(tonumber(hwm_kb) < 32768, "peak RSS " .. hwm_kb .. " KiB")
    end)
  end)

  describe("timeouts", function()
    it("kill the whole group, grandchildren included", function()
      local dir = H.tmpdir()
      local p = proc.spawn { cmd = "sleep 100 & echo $! > " .. dir .. "/pid; sleep 100", shell = true,
                             timeout = 0.3 }
      local info = p:wait()
      assert.are.equal("timeout", info.timed_out)
      assert.are.equal(0.3, info.timeout)
      assert.is_nil(info.idle_timeout)
      assert.are.equal("SIGTERM", info.signame)
      assert.are.equal(15, info.signal)
      assert.are.equal(128 + 15, info.code)
      assert.is_true(info.duration >= 0.3 and info.duration < 2)
      local grandchild = tonumber(H.read_file(dir .. "/pid"))
      run_until(function() return not alive(grandchild) end)
    end)

    it("send KILL after kill_grace to a group that ignores TERM", function()
      local info = proc.spawn { cmd = "trap '' TERM; sleep 100 & sleep 100", shell = true,
                                timeout = 0.2, kill_grace = 0.2 }:wait()
      assert.are.equal("timeout", info.timed_out)
      assert.are.equal("SIGKILL", info.signame)
      assert.is_true(info.duration >= 0.4 and info.duration < 2)
    end)

    it("idle_timeout fires after silence, not while output flows", function()
      local dir = H.tmpdir()
      local info = proc.spawn { cmd = "echo start; sleep 100", shell = true, idle_timeout = 0.3,
                                stdout = dir .. "/out" }:wait()
      assert.are.equal("idle", info.timed_out)
      assert.are.equal(0.3, info.idle_timeout)
      assert.are.equal("start\n", H.read_file(dir .. "/out"))  -- written by C, which watched it
      info = proc.spawn { cmd = "for i in 1 2 3 4 5 6; do echo $i; sleep 0.1; done", shell = true,
                          idle_timeout = 0.4, stdout = false }:wait()
      assert.is_nil(info.timed_out)
      assert.are.equal(0, info.code)
    end)
  end)

  describe("signals", function()
    it("kill signals the group, by name or number", function()
      local dir = H.tmpdir()
      local p = proc.spawn { cmd = "sleep 100 & echo $! > " .. dir .. "/pid; wait", shell = true }
      run_until(function() return H.read_file(dir .. "/pid") ~= nil and #H.read_file(dir .. "/pid") > 0 end)
      local grandchild = tonumber(H.read_file(dir .. "/pid"))
      assert.is_true(p:kill())  -- TERM: sh starts background jobs with INT ignored
      local info = p:wait()
      assert.are.equal("SIGTERM", info.signame)
      run_until(function() return not alive(grandchild) end)
      for _, sig in ipairs { "sigusr1", "SIGUSR1", 10 } do
        local q = proc.spawn { argv = { "sleep", "100" } }
        assert.is_true(q:kill(sig))
        assert.are.equal(10, q:wait().signal)
      end
      local ok, err, code = p:kill()
      assert.is_nil(ok)
      assert.are.equal("ESRCH", code)
      assert.matches("^kill %d+: ESRCH", err)
      local l
      ok, err = pcall(function() l = line(); p:kill("NOPE") end)
      assert.is_false(ok)
      assert.are.equal("spec/proc_spec.lua:" .. l .. ": bad argument #1 to 'kill' (unknown signal 'NOPE')", err)
    end)

    it("terminate sends TERM, then KILL after the grace", function()
      local p = proc.spawn { cmd = "trap '' TERM; sleep 100", shell = true }
      uv.sleep(50)
      assert.is_true(p:terminate(0.2))
      local info = p:wait()
      assert.are.equal("SIGKILL", info.signame)
      assert.is_nil(info.timed_out)
      assert.is_true(proc.spawn { argv = { "sleep", "100" } }:terminate(0))
    end)
  end)

  describe("exit information", function()
    it("reports CPU time and peak RSS of the child", function()
      local info = proc.spawn { argv = { H.coral, "-e", "local s = string.rep('x', 64 * 1048576); local t = os.clock(); while os.clock() - t < 0.2 do end" } }:wait()
      assert.are.equal(0, info.code)
      assert.is_true(info.cpu_seconds >= 0.15, "cpu " .. info.cpu_seconds)
      assert.is_true(info.utime > 0.1)
      assert.is_true(info.stime >= 0)
      assert.is_true(info.max_rss_kb > 64 * 1024, "rss " .. info.max_rss_kb)
    end)

    it("goes to on_exit, and the loop owns a proc with callbacks", function()
      local got
      proc.spawn { argv = { "sh", "-c", "exit 4" }, on_exit = function(info) got = info end }
      collectgarbage(); collectgarbage()  -- no reference kept: the loop holds it
      uv.run()
      assert.are.equal(4, got.code)
    end)

    it("raises an error of a callback from uv.run and p:wait", function()
      proc.spawn { argv = { "true" }, on_exit = function() error("boom in on_exit") end }
      local ok, err = pcall(uv.run)
      assert.is_false(ok)
      assert.matches("boom in on_exit", err)
      local p = proc.spawn { argv = { "echo" }, stdout = function()
        local q = proc.spawn { argv = { "true" } }
        local ok2, err2 = pcall(q.wait, q)
        q:close()
        error(ok2 and "nested wait ran" or err2)
      end }
      ok, err = pcall(p.wait, p)
      assert.is_false(ok)
      assert.matches("cannot run the loop inside a proc callback", err)
      assert.are.equal(0, p:wait().code)
    end)
  end)

  describe("standby", function()
    -- A file for the standby's record, and the spec of a standby that cats it: what the child
    -- prints shows the record was written before it ran.
    local function standby_spec(path, argv, events)
      local fd = assert(uv.fs_open(path, "a", tonumber("600", 8)))
      local out = {}
      return {
        spawn = { argv = argv or { "cat", path }, stdout = collect(out),
                  on_exit = function(info) events[#events + 1] = "B exit " .. info.code end },
        fd = fd, record = '{"event":"spawn","t":',
        on_start = function(p, err, code)
          events[#events + 1] = p and "B started" or ("B failed " .. code .. ": " .. err)
        end,
      }, fd, out
    end

    it("starts at a clean exit, its record written first, before the exit's own callbacks", function()
      local dir, events = H.tmpdir(), {}
      local spec, fd, out = standby_spec(dir .. "/journal", nil, events)
      local before = require("coral.fsutil").now()
      assert.is_false(proc.standby(spec))
      proc.spawn { argv = { "true" }, standby = true,
                   on_reaped = function() events[#events + 1] = "A reaped" end,
                   on_exit = function() events[#events + 1] = "A exit" end }
      run_until(function() return #events == 4 end)
      uv.fs_close(fd)
      assert.are.same({ "B started", "A reaped", "A exit", "B exit 0" }, events)
      local t = tonumber(table.concat(out):match('^{"event":"spawn","t":([%d.]+)}\n$'))
      assert.truthy(t, table.concat(out))
      assert.is_true(t >= before - 0.001 and t <= require("coral.fsutil").now())
      assert.is_false(proc.standby(nil))   -- used up
    end)

    it("waits through exits that are not clean, and a child without the option", function()
      local dir, events = H.tmpdir(), {}
      local spec, fd = standby_spec(dir .. "/journal", nil, events)
      proc.standby(spec)
      local ends = 0
      local function ended() ends = ends + 1 end
      proc.spawn { argv = { "sh", "-c", "exit 1" }, standby = true, on_exit = ended }
      proc.spawn { argv = { "sh", "-c", "kill -TERM $$" }, standby = true, on_exit = ended }
      proc.spawn { argv = { "sleep", "5" }, standby = true, timeout = 0.05, on_exit = ended }
      proc.spawn { argv = { "true" }, on_exit = ended }
      local p = proc.spawn { argv = { "sleep", "5" }, standby = true, on_exit = ended }
      p:terminate()
      run_until(function() return ends == 5 end)
      assert.are.same({}, events)
      assert.are.equal("", H.read_file(dir .. "/journal"))
      assert.is_true(proc.standby(nil))   -- still there, until taken down
      assert.is_false(proc.standby(nil))
      uv.fs_close(fd)
    end)

    it("reports a record it cannot write, and a start that fails, to on_start", function()
      local dir, events = H.tmpdir(), {}
      -- a descriptor open for reading only: the write fails, and nothing starts
      H.write_file(dir .. "/journal", "")
      local spec = standby_spec(dir .. "/other", nil, events)
      uv.fs_close(spec.fd)
      spec.fd = assert(uv.fs_open(dir .. "/journal", "r", 0))
      proc.standby(spec)
      proc.spawn { argv = { "true" }, standby = true, on_exit = function() end }
      run_until(function() return #events == 1 end)
      assert.are.equal("B failed EBADF: standby: write its record: EBADF: bad file descriptor", events[1])
      assert.are.equal(0, proc.live())
      uv.fs_close(spec.fd)
      -- a program that is not there: the record is written (as before any start), the start fails
      events = {}
      local spec2, fd2 = standby_spec(dir .. "/journal2", { "/nonexistent/coral-prog" }, events)
      proc.standby(spec2)
      proc.spawn { argv = { "true" }, standby = true, on_exit = function() end }
      run_until(function() return #events == 1 end)
      uv.fs_close(fd2)
      assert.matches("^B failed ENOENT: spawn /nonexistent/coral%-prog", events[1])
      assert.matches('^{"event":"spawn","t":[%d.]+}\n$', H.read_file(dir .. "/journal2"))
    end)

    it("refuses a spec it cannot use", function()
      local function err_of(spec)
        local ok, err = pcall(proc.standby, spec)
        assert.is_false(ok)
        return err
      end
      local base = { spawn = { argv = { "true" } }, fd = 1, record = "{", on_start = function() end }
      local function with(k, v)
        local t = {}
        for key, val in pairs(base) do t[key] = val end
        t[k] = v
        return t
      end
      assert.matches("unknown key 'bogus'", err_of(with("bogus", 1)))
      assert.matches("'spawn' must be", err_of(with("spawn", "true")))
      assert.matches("'on_start' must be a function", err_of(with("on_start", nil)))
      assert.matches("'fd' must be", err_of(with("fd", -1)))
      assert.matches("'record' must be a string", err_of(with("record", 3)))
      assert.is_false(proc.standby(nil))
      -- the option on a spawn is a boolean
      local ok, err = pcall(proc.spawn, { argv = { "true" }, standby = "yes" })
      assert.is_false(ok)
      assert.matches("option 'standby': boolean expected", err)
    end)
  end)

  describe("host_batch", function()
    -- A process's scheduling policy, field 41 of its stat: 0 SCHED_OTHER, 3 BATCH, 5 IDLE.
    local function policy_in(stat)
      local fields = {}
      for f in stat:match("^%d+ %b() (.*)$"):gmatch("%S+") do fields[#fields + 1] = f end
      return tonumber(fields[39])   -- (the fields after the name start at the third)
    end
    local function child_policy(argv)
      local out = {}
      local info = proc.spawn { argv = argv, stdout = collect(out) }:wait()
      assert.are.equal(0, info.code)
      return table.concat(out)
    end

    it("makes the host SCHED_BATCH, starts its children SCHED_OTHER, and puts it back", function()
      assert.are.equal(0, policy_in(H.read_file("/proc/thread-self/stat")))
      assert.is_true(proc.host_batch(true))
      finally(function() proc.host_batch(false) end)
      assert.are.equal(3, policy_in(H.read_file("/proc/thread-self/stat")))
      assert.is_false(proc.host_batch(true))   -- already
      assert.are.equal(0, policy_in(child_policy { "cat", "/proc/self/stat" }))
      -- (a shell's own child too: the program's, not a policy each exec resets)
      assert.are.equal(0, policy_in(child_policy { "sh", "-c", "cat /proc/self/stat" }))
      assert.is_true(proc.host_batch(false))
      assert.is_false(proc.host_batch(false))
      assert.are.equal(0, policy_in(H.read_file("/proc/thread-self/stat")))
      assert.are.equal(0, policy_in(child_policy { "cat", "/proc/self/stat" }))
    end)

    it("leaves a policy the user chose, for the host and its children", function()
      -- coral under chrt's SCHED_IDLE: host_batch does nothing, and a child keeps IDLE
      local script = "local proc = require 'coral.proc'; local out = {}; " ..
        "local switched = proc.host_batch(true); " ..
        "proc.spawn { argv = { 'cat', '/proc/self/stat' }, stdout = function(c) out[#out + 1] = c end }:wait(); " ..
        "io.write(tostring(switched), '\\n', table.concat(out))"
      local text = child_policy { "chrt", "-i", "0", H.coral, "-e", script }
      local switched, stat = text:match("^(%a+)\n(.*)$")
      assert.are.equal("false", switched)
      assert.are.equal(5, policy_in(stat))
    end)
  end)

  describe("lifetime", function()
    it("close kills the group and makes the proc unusable", function()
      local p = proc.spawn { argv = { "sleep", "100" } }
      assert.are.equal(1, proc.live())
      p:close()
      p:close()
      assert.matches("closed", tostring(p))
      local ok, err = pcall(p.wait, p)
      assert.is_false(ok)
      assert.matches("attempt to use a closed proc", err)
      run_until(function() return proc.live() == 0 end)
      do
        local q <close> = proc.spawn { argv = { "sleep", "100" } }
        assert.matches("^coral.proc %(pid %d+, running%)$", tostring(q))
      end
      run_until(function() return proc.live() == 0 end)
    end)

    it("reaps a running proc that was garbage-collected", function()
      local dir = H.tmpdir()
      do proc.spawn { cmd = "sleep 100 & echo $! > " .. dir .. "/pid; wait", shell = true } end
      run_until(function() return (H.read_file(dir .. "/pid") or "") ~= "" end)
      local grandchild = tonumber(H.read_file(dir .. "/pid"))
      collectgarbage(); collectgarbage()
      run_until(function() return proc.live() == 0 end)
      run_until(function() return not alive(grandchild) end)
    end)

    it("starts 1000 short children back to back without leaking fds or zombies", function()
      local before = open_fds()
      local started, done, max_live = 0, 0, 0
      local function start()
        started = started + 1
        assert(proc.spawn { argv = { "true" }, stdout = false, on_exit = function(info)
          assert(info.code == 0)
          done = done + 1
          if started < 1000 then start() end
        end })
        if proc.live() > max_live then max_live = proc.live() end
      end
      for _ = 1, 50 do start() end
      uv.run()
      assert.are.equal(1000, done)
      assert.are.equal(0, proc.live())
      assert.is_true(max_live >= 2)
      collectgarbage(); collectgarbage()
      assert.are.equal(before, open_fds())
    end)

    it("lets timers fire while short children exit back to back", function()
      -- Each exit starts the next child at once, as a runner's pump does: the loop must still
      -- come round (libuv goes on reading its signal pipe while each read fills its buffer, and
      -- a reaping round run there kept it in one poll for as long as the children came).
      local t0, ticks, reaps, live_chains = uv.hrtime(), {}, 0, 0
      local function chain()
        live_chains = live_chains + 1
        assert(proc.spawn { argv = { "true" }, stdout = false, timeout = 60, on_exit = function()
          reaps = reaps + 1
          live_chains = live_chains - 1
          if uv.hrtime() - t0 < 1.5e9 then chain() end
        end })
      end
      local timer = uv.new_timer()
      timer:start(100, 100, function() ticks[#ticks + 1] = (uv.hrtime() - t0) / 1e9 end)
      for _ = 1, 8 do chain() end
      while live_chains > 0 do uv.run("once") end
      timer:close()
      uv.run("nowait")
      assert.is_true(reaps > 100, "too few children: " .. reaps)
      assert.is_true(#ticks >= 8, string.format("a 100 ms timer fired %d times in 1.5 s", #ticks))
      assert.is_true(ticks[1] < 0.5, string.format("its first tick came at %.2f s", ticks[1]))
    end)

    it("calls on_reaped with the pid as soon as the child is reaped, before on_exit", function()
      local order = {}
      -- the background job holds stdout: on_exit waits for it, on_reaped does not
      local p = proc.spawn { cmd = "setsid sleep 0.5 & sleep 0.1; echo started", shell = true, stdout = function() end,
        on_reaped = function(pid) order[#order + 1] = { "reaped", pid, uv.hrtime() } end,
        on_exit = function() order[#order + 1] = { "exit", nil, uv.hrtime() } end }
      local t0 = uv.hrtime()
      p:wait()
      assert.are.same({ "reaped", p.pid }, { order[1][1], order[1][2] })
      assert.are.equal("exit", order[2][1])
      assert.is_true((order[1][3] - t0) / 1e9 < 0.4, "on_reaped waited for the pipe")
      assert.is_true((order[2][3] - t0) / 1e9 >= 0.4, "on_exit did not wait for the pipe")
      local ok, err = pcall(proc.spawn, { argv = { "true" }, on_reaped = 1 })
      assert.is_false(ok)
      assert.matches("option 'on_reaped': function expected, got number", err)
    end)

    it("adopts what a child left running outside its group, reaps it, and kills it at exit", function()
      local dir = H.tmpdir()
      -- a double fork into a new session: the parent is gone at once, the grandchild stays
      -- (the short sleep lets setsid happen before the group goes with its leader)
      local p = proc.spawn { cmd = "(setsid sleep 100 & echo $! > " .. dir .. "/pid; sleep 0.1)", shell = true }
      p:wait()
      local pid = tonumber(H.read_file(dir .. "/pid"))
      local stat = H.read_file("/proc/" .. pid .. "/stat")
      assert.are.equal(uv.os_getpid(), tonumber(stat:match("^%d+ %(.*%) %S (%d+)")), "not re-parented to coral")
      assert.are.same({ pid }, proc.adopted())
      assert.are.equal(0, proc.live())
      -- killed, it is reaped by the next look (no zombie stays)
      uv.kill(pid, "sigkill")
      run_until(function() return #proc.adopted() == 0 end)
      assert.is_nil(H.read_file("/proc/" .. pid .. "/stat"))
      -- and at the host's exit, every adopted process still running is killed
      local pidfile = dir .. "/pid2"
      local r = H.run({ "-e", "local p = require'coral.proc'.spawn { cmd = '(setsid sh -c \"trap \\\"\\\" TERM; " ..
        "sleep 100\" & echo $! > " .. pidfile .. "; sleep 0.1)', shell = true }; p:wait()" ..
        "; assert(#require'coral.proc'.adopted() == 1)" })
      assert.are.equal(0, r.code, r.stderr)
      local escapee = tonumber(H.read_file(pidfile))
      run_until(function() return not alive(escapee) end)
    end)

    it("leaves luv's children to libuv, a detached one (in a session of its own) too", function()
      local dir = H.tmpdir()
      -- an adopted process, so that the scan looks at the candidates outside coral's group
      proc.spawn { cmd = "(setsid sleep 100 & echo $! > " .. dir .. "/pid; sleep 0.1)", shell = true }:wait()
      local orphan = tonumber(H.read_file(dir .. "/pid"))
      local code
      local handle, pid
      handle, pid = uv.spawn("sh", { args = { "-c", "sleep 0.2; exit 7" }, detached = true }, function(c)
        code = c
        handle:close()
      end)
      assert.are.same({ orphan }, proc.adopted())
      -- exited and not reaped by libuv yet: adopted() must not steal it
      local deadline = uv.hrtime() + 5e9
      while (H.read_file("/proc/" .. pid .. "/stat") or ""):match("^%d+ %(.*%) (%S)") ~= "Z" and uv.hrtime() < deadline do
        uv.sleep(5)
      end
      assert.are.same({ orphan }, proc.adopted())
      run_until(function() return code ~= nil end)
      assert.are.equal(7, code)
      uv.kill(orphan, "sigkill")
      run_until(function() return #proc.adopted() == 0 end)
    end)

    it("leaves nothing running when the host ends, errors or exits", function()
      local dir = H.tmpdir()
      for i, tail in ipairs { "", "error('script failed')", "os.exit(3)" } do
        local pidfile = dir .. "/pid" .. i
        local script = "local proc = require 'coral.proc'\n" ..
          "local p = proc.spawn { cmd = 'sleep 100 & echo $! > " .. pidfile .. "; sleep 100', shell = true }\n" ..
          "local q = proc.spawn { argv = { 'sleep', '100' }, on_exit = function() end, timeout = 100 }\n" ..
          "while (io.open('" .. pidfile .. "') or io.open('/dev/null')):read('a') == '' do require'luv'.sleep(5) end\n" ..
          "if " .. tostring(i == 1) .. " then q:close() end\n" .. tail
        local t0 = uv.hrtime()
        local r = H.run({ "-e", script })
        assert.are.equal(({ 0, 2, 3 })[i], r.code, r.stderr)
        assert.is_true((uv.hrtime() - t0) / 1e9 < 10)
        local grandchild = tonumber(H.read_file(pidfile))
        run_until(function() return not alive(grandchild) end)
      end
    end)
  end)
end)
