-- examples/review_each_file: a plan built in a loop: one reviewer task per source file, then one summary of all the reviews.
-- The description is a Lua pattern for the files to review (default: common source files);
-- the project dir is scanned recursively (hidden directories and .coral are skipped). Each
-- reviewer gets the file's path in its context; the summary depends on every reviewer, so its
-- prompt carries all their findings as its handoff.
-- Run it: coral run examples/review_each_file "%.lua$" --dir /path/to/project --agent claude
local coral = require "coral"
local t = coral.task
local uv = require "luv"

local DEFAULT = { "%.lua$", "%.c$", "%.h$", "%.py$", "%.js$", "%.ts$", "%.go$", "%.rs$", "%.java$", "%.rb$" }

local function files_under(root, rel, out)
  local handle = uv.fs_scandir(rel == "" and root or (root .. "/" .. rel))
  local entries = {}
  while handle do
    local name, kind = uv.fs_scandir_next(handle)
    if not name then break end
    entries[#entries + 1] = { name, kind }
  end
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  for _, e in ipairs(entries) do
    local path = rel == "" and e[1] or (rel .. "/" .. e[1])
    if e[2] == "directory" then
      if not e[1]:match("^%.") and e[1] ~= "node_modules" then files_under(root, path, out) end
    else
      out[#out + 1] = path
    end
  end
  return out
end

return coral.recipe {
  summary = "a loop: one reviewer per source file, then a summary of every review",
  plan = function(pattern, opts)
    local dir = opts and opts.project_dir or "."
    local patterns = (pattern and pattern ~= "" and pattern ~= "(no description)") and { pattern } or DEFAULT
    local tasks, ids = {}, {}
    for _, path in ipairs(files_under(dir, "", {})) do
      for _, p in ipairs(patterns) do
        if path:match(p) then
          local id = "review-" .. path:gsub("[^%w%-_.]", "_")
          tasks[#tasks + 1] = t { id = id, agent = "reviewer", estimate = 60, context = { file = path },
            task = "Review " .. path .. ": correctness, error handling, security, readability. " ..
                   "List each finding with its line, severity and a suggested fix. Do not edit the file." }
          ids[#ids + 1] = id
          break
        end
      end
    end
    if #tasks == 0 then error("no file to review in " .. dir, 0) end
    tasks[#tasks + 1] = t { id = "review-summary", agent = "reviewer", depends_on = ids, estimate = 60,
      task = "Merge the reviews into one report: the most severe findings first, duplicates merged, " ..
             "and a short list of the changes to make first." }
    return coral.plan(tasks, { name = "examples/review_each_file" })
  end,
}
