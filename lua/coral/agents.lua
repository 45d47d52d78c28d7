--- Agent roles: Markdown files with a front-matter header and a role prompt.
--   ---
--   id: backend-developer            (Claude Code subagents give `name` instead; either works)
--   name: Backend Developer
--   description: one line
--   driver: auto                     (hint: the driver used when the run's driver is auto)
--   model: inherit                   (hint: a model for the claude driver; inherit = the run's)
--   tools: Read, Edit                (Claude Code subagents; kept, not interpreted)
--   ---
--   The role prompt.
-- Other keys are a mistake in coral's own role files and Claude Code's own in a subagent's; a
-- mistake is an error naming the file and line (M.load).
-- Sources, later ones overriding earlier ones with the same id: the roles compiled into the
-- binary (agents/*.md; the source tree's in --dev mode), ~/.claude/agents/*.md (Claude Code
-- user subagents), then in the project: .claude/agents/*.md and .coral/agents/*.md.
local check = require "coral.check"
local fsutil = require "coral.fsutil"
local host = require "coral.host"
local uv = require "luv"

local M = {}

--- The keys of coral's own role files (agents/*.md, .coral/agents/*.md) and what each holds.
-- A Claude Code subagent (.claude/agents/*.md, ~/.claude/agents/*.md) has more (color, hooks,
-- permissionMode, ...): those are Claude Code's, kept as they are and not checked.
M.KEYS = { id = "text", name = "text", description = "text", driver = "text", model = "text", tools = "list" }

-- The metatable of a nested block (a map under a key, as Claude Code's hooks): kept as its text.
local Nested = {}

-- A role file's mistake, "path:LINE: what", as a user error (raised by load, returned by parse);
-- the path as short as it can be said from here (.coral/agents/x.md for the current project).
local function mistake(source, line, message)
  local cwd = uv.cwd()
  local path = source:gsub("^%./", "")
  if cwd and path:sub(1, #cwd + 1) == cwd .. "/" then path = path:sub(#cwd + 2) end
  return setmetatable({ where = path .. ":" .. line, message = message }, check.UserError)
end

-- {{{ front matter: the YAML that role files use in practice. Scalars (plain or quoted, also
-- over indented lines), block scalars (| and >), lists (flow [a, b] or "- item" lines) and
-- nested blocks (kept as text); blank lines and comments are skipped.

local function unquote(v)
  v = v:gsub("^%s+", ""):gsub("%s+$", "")
  local q = v:sub(1, 1)
  if (q == '"' or q == "'") and v:sub(-1) == q and #v >= 2 then
    v = v:sub(2, -2)
    if q == '"' then
      v = v:gsub('\\(.)', { n = "\n", t = "\t", ['"'] = '"', ["\\"] = "\\" })
    else
      v = v:gsub("''", "'")
    end
    return v
  end
  return (v:gsub("%s+#.*$", ""))
end

local function flow_list(v)
  local out = {}
  for item in v:sub(2, -2):gmatch("[^,]+") do
    item = unquote(item)
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

-- The value of a key whose own line is empty: a list of "- item" lines at one indentation, a
-- nested block (any other indented lines), or "".
local function block_value(block)
  local items, indent = {}, nil
  for _, line in ipairs(block) do
    if line:match("%S") then
      local ind, item = line:match("^(%s*)%-%s+(.*)$")
      if not ind or (indent and ind ~= indent) then
        return setmetatable({ text = table.concat(block, "\n") }, Nested)
      end
      indent = ind
      items[#items + 1] = unquote(item)
    end
  end
  return #items > 0 and items or ""
end

--- Parses a front-matter block whose first line is line `first` of its file (1 by default).
-- Returns the fields and the line of each (key -> line), or nil, what is wrong and its line.
function M.front_matter(text, first)
  first = first or 1
  local fields, at, lines = {}, {}, {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line:gsub("\r$", "") end
  local i = 1
  while i <= #lines do
    local line = lines[i]
    if line:match("^%s*$") or line:match("^%s*#") then
      i = i + 1
    else
      local key, value = line:match("^([%w_%-]+)%s*:%s*(.-)%s*$")
      if not key then
        return nil, string.format("front matter: expected 'key: value', got '%s'", line), first + i - 1
      end
      if at[key] then
        return nil, string.format("front matter: '%s' is given twice (first on line %d)", key, at[key]), first + i - 1
      end
      at[key] = first + i - 1
      i = i + 1
      -- The lines that belong to the key: indented ones, blank ones, and "- item" lines under a
      -- key with no value on its own line (YAML lets a list start at column 0).
      local block = {}
      while i <= #lines and (lines[i]:match("^%s") or lines[i] == "" or (value == "" and lines[i]:match("^%-%s"))) do
        block[#block + 1] = lines[i]
        i = i + 1
      end
      local trimmed = {}
      for _, b in ipairs(block) do
        if b:match("%S") then trimmed[#trimmed + 1] = (b:gsub("^%s+", "")) end
      end
      if value:match("^[|>][-+]?%d?$") then
        local sep = value:sub(1, 1) == "|" and "\n" or " "
        local kept = {}
        for _, b in ipairs(block) do kept[#kept + 1] = b:gsub("^%s+", "") end
        fields[key] = (table.concat(kept, sep):gsub("%s+$", ""))
      elseif value == "" then
        fields[key] = block_value(block)
      elseif value:match("^%[") then
        local whole = table.concat({ value, table.unpack(trimmed) }, " "):gsub("%s+#[^%]]*$", "")
        if not whole:match("%]$") then
          return nil, string.format("front matter: the list of '%s' has no closing ']'", key), at[key]
        end
        fields[key] = flow_list(whole)
      else
        -- a scalar, continued on indented lines (YAML folds them with spaces)
        fields[key] = unquote(table.concat({ value, table.unpack(trimmed) }, " "))
      end
    end
  end
  return fields, at
end

-- }}}

-- What a field's value is, for "must be text, got ...".
local function kind_of(v)
  if getmetatable(v) == Nested then return "a nested block" end
  return type(v) == "table" and "a list" or "text"
end

-- The first mistake in the fields of a role file (its keys in the order of their lines), or nil.
-- `claude`: a Claude Code subagent, whose keys coral does not know are Claude Code's.
local function fields_error(fields, at, source, claude)
  local keys, known = {}, {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return at[a] < at[b] end)
  for k in pairs(M.KEYS) do known[#known + 1] = k end
  table.sort(known)
  for _, k in ipairs(keys) do
    local want, v = M.KEYS[k], fields[k]
    if not want and not claude then
      local near = check.nearest(k, known)
      return mistake(source, at[k], string.format("unknown key '%s' (%sa role file's keys: %s; a Claude Code " ..
        "subagent, with keys of its own, goes in .claude/agents/)", k, near and ("did you mean '" .. near .. "'? ") or "",
        table.concat(known, ", ")))
    elseif want == "text" and type(v) ~= "string" then
      return mistake(source, at[k], string.format("%s must be text, got %s", k, kind_of(v)))
    elseif want == "list" and getmetatable(v) == Nested then
      return mistake(source, at[k], string.format("%s must be a list (Read, Edit or [Read, Edit]), got %s",
                                                  k, kind_of(v)))
    end
  end
  return nil
end

--- Parses a role file. `fallback_id` (the file's base name) is used when the header names no
-- id; `claude`: the file is a Claude Code subagent, whose other keys are kept unchecked.
-- Returns the role { id, name, description, driver, model, tools, prompt, source, fields,
-- lines } or nil and its mistake: a user error (check.UserError) whose where is "source:LINE".
function M.parse(text, source, fallback_id, claude)
  local lines = {}
  for line in (text:match("\n$") and text or (text .. "\n")):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  local fields, at, body = {}, {}, text   -- a plain Markdown file: the whole text is the prompt
  if lines[1] and lines[1]:match("^%-%-%-%s*$") then
    local close
    for i = 2, #lines do
      if lines[i]:match("^%-%-%-%s*$") then close = i; break end
    end
    if not close then
      return nil, mistake(source, 1, "the front matter that starts here is not closed: no '---' line after it")
    end
    local parsed, at_or_err, line = M.front_matter(table.concat(lines, "\n", 2, close - 1), 2)
    if not parsed then return nil, mistake(source, line, at_or_err) end
    fields, at = parsed, at_or_err
    body = table.concat(lines, "\n", close + 1)
    local bad = fields_error(fields, at, source, claude)
    if bad then return nil, bad end
  end
  local id = fields.id or fields.name or fallback_id
  if id == "" then
    return nil, mistake(source, at.id or at.name or 1, "the role has no id: give it an id or a name")
  end
  local tools = fields.tools
  if type(tools) == "string" then tools = tools ~= "" and flow_list("[" .. tools .. "]") or nil end
  return {
    id = id, name = fields.id and fields.name or nil, description = fields.description or "",
    driver = fields.driver, model = fields.model, tools = tools,
    prompt = (body:gsub("^%s+", ""):gsub("%s+$", "")), source = source, fields = fields, lines = at,
  }
end

local function scan(dir)
  local files = {}
  local handle = uv.fs_scandir(dir)
  while handle do
    local name, kind = uv.fs_scandir_next(handle)
    if not name then break end
    if name:match("%.md$") and kind ~= "directory" then files[#files + 1] = name end
  end
  table.sort(files)
  return files
end

local function add(roles, role, kind)
  role.kind = kind
  if not roles[role.id] then roles.order[#roles.order + 1] = role.id end
  roles[role.id] = role
end

-- The broken files of ~/.claude/agents already warned about by this process.
local warned = {}

local function load_dir(roles, dir, kind)
  for _, name in ipairs(scan(dir)) do
    local path = dir .. "/" .. name
    local text = fsutil.read(path)
    if text then
      local role, err = M.parse(text, path, name:gsub("%.md$", ""), kind:match("^claude") ~= nil)
      if role then
        add(roles, role, kind)
      elseif kind == "claude-user" then
        -- the user's own Claude Code subagents are not this project's: one broken file there
        -- must not stop every run of every project; it is left out, and said so once
        if not warned[path] then
          warned[path] = true
          io.stderr:write("coral: warning: ", tostring(err), " (this role is left out)\n")
        end
      else
        error(err, 0)
      end
    end
  end
end

--- Every role visible from `project_dir`: a table id -> role, with `order` (ids in load order).
-- A role file with a mistake (its front matter: a line that is no 'key: value', no closing
-- '---', an unknown key in coral's own files, a list where text belongs, a driver hint that
-- is no driver) raises a user error blaming "file:LINE": the run, `coral agents` or the
-- recipe that loaded the roles stops before it writes anything, rather than running without
-- a role the project meant to give. A broken file of the user's ~/.claude/agents is only
-- warned about and left out: it belongs to no project.
function M.load(project_dir)
  local roles = { order = {} }
  if host.source_root then
    load_dir(roles, host.source_root .. "/agents", "built-in")
  else
    for _, path in ipairs(host.embedded_files("agents/")) do
      local name = path:match("^agents/([^/]+)%.md$")
      if name then
        local role, err = M.parse(host.embedded(path), path, name)
        if not role then error(err, 0) end
        add(roles, role, "built-in")
      end
    end
  end
  local home = os.getenv("HOME")
  if home and home ~= "" then load_dir(roles, home .. "/.claude/agents", "claude-user") end
  project_dir = project_dir or "."
  load_dir(roles, project_dir .. "/.claude/agents", "claude")
  load_dir(roles, project_dir .. "/.coral/agents", "project")
  -- A driver hint is used when the run's driver is auto; a wrong one is the role file's mistake
  -- whatever the run's driver, as a wrong key is.
  for _, id in ipairs(roles.order) do
    local role = roles[id]
    if role.driver and role.driver ~= "auto" then
      local _, derr = require("coral.drivers").get(role.driver, project_dir)
      if derr then error(mistake(role.source, role.lines.driver, "driver: " .. derr), 0) end
    end
  end
  return roles
end

-- The role for a task's agent name: exact, else case- and separator-insensitive.
local function find(roles, agent)
  if roles[agent] and agent ~= "order" then return roles[agent] end
  local want = agent:lower():gsub("[_ ]", "-")
  for _, id in ipairs(roles.order) do
    if id:lower():gsub("[_ ]", "-") == want then return roles[id] end
  end
end

--- The role called `id`, or nil and an error listing the known ids.
function M.get(id, project_dir)
  local roles = M.load(project_dir)
  local role = find(roles, id)
  if role then return role end
  local ids = { table.unpack(roles.order) }
  table.sort(ids)
  return nil, string.format("unknown agent role '%s' (known: %s)", id, table.concat(ids, ", "))
end

--- A function(task) -> role prompt text, role for the runner (opts.roles); loads the roles once,
-- now (raising a role file's mistake), or with opts.lazy at the first task that asks (a plan of
-- commands only: reading and parsing every role file was half of its startup).
-- A task whose agent has no role gets nil: the prompt then says only which agent it is.
function M.resolver(project_dir, opts)
  -- Loaded now (unless lazy), not at the first task's prompt: a role file's mistake stops the
  -- run before it writes anything.
  local roles = not (opts and opts.lazy) and M.load(project_dir) or nil
  local by_agent = {}   -- found once per agent name (false: no such role)
  return function(task)
    roles = roles or M.load(project_dir)
    local role = by_agent[task.agent]
    if role == nil then
      role = find(roles, task.agent) or false
      by_agent[task.agent] = role
    end
    if not role then return nil end
    return role.prompt, role
  end
end

local function first_sentence(s)
  s = (s or ""):gsub("%s+", " ")
  if #s > 90 then s = s:sub(1, 89) .. "…" end
  return s
end

--- `coral agents show ID`: a role's header and prompt, or nil and an error.
function M.show(id, project_dir)
  local role, err = M.get(id, project_dir)
  if not role then return nil, err end
  local out = { "id: " .. role.id }
  if role.name then out[#out + 1] = "name: " .. role.name end
  out[#out + 1] = "description: " .. role.description
  if role.driver then out[#out + 1] = "driver: " .. role.driver end
  if role.model then out[#out + 1] = "model: " .. role.model end
  if role.tools then out[#out + 1] = "tools: " .. table.concat(role.tools, ", ") end
  out[#out + 1] = "source: " .. role.source
  return table.concat(out, "\n") .. "\n\n" .. role.prompt .. "\n"
end

--- `coral agents`: a line per role, sorted by id.
function M.list_text(project_dir)
  local roles = M.load(project_dir)
  local ids = { table.unpack(roles.order) }
  table.sort(ids)
  local out = {}
  for _, id in ipairs(ids) do
    local r = roles[id]
    local tag = r.kind == "built-in" and "" or (" [" .. r.kind .. "]")
    out[#out + 1] = string.format("%-26s %s%s\n", id, first_sentence(r.description), tag)
  end
  return table.concat(out)
end

return M
