-- The coral command line: scripts, -e, -l, stdin, --version, --help, and how errors are reported.
local H = require("spec.helper").guard(_ENV)

describe("coral command line", function()
  it("runs -e code with luv, cjson and coral loaded from the binary", function()
    local r = H.run { "-e", 'print(require"luv".version_string(), require"cjson".encode{a=1}, require"coral".version)' }
    assert.are.equal(0, r.code)
    assert.matches("^1%.%d+%.%d+\t{\"a\":1}\t%d+%.%d+%.%d+\n$", r.stdout)
  end)

  it("runs a script with arg and ... set", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/s.lua", "print(arg[0], arg[1], arg[2], select('#', ...), ...)")
    local r = H.run { dir .. "/s.lua", "x", "y z" }
    assert.are.equal(0, r.code)
    assert.are.equal(dir .. "/s.lua\tx\ty z\t2\tx\ty z\n", r.stdout)
  end)

  it("reads a script from stdin with -", function()
    local r = H.run({ "-", "a" }, { stdin = "print('from stdin', ...)" })
    assert.are.equal(0, r.code)
    assert.are.equal("from stdin\ta\n", r.stdout)
  end)

  it("runs stdin when it is not a terminal and no script is given", function()
    local r = H.run({}, { stdin = "print(1 + 1)" })
    assert.are.equal("2\n", r.stdout)
  end)

  it("requires a module with -l", function()
    local r = H.run { "-l", "cjson", "-e", "print(cjson.encode{1})" }
    assert.are.equal(0, r.code)
    assert.are.equal("[1]\n", r.stdout)
  end)

  it("prints its version", function()
    for _, flag in ipairs { "-v", "--version" } do
      local r = H.run { flag }
      assert.are.equal(0, r.code)
      assert.matches("^coral %d+%.%d+%.%d+ %(Lua 5%.4", r.stdout)
    end
  end)

  it("lists every option in --help", function()
    local r = H.run { "--help" }
    assert.are.equal(0, r.code)
    for _, opt in ipairs { "-e CODE", "-l MOD", "-i", "--version", "--help", "--dev", "--" } do
      assert.truthy(r.stdout:find(opt, 1, true), "missing from help: " .. opt)
    end
  end)

  it("reports a syntax error with file:line and exits 2", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/bad.lua", "local x = 1\nlocal y = = 2\n")
    local r = H.run { dir .. "/bad.lua" }
    assert.are.equal(2, r.code)
    assert.matches("bad%.lua:2: unexpected symbol near '='", r.stderr)
  end)

  it("reports a runtime error with file:line and a traceback, and exits 2", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/boom.lua", "local function f()\n  error('boom')\nend\nf()\n")
    local r = H.run { dir .. "/boom.lua" }
    assert.are.equal(2, r.code)
    assert.matches("^[^\n]*boom%.lua:2: boom\nstack traceback:\n", r.stderr)
    assert.matches("boom%.lua:4: in main chunk", r.stderr)
  end)

  it("reports an error raised in an event-loop callback as the script's error", function()
    local r = H.run { "-e", "local uv = require'luv'; local t = uv.new_timer()\n" ..
                            "t:start(1, 0, function() t:close(); error('late') end)" }
    assert.are.equal(2, r.code)
    assert.matches("%(command line%):2: late\nstack traceback:", r.stderr)
  end)

  it("reports a missing script and exits 2", function()
    local r = H.run { "/nonexistent/script.lua" }
    assert.are.equal(2, r.code)
    assert.are.equal("coral: cannot open /nonexistent/script.lua: No such file or directory\n", r.stderr)
  end)

  it("rejects an unknown option in one line and exits 2", function()
    local r = H.run { "--frobnicate" }
    assert.are.equal(2, r.code)
    assert.are.equal("coral: unrecognized option '--frobnicate' (try 'coral --help')\n", r.stderr)
    r = H.run { "-e" }
    assert.are.equal(2, r.code)
    assert.are.equal("coral: option '-e' needs an argument (try 'coral --help')\n", r.stderr)
  end)

  it("passes os.exit codes through", function()
    assert.are.equal(7, H.run({ "-e", "os.exit(7)" }).code)
    assert.are.equal(1, H.run({ "-e", "os.exit(false)" }).code)
  end)

  it("runs the event loop after the main chunk until nothing is pending", function()
    local r = H.run { "-e", "local uv = require'luv'; local t = uv.new_timer()\n" ..
                            "t:start(20, 0, function() print('fired'); t:close() end); print('main')" }
    assert.are.equal(0, r.code)
    assert.are.equal("main\nfired\n", r.stdout)
  end)

  it("runs when the binary is copied alone to another folder", function()
    local dir = H.tmpdir()
    local copy = dir .. "/coral"
    H.write_file(copy, H.read_file(H.coral), tonumber("755", 8))
    local r = H.run({ "-e", 'print(require"coral".version)' }, { exe = copy, cwd = dir })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("^%d+%.%d+%.%d+\n$", r.stdout)
  end)

  it("takes modules from a source tree with CORAL_LUA_PATH", function()
    local dir = H.tmpdir()
    require("luv").fs_mkdir(dir .. "/lua", tonumber("755", 8))
    require("luv").fs_mkdir(dir .. "/lua/coral", tonumber("755", 8))
    H.write_file(dir .. "/lua/coral/init.lua", "return { version = 'from-tree' }")
    local env = { "CORAL_LUA_PATH=" .. dir, "PATH=/usr/bin:/bin" }
    local r = H.run({ "-e", 'print(require"coral".version)' }, { env = env })
    assert.are.equal("from-tree\n", r.stdout)
  end)

  it("does not let a coral.lua in the working directory replace its own modules", function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/coral.lua", "return { version = 'impostor' }")
    local r = H.run({ "-e", 'print(require"coral".version)' }, { cwd = dir })
    assert.matches("^%d+%.%d+%.%d+\n$", r.stdout)
  end)
end)
