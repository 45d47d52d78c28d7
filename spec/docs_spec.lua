-- Runs every `-- example` block of the docs, so the documentation cannot drift from the code.
local H = require("spec.helper").guard(_ENV)

local DOCS = { "README.md", "docs/runner.md", "docs/dag.md", "docs/report.md" }

for _, doc in ipairs(DOCS) do
  describe(doc, function()
    local text = assert(H.read_file(H.root .. "/" .. doc))
    for block in text:gmatch("```lua\n(.-)```") do
      local name = block:match("^%-%- example: ([^\n]+)")
      if name then
        it("example '" .. name .. "' runs", function()
          local dir = H.tmpdir()
          local r = H.run({ "-" }, { stdin = block, cwd = dir })
          assert.are.equal(0, r.code, r.stderr)
        end)
      end
    end
  end)
end
