-- Agent roles: the built-in library, project and Claude Code overrides, `coral agents`.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local agents = require "coral.agents"

local BUILT_IN = {
  "project-architect", "technical-writer", "database-specialist", "api-designer", "ui-designer",
  "backend-developer", "frontend-developer", "full-stack-engineer", "qa-testing", "devops-deployment",
  "security-specialist", "accessibility-specialist", "ai-ml-specialist", "performance-engineer",
  "mobile-developer", "data-engineer", "site-reliability-engineer",
}

local function mkdirs(base, ...)
  local path = base
  for _, part in ipairs { ... } do
    path = path .. "/" .. part
    uv.fs_mkdir(path, 493)
  end
  return path
end

-- A home dir with no ~/.claude/agents, so the user's own subagents do not leak in.
local function clean_env(home)
  return { "PATH=" .. os.getenv("PATH"), "HOME=" .. home, "CORAL_SPEC_MARK=" .. os.getenv("CORAL_SPEC_MARK") }
end

local REVIEWER = [[
---
name: reviewer
description: "Reviews code for defects: correctness, security, clarity"
tools: Read, Grep, Glob
model: sonnet
---

You are REVIEWER-ROLE-TEXT, a meticulous code reviewer. Report findings with line numbers.
]]

describe("agent roles", function()
  it("lists every built-in role with `coral agents`, and prints one with `agents show`", function()
    local home = H.tmpdir()
    local r = H.run({ "agents" }, { env = clean_env(home), cwd = home })
    assert.are.equal(0, r.code, r.stderr)
    for _, id in ipairs(BUILT_IN) do assert.matches("\n?" .. id:gsub("%-", "%%-") .. "%s", r.stdout) end
    local n = select(2, r.stdout:gsub("\n", ""))
    assert.are.equal(#BUILT_IN, n)
    r = H.run({ "agents", "show", "technical-writer" }, { env = clean_env(home), cwd = home })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("^id: technical%-writer\nname: Technical Writer\n", r.stdout)
    assert.matches("Phase 1, requirements", r.stdout)
    assert.matches("Phase 2, user documentation", r.stdout)
    r = H.run({ "agents", "show", "nobody" }, { env = clean_env(home), cwd = home })
    assert.are.equal(2, r.code)
    assert.matches("unknown agent role 'nobody' %(known: accessibility%-specialist, ", r.stderr)
  end)

  it("gives every built-in role an id, a name, a description and a prompt of its own", function()
    local roles = agents.load(H.tmpdir())
    local prompts = {}
    for _, id in ipairs(BUILT_IN) do
      local role = roles[id]
      assert.truthy(role, id)
      assert.are.equal("built-in", role.kind)
      assert.truthy(role.name and role.name ~= "", id)
      assert.truthy(#role.description > 20, id)
      assert.truthy(#role.prompt > 400, id)
      assert.is_nil(prompts[role.prompt], id .. " has the same prompt as " .. tostring(prompts[role.prompt]))
      prompts[role.prompt] = id
    end
  end)

  it("uses a Claude Code subagent in .claude/agents as a role, unchanged", function()
    local dir, home = H.tmpdir(), H.tmpdir()
    H.write_file(mkdirs(dir, ".claude", "agents") .. "/reviewer.md", REVIEWER)
    local r = H.run({ "agents", "--dir", dir }, { env = clean_env(home), cwd = home })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("\nreviewer%s+Reviews code for defects: correctness, security, clarity %[claude%]\n", r.stdout)
    local role = assert(agents.get("reviewer", dir))
    assert.are.same({ "Read", "Grep", "Glob" }, role.tools)
    assert.are.equal("sonnet", role.model)
    -- A plan whose task's agent is `reviewer` gets the subagent's prompt as its role.
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
return coral.plan { coral.task("reviewer", "Review main.c") }
]])
    r = H.run({ dir .. "/plan.lua", "a C tool", "--dir", dir, "--agent", "prompt", "--quiet" },
              { env = clean_env(home), cwd = home })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local runs = dir .. "/.coral/runs"
    local run = uv.fs_scandir_next(uv.fs_scandir(runs))
    local prompt = H.read_file(runs .. "/" .. run .. "/tasks/reviewer/prompt.md")
    assert.matches("^# Role\n\nYou are REVIEWER%-ROLE%-TEXT, a meticulous code reviewer", prompt)
    assert.matches("# Your task\n\nReview main.c\n", prompt)
  end)

  it("lets .coral/agents override a built-in role and .claude/agents, and says where each came from", function()
    local dir = H.tmpdir()
    H.write_file(mkdirs(dir, ".claude", "agents") .. "/qa.md", "---\nname: qa-testing\ndescription: from claude\n---\nCLAUDE QA\n")
    H.write_file(mkdirs(dir, ".coral", "agents") .. "/qa-testing.md",
                 "---\nid: qa-testing\nname: QA\ndescription: ours\n---\nOUR QA PROMPT\n")
    local role = assert(agents.get("qa-testing", dir))
    assert.are.equal("OUR QA PROMPT", role.prompt)
    assert.are.equal("project", role.kind)
    local text, r2 = agents.resolver(dir)({ agent = "QA_Testing" })
    assert.are.equal("OUR QA PROMPT", text)
    assert.are.equal(role.source, r2.source)
    assert.is_nil((agents.resolver(dir)({ agent = "no-such-role" })))
  end)

  it("reads the YAML that role files use: quotes, block scalars, lists", function()
    local role = assert(agents.parse([[
---
name: 'it''s'
description: >
  folded over
  two lines
tools:
  - Read
  - "Edit"
model: inherit   # a comment
---
Body text.
]], "x.md", "x"))
    assert.are.equal("it's", role.id)
    assert.are.equal("folded over two lines", role.description)
    assert.are.same({ "Read", "Edit" }, role.tools)
    assert.are.equal("inherit", role.model)
    assert.are.equal("Body text.", role.prompt)
    local plain = assert(agents.parse("Just a prompt.\n", "plain.md", "plain"))
    assert.are.equal("plain", plain.id)
    assert.are.equal("Just a prompt.", plain.prompt)
    local bad, err = agents.parse("---\nname reviewer\n---\nx\n", "bad.md", "bad")
    assert.is_nil(bad)
    assert.are.equal("bad.md:2: front matter: expected 'key: value', got 'name reviewer'", tostring(err))
  end)

  it("reads a Claude Code subagent's YAML: continued scalars, lists at column 0, nested blocks", function()
    local role = assert(agents.parse([[
---
name: reviewer
description: Reviews code
  for defects
tools:
- Read
- Grep
color: purple
hooks:
  PreToolUse:
    - matcher: "Bash"
      hooks:
        - type: command
mcpServers:
  - name: x
    url: y
---
Body.
]], "r.md", "r", true))
    assert.are.equal("Reviews code for defects", role.description)
    assert.are.same({ "Read", "Grep" }, role.tools)
    assert.are.equal("purple", role.fields.color)
    assert.are.equal("Body.", role.prompt)
    -- a line that only looks like the closing '---' does not end the front matter
    role = assert(agents.parse("---\ndescription: a---b\n---\nBody.\n", "d.md", "d"))
    assert.are.equal("a---b", role.description)
  end)
end)

-- A project with .coral/agents/NAME (or .claude/agents/NAME) holding `text`; the coral command
-- `args` run in it with a clean home. Returns the result and the project dir.
local function role_project(sub, name, text)
  local dir = H.tmpdir()
  H.write_file(mkdirs(dir, sub, "agents") .. "/" .. name, text)
  return dir, clean_env(H.tmpdir())
end

local function with_role_file(sub, name, text, args)
  local dir, env = role_project(sub, name, text)
  return H.run(args, { env = env, cwd = dir }), dir
end

-- Role files with a mistake, the line of it and what the error says.
local BROKEN = {
  { "---\nname: qa-testing\ndescripton: tests\n---\nX\n", 3,
    "unknown key 'descripton' %(did you mean 'description'%? a role file's keys: description, driver, id, " ..
    "model, name, tools; a Claude Code subagent, with keys of its own, goes in %.claude/agents/%)" },
  { "---\nname: qa-testing\ndescription:\n  - a\n  - b\n---\nX\n", 3, "description must be text, got a list" },
  { "---\nname: qa-testing\ndescription: tests\n\nX\n", 1,
    "the front matter that starts here is not closed: no '%-%-%-' line after it" },
  { "---\nid: qa-testing\nmodel: a\nname qa\n---\nX\n", 4, "front matter: expected 'key: value', got 'name qa'" },
  { "---\nid: qa-testing\nmodel: a\nmodel: b\n---\nX\n", 4, "front matter: 'model' is given twice %(first on line 3%)" },
  { "---\nid: qa-testing\ndriver: bogus\n---\nX\n", 3, "driver: unknown driver 'bogus' %(known: auto, " },
}

describe("a role file with a mistake", function()
  it("stops `coral run` before it writes anything, blaming the role file's line (exit 2)", function()
    for _, case in ipairs(BROKEN) do
      local r, dir = with_role_file(".coral", "qa.md", case[1],
                                    { "run", "full_stack", "x", "--agent", "sim", "--sim-scale", "0.001" })
      assert.are.equal(2, r.code, case[3] .. ": " .. r.stdout .. r.stderr)
      assert.matches("^coral: %.coral/agents/qa%.md:" .. case[2] .. ": " .. case[3], r.stderr)
      assert.are.same({ ".coral" }, H.entries(dir))
      assert.are.same({ "agents" }, H.entries(dir .. "/.coral"))
    end
  end)

  it("stops `coral agents`, `coral agents show`, a recipe file and a script the same way", function()
    local broken = BROKEN[1]
    local pattern = "%.coral/agents/qa%.md:3: " .. broken[3]
    local r = with_role_file(".coral", "qa.md", broken[1], { "agents" })
    assert.are.equal(2, r.code)
    assert.matches("^coral: " .. pattern .. "\n$", r.stderr)
    assert.are.equal("", r.stdout)
    r = with_role_file(".coral", "qa.md", broken[1], { "agents", "show", "qa-testing" })
    assert.are.equal(2, r.code)
    assert.matches("^coral: " .. pattern, r.stderr)
    local dir, env = role_project(".coral", "qa.md", broken[1])
    H.write_file(dir .. "/recipe.lua", 'local coral = require "coral"\nreturn coral.recipe { plan = function(d)\n' ..
      '  return coral.plan { coral.task("qa-testing", d) } end }\n')
    H.write_file(dir .. "/script.lua", 'local coral = require "coral"\n' ..
      'coral.runner { driver = "sim", output = "quiet" }:execute_plan(coral.plan { coral.task("qa-testing", "t") })\n')
    r = H.run({ "recipe.lua", "x", "--agent", "sim" }, { env = env, cwd = dir })
    assert.are.equal(2, r.code)
    assert.matches("^coral: " .. pattern, r.stderr)
    r = H.run({ "script.lua" }, { env = env, cwd = dir })
    assert.are.equal(2, r.code)
    assert.matches("^" .. pattern, r.stderr)
    assert.are.same({ ".coral", "recipe.lua", "script.lua" }, H.entries(dir))
  end)

  it("in .claude/agents is blamed on it too, though keys coral does not know are Claude Code's", function()
    local r = with_role_file(".claude", "reviewer.md", "---\nname: reviewer\ncolor: blue\ndescription: x\n---\nX\n",
                             { "agents" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("\nreviewer%s+x %[claude%]\n", r.stdout)
    local dir
    r, dir = with_role_file(".claude", "reviewer.md", "---\nname: reviewer\ntools:\n  Read: yes\n---\nX\n",
                            { "run", "full_stack", "x", "--agent", "sim" })
    assert.are.equal(2, r.code)
    assert.matches("^coral: %.claude/agents/reviewer%.md:3: tools must be a list %(Read, Edit or %[Read, Edit%]%), " ..
                   "got a nested block\n$", r.stderr)
    assert.are.same({ ".claude" }, H.entries(dir))
    r = with_role_file(".claude", "reviewer.md", "---\nname: reviewer\n", { "agents" })
    assert.are.equal(2, r.code)
    assert.matches("^coral: %.claude/agents/reviewer%.md:1: the front matter that starts here is not closed", r.stderr)
  end)

  it("in the user's ~/.claude/agents is warned about and left out, as it is no project's", function()
    local dir, home = H.tmpdir(), H.tmpdir()
    assert(os.execute("mkdir -p '" .. home .. "/.claude/agents'"))
    H.write_file(home .. "/.claude/agents/broken.md", "---\nname: broken\n")
    H.write_file(home .. "/.claude/agents/fine.md", "---\nname: fine\ndescription: works\n---\nX\n")
    local r = H.run({ "agents", "--dir", dir }, { env = clean_env(home), cwd = dir })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("^coral: warning: [^\n]*/%.claude/agents/broken%.md:1: the front matter that starts here is " ..
                   "not closed[^\n]*%(this role is left out%)\n$", r.stderr)
    assert.matches("\nfine%s+works", r.stdout)
    assert.is_nil(r.stdout:find("broken", 1, true))
    r = H.run({ "run", "full_stack", "x", "--agent", "sim", "--sim-scale", "0", "--quiet", "--dir", dir },
              { env = clean_env(home), cwd = dir })
    assert.are.equal(0, r.code, r.stderr)
  end)
end)
