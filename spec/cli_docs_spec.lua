-- The command line and its docs come from one declaration (lua/coral/cli/commands.lua and
-- lua/coral/run/options.lua): --help, the man page's COMMANDS and the runner options table.
local H = require "spec.helper"
local commands = require "coral.cli.commands"
local options = require "coral.run.options"

describe("the command line's declarations", function()
  it("are the man page's COMMANDS section (scripts/manpage.lua writes it)", function()
    local page = assert(H.read_file(H.root .. "/docs/coral.1"))
    local section = page:match("(%.SH COMMANDS\n.-)%.SH ENVIRONMENT\n")
    assert.are.equal(commands.man_commands(), section,
      "docs/coral.1 is out of date: run build/coral --dev scripts/manpage.lua docs/coral.1")
  end)

  it("name every runner option in docs/runner.md's table, with its flag", function()
    local doc = assert(H.read_file(H.root .. "/docs/runner.md"))
    doc = assert(doc:match("\n| option | flag | default | meaning |\n.-\n\n"), "no runner options table")
    for _, o in ipairs(options.LIST) do
      local row = doc:match("\n| `" .. o.key .. "` |([^\n]*)")
      assert.truthy(row, "docs/runner.md has no row for the runner option " .. o.key)
      if o.flag then
        local label = o.flag .. (o.value:sub(1, 1) == "[" and "" or " ") .. o.value   -- --force[=ID,...]
        assert.truthy(row:find("`" .. label .. "`", 1, true),
          "docs/runner.md: the row of " .. o.key .. " does not give its flag " .. o.flag)
      end
    end
  end)

  it("and the state words of coral.records.states are the tables of docs/runner.md's States", function()
    local doc = assert(H.read_file(H.root .. "/docs/runner.md"))
    local section = assert(doc:match("\n## States\n(.-)\n## "), "no States section")
    local states = require "coral.records.states"
    for _, group in ipairs { "TASK", "ATTEMPT", "RUN" } do
      for word in pairs(states[group]) do
        assert.truthy(section:find("\n| `" .. word .. "`", 1, true) or section:find(", `" .. word .. "` |", 1, true),
          "docs/runner.md's States does not name the " .. group:lower() .. " state " .. word)
      end
    end
  end)

  it("give each command's --help every option it parses, and a usage error for the others", function()
    for _, c in ipairs(commands.LIST) do
      local r = H.run { c.name, "--help" }
      assert.are.equal(0, r.code, c.name)
      for _, o in ipairs(c.options) do
        assert.truthy(r.stdout:find(o.flag, 1, true), c.name .. " --help does not list " .. o.flag)
      end
      local bad = H.run { c.name, "--no-such-option" }
      assert.are.equal(2, bad.code, c.name)
      assert.are.equal("coral: unknown option '--no-such-option' (try 'coral " .. c.name .. " --help')\n", bad.stderr)
    end
  end)

  it("turn coral run's flags into runner options", function()
    local opts = assert(commands.parse({ "--max-workers", "3", "--no-retry", "--quiet", "--kill-grace=1.5",
                                         "--mode", "phased" }, commands.RUN_OPTIONS))
    local r = assert(commands.runner_options(opts))
    assert.are.same({ max_workers = 3, retry_failed = false, output = "quiet", kill_grace = 1.5, mode = "phased" }, r)
    local _, err = commands.runner_options { on_failure = "later" }
    assert.are.equal("option '--on-failure': on_failure must be one of skip, stop, continue, got 'later'", err)
    _, err = commands.runner_options { max_workers = 0 }
    assert.are.equal("option '--max-workers' must be at least 1, got 0", err)
  end)
end)
