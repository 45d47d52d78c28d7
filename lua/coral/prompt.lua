--- Composes the prompt of a task: role, project, team, task, the handoff from its dependencies
-- and how to coordinate with the other agents. The runner saves it as tasks/<name>/prompt.md
-- (<name>: the task id as a file name, coral.records.names).
local fsutil = require "coral.fsutil"

local M = {}

--- Bytes of each dependency's output put into a prompt; the rest is a pointer to its file.
M.HANDOFF_BUDGET = 6000
--- Bytes of all the handoffs together: a task with many dependencies gets less of each
-- (but at least HANDOFF_MIN).
M.HANDOFF_TOTAL = 24000
M.HANDOFF_MIN = 1000
--- Bytes of the project's .coral/context.md put into every prompt.
M.CONTEXT_BUDGET = 8000

local function role_text(task, ctx)
  if ctx.role and ctx.role ~= "" then return ctx.role end
  return string.format("You are the %s agent of a team of AI agents building a project together.", task.agent)
end

-- `text` cut to `budget` bytes: its beginning and its end, with a note in between that says
-- how much was left out and where the whole text is.
local function trim(text, budget, path)
  if #text <= budget then return text end
  local head = budget * 2 // 3
  local tail = budget - head
  -- Do not cut a UTF-8 sequence in two.
  while head > 0 and (text:byte(head + 1) or 0) & 0xC0 == 0x80 do head = head - 1 end
  local from = #text - tail + 1
  while from <= #text and (text:byte(from) or 0) & 0xC0 == 0x80 do from = from + 1 end
  return string.format("%s\n\n[... %d bytes left out here; the whole output is in %s ...]\n\n%s",
                       text:sub(1, head), from - head - 1, path, text:sub(from))
end
M.trim = trim

local function context_lines(task)
  if not (task.context and next(task.context)) then return nil end
  local keys, lines = {}, {}
  for k in pairs(task.context) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = task.context[k]
    if type(v) ~= "table" and type(v) ~= "function" then
      lines[#lines + 1] = string.format("- %s: %s", k, tostring(v))
    elseif type(v) == "table" and #v > 0 then
      local items = {}
      for _, x in ipairs(v) do items[#items + 1] = tostring(x) end
      lines[#lines + 1] = string.format("- %s: %s", k, table.concat(items, ", "))
    end
  end
  return #lines > 0 and table.concat(lines, "\n") or nil
end

-- The team: every task of the plan with its agent and what it waits for, this one marked.
-- Plans bigger than this list only the tasks next to the prompt's own (its dependencies and
-- dependents): a prompt stays bounded, and composing every prompt costs O(neighbours), not
-- O(plan) (a 100,000-task plan would otherwise write 100,000 lines into each prompt).
M.TEAM_MAX = 40

local function team_line(t, me)
  local text = (t.task or ""):gsub("%s+", " ")
  if #text > 100 then text = text:sub(1, 99) .. "…" end
  local deps = #(t.depends_on or {}) > 0 and (" (after " .. table.concat(t.depends_on, ", ") .. ")") or ""
  return string.format("- %s%s: %s%s", t.id, t.id == me and " (you)" or "", text, deps)
end

local function team_text(task, plan)
  if not plan or #plan.tasks < 2 then return nil end
  local dependents = plan:dependents(task.id)
  local lines = {}
  local out = "# The team\n\nThe tasks of this plan; each starts when the ones it comes after are done.\n\n"
  if #plan.tasks <= M.TEAM_MAX then
    for _, t in ipairs(plan.tasks) do lines[#lines + 1] = team_line(t, task.id) end
  else
    out = string.format("# The team\n\nThis plan has %d tasks; these are the ones next to yours. Each starts " ..
      "when the ones it comes after are done.\n\n", #plan.tasks)
    for _, d in ipairs(task.depends_on or {}) do lines[#lines + 1] = team_line(plan.by_id[d], task.id) end
    lines[#lines + 1] = team_line(task, task.id)
    for _, d in ipairs(dependents) do lines[#lines + 1] = team_line(plan.by_id[d], task.id) end
  end
  out = out .. table.concat(lines, "\n") .. "\n"
  if #dependents > 0 then
    out = out .. "\nYour final answer is handed to: " .. table.concat(dependents, ", ") ..
      ". Make it a self-contained summary they can build on (decisions, files, open issues).\n"
  end
  return out
end

---@param task table the plan's task
---@param ctx table { project = description, project_dir, scratchpad, activity, handoffs = list of {id, agent, output_path, work = {commit, branch, diffstat} or nil}, role = text, plan = the plan, worktree = the dir the agent works in when it has a git worktree }
---@return string
function M.compose(task, ctx)
  local parts = { "# Role\n\n" .. role_text(task, ctx) .. "\n" }
  parts[#parts + 1] = "# Project\n\n" .. (ctx.project or "(no description given)") .. "\n"
  local shared = ctx.project_dir and fsutil.read(ctx.project_dir .. "/.coral/context.md")
  if shared and shared:match("%S") then
    parts[#parts + 1] = "# Project context\n\n" ..
      trim(shared:gsub("%s+$", ""), M.CONTEXT_BUDGET, ctx.project_dir .. "/.coral/context.md") .. "\n"
  end
  local context = context_lines(task)
  if context then parts[#parts + 1] = "# Context\n\n" .. context .. "\n" end
  local team = team_text(task, ctx.plan)
  if team then parts[#parts + 1] = team end
  parts[#parts + 1] = "# Your task\n\n" .. (task.task ~= "" and task.task or task.id) .. "\n"
  if ctx.handoffs and #ctx.handoffs > 0 then
    local budget = math.max(M.HANDOFF_MIN, math.min(M.HANDOFF_BUDGET, M.HANDOFF_TOTAL // #ctx.handoffs))
    local h = { "# Handoff from the tasks this one depends on\n\n" ..
                "Their final output, each trimmed to " .. budget .. " bytes; read the full file when you need more.\n" }
    for _, dep in ipairs(ctx.handoffs) do
      local text = (fsutil.read(dep.output_path) or ""):gsub("%s+$", "")
      local work = ""
      if dep.work then   -- its work in git, merged into yours (docs/workspaces.md)
        local stat = (dep.work.diffstat or ""):gsub("%s+$", "")
        work = string.format("Its work, merged into your worktree: commit %s on %s%s\n\n", tostring(dep.work.commit),
          tostring(dep.work.branch), stat ~= "" and (", against the base:\n\n" .. stat) or " (no change)")
      end
      h[#h + 1] = string.format("## %s (%s)\n\n%sFull output: %s\n\n%s\n", dep.id, dep.agent, work, dep.output_path,
                                text ~= "" and trim(text, budget, dep.output_path) or "(no output)")
    end
    parts[#parts + 1] = table.concat(h, "\n")
  end
  parts[#parts + 1] = table.concat({
    "# Working with the other agents",
    "",
    "Other agents work on this project at the same time. Shared files:",
    "- " .. ctx.scratchpad .. ": shared working memory. Read it before you start. Add a note with " ..
      "`coral note \"...\"`, which appends under a lock (do not edit this file directly).",
    "- " .. ctx.activity .. ": what each agent did and when (written by coral; " ..
      "`coral log \"...\"` adds a progress line).",
    ctx.worktree
      and ("Work in " .. ctx.worktree .. ": your own git worktree, started from the project with your " ..
           "dependencies' work merged in; coral commits what you change there when you finish (do not commit " ..
           "yourself). Do not undo other agents' work without a note saying why.")
      or ("Work in " .. ctx.project_dir .. "; do not undo other agents' work without a note saying why."),
    "End with a short summary of what you produced and where: it is your handoff to the next agents.",
  }, "\n") .. "\n"
  return table.concat(parts, "\n")
end

return M
