-- Rewrites the COMMANDS section of docs/coral.1 from the commands' declarations
-- (lua/coral/cli/commands.lua).   usage: build/coral --dev scripts/manpage.lua docs/coral.1
local path = assert(arg[1], "usage: coral --dev scripts/manpage.lua docs/coral.1")
local f = assert(io.open(path, "rb"))
local page = f:read("a")
f:close()
local head, tail = page:match("^(.-)%.SH COMMANDS\n.-(%.SH ENVIRONMENT\n.*)$")
assert(head, path .. ": no COMMANDS section followed by ENVIRONMENT")
local text = head .. require("coral.cli.commands").man_commands() .. tail
f = assert(io.open(path .. ".tmp", "wb"))
f:write(text)
f:close()
assert(os.rename(path .. ".tmp", path))
