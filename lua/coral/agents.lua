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
-- Sources, later ones overriding earlier ones with the same id: the roles compiled into the
-- binary (agents/*.md; the source tree's in --dev mode), ~/.claude/agents/*.md (Claude Code
-- user subagents), then in the project: .claude/agents/*.md and .coral/agents/*.md.
local fsutil = require "coral.fsutil"
local host = require "coral.host"
local uv = require "luv"

local M = {}

-- {{{ front matter: the YAML that role files use in practice. Scalars (plain or quoted),
-- block scalars (| and >), lists (flow [a, b] or "- item" lines); other lines are ignored.

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

--- Parses a front-matter block into a table; returns it, or nil and "line N: why".
function M.front_matter(text)
  local fields = {}
  local lines = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line:gsub("\r$", "") end
  local i = 1
  while i <= #lines do
    local line = lines[i]
    if line:match("^%s*$") or line:match("^%s*#") then
      i = i + 1
    else
      local key, value = line:match("^([%w_%-]+)%s*:%s*(.-)%s*$")
      if not key then return nil, string.format("line %d: expected 'key: value', got '%s'", i, line) end
      i = i + 1
      if value == "|" or value == ">" or value:match("^[|>][-+]?$") then
        local block = {}
        while i <= #lines and (lines[i]:match("^%s+") or lines[i] == "") do
          block[#block + 1] = lines[i]:gsub("^%s+", "")
          i = i + 1
        end
        local sep = value:sub(1, 1) == "|" and "\n" or " "
        fields[key] = (table.concat(block, sep):gsub("%s+$", ""))
      elseif value == "" then
        local list = {}
        while i <= #lines and lines[i]:match("^%s*%- ") do
          list[#list + 1] = unquote(lines[i]:match("^%s*%- (.*)$"))
          i = i + 1
        end
        fields[key] = #list > 0 and list or ""
      elseif value:match("^%[.*%]$") then
        fields[key] = flow_list(value)
      else
        fields[key] = unquote(value)
      end
    end
  end
  return fields
end

-- }}}

--- Parses a role file. `fallback_id` (the file's base name) is used when the header names no
-- id. Returns the role { id, name, description, driver, model, tools, prompt, source } or nil
-- and an error naming the file.
function M.parse(text, source, fallback_id)
  local header, body = text:match("^%-%-%-[ \t]*\r?\n(.-\n?)%-%-%-[ \t]*\r?\n?(.*)$")
  local fields = {}
  if header then
    local err
    fields, err = M.front_matter(header)
    if not fields then return nil, string.format("%s: front matter %s", source, err) end
  else
    body = text   -- a plain Markdown file: the whole text is the prompt
  end
  local id = fields.id or fields.name or fallback_id
  if type(id) ~= "string" or id == "" then return nil, source .. ": role has no id or name" end
  local tools = fields.tools
  if type(tools) == "string" then tools = tools ~= "" and flow_list("[" .. tools .. "]") or nil end
  return {
    id = id, name = fields.id and fields.name or nil, description = fields.description or "",
    driver = fields.driver, model = fields.model, tools = tools,
    prompt = (body:gsub("^%s+", ""):gsub("%s+$", "")), source = source, fields = fields,
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

local function load_dir(roles, dir, kind, errors)
  for _, name in ipairs(scan(dir)) do
    local path = dir .. "/" .. name
    local text = fsutil.read(path)
    if text then
      local role, err = M.parse(text, path, name:gsub("%.md$", ""))
      if role then add(roles, role, kind) else errors[#errors + 1] = err end
    end
  end
end

--- Every role visible from `project_dir`: a table id -> role, with `order` (ids in load order)
-- and `errors` (files that could not be read as roles).
function M.load(project_dir)
  local roles, errors = { order = {} }, {}
  if host.source_root then
    load_dir(roles, host.source_root .. "/agents", "built-in", errors)
  else
    for _, path in ipairs(host.embedded_files("agents/")) do
      local name = path:match("^agents/([^/]+)%.md$")
      if name then
        local role, err = M.parse(host.embedded(path), path, name)
        if role then add(roles, role, "built-in") else errors[#errors + 1] = err end
      end
    end
  end
  local home = os.getenv("HOME")
  if home and home ~= "" then load_dir(roles, home .. "/.claude/agents", "claude-user", errors) end
  project_dir = project_dir or "."
  load_dir(roles, project_dir .. "/.claude/agents", "claude", errors)
  load_dir(roles, project_dir .. "/.coral/agents", "project", errors)
  roles.errors = errors
  return roles
end

-- The role for a task's agent name: exact, else case- and separator-insensitive.
local function find(roles, agent)
  if roles[agent] and agent ~= "order" and agent ~= "errors" then return roles[agent] end
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

--- A function(task) -> role prompt text, role for the runner (opts.roles); loads the roles once.
-- A task whose agent has no role gets nil: the prompt then says only which agent it is.
function M.resolver(project_dir)
  local roles
  local by_agent = {}   -- found once per agent name (false: no such role)
  return function(task)
    local role = by_agent[task.agent]
    if role == nil then
      roles = roles or M.load(project_dir)
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

--- `coral agents`: a line per role, sorted by id (warnings about broken role files on stderr).
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
  for _, err in ipairs(roles.errors) do io.stderr:write("coral: warning: ", err, "\n") end
  return table.concat(out)
end

return M
