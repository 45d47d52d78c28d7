-- Task ids as file names (coral.records.names), through the real binary: an id is the recipe's
-- text, and whatever it holds ("..", "/", "%", 5,000 bytes) a task's files stay in its own dir
-- of the run dir, apart from every other task's; ids with control characters are refused at
-- plan time; run dirs of earlier coral versions are still read and resumed.
local H = require("spec.helper").guard(_ENV)
local cjson = require "cjson"
local names = require "coral.records.names"
local uv = require "luv"

local function quote(s) return (s:gsub("%p", "%%%0")) end

-- The run dir of the project's only run.
local function run_dir_of(dir)
  local ids = H.entries(dir .. "/.coral/runs")
  assert.are.equal(1, #ids)
  return dir .. "/.coral/runs/" .. ids[1]
end

-- Every path under `dir` (relative to it), sorted; directories end with "/".
local function tree(dir)
  local out = {}
  local function walk(rel)
    for _, name in ipairs(H.entries(dir .. rel)) do
      local path = rel .. "/" .. name
      if uv.fs_lstat(dir .. path).type == "directory" then
        out[#out + 1] = path:sub(2) .. "/"
        walk(path)
      else
        out[#out + 1] = path:sub(2)
      end
    end
  end
  walk("")
  table.sort(out)
  return out
end

-- "file:N" of the first line of `text` that contains `marker`, as a pattern.
local function line_of(path, text, marker)
  local n = 0
  for l in text:gmatch("([^\n]*)\n") do
    n = n + 1
    if l:find(marker, 1, true) then return quote(path .. ":" .. n) end
  end
  error("no line with " .. marker)
end

-- The joblog's rows, the task column unescaped as docs/runner.md says.
local function joblog(run_dir)
  local rows = {}
  local unescape = { ["\\"] = "\\", t = "\t", n = "\n", r = "\r" }
  for l in H.read_file(run_dir .. "/joblog.tsv"):gmatch("([^\n]*)\n") do
    local task, attempt, _, _, exit = l:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t")
    assert(task, "a joblog row of 7 columns: " .. l)
    if task ~= "task" then
      task = task:gsub("\\x(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
                 :gsub("\\(.)", unescape)
      rows[#rows + 1] = { task = task, attempt = tonumber(attempt), exit = tonumber(exit) }
    end
  end
  return rows
end

local function recipe(dir, text)
  H.write_file(dir .. "/r.lua", text)
  return dir .. "/r.lua"
end

describe("task ids as file names", function()
  it("path_name: percent-encoding outside [A-Za-z0-9._-] and of a leading dot, reversible, bounded", function()
    local cases = {
      ["plain-id_1.2"] = "plain-id_1.2", ["a/b"] = "a%2Fb", ["a_b"] = "a_b", [".."] = "%2E.", ["."] = "%2E",
      ["../../x"] = "%2E.%2F..%2Fx", [".hidden"] = "%2Ehidden", ["a.b."] = "a.b.", ["50%"] = "50%25",
      ["a b:c|d"] = "a%20b%3Ac%7Cd", ["\u{e9}t\u{e9}"] = "%C3%A9t%C3%A9", ["a+b"] = "a%2Bb",
    }
    for id, name in pairs(cases) do
      assert.are.equal(name, names.path_name(id), id)
      assert.are.equal(id, names.id_of(name))
    end
    -- the SHA-256 of the standard's test vectors (it names long ids)
    assert.are.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", names.sha256("abc"))
    assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", names.sha256(""))
    assert.are.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
                     names.sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))
    -- long ids: cut, never inside a %XX, and the hash of the whole id after "+"; never colliding
    local seen = {}
    for n = 90, 400 do
      local ids = { string.rep("x", n), string.rep("/", n), string.rep("x", n - 1) .. "/", "y" .. string.rep("é", n) }
      for _, id in ipairs(ids) do
        local name = names.path_name(id)
        assert(#name <= names.MAX, id)
        assert.is_nil(name:find("%%.?%+"), name)   -- no %XX cut in half before the hash
        assert.is_falsy(name == "." or name == ".." or name:find("/"))
        assert.is_nil(seen[name], name)
        seen[name] = id
        if name:find("+", 1, true) then
          assert.are.equal(names.sha256(id):sub(1, 32), name:match("%+(%x+)$"))
          assert.is_nil(names.id_of(name))
        else
          assert.are.equal(id, names.id_of(name))
        end
      end
    end
  end)

  it("traversal ids write nothing outside the project and nothing in the run dir's root", function()
    local base = H.tmpdir()
    local dir = base .. "/outer/project"
    uv.fs_mkdir(base .. "/outer", tonumber("755", 8))
    uv.fs_mkdir(dir, tonumber("755", 8))
    recipe(dir, [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("writer", "up two", { id = "../../x", driver = "sim", estimate = 1 }),
  t("writer", "up one", { id = "../escape", driver = "sim", estimate = 1 }),
  t("writer", "dot dot", { id = "..", cmd = "echo dotdot" }),
  t("writer", "dot", { id = ".", cmd = "echo dot" }),
  t("writer", "absolute", { id = "/tmp/abs", cmd = "echo abs" }),
}
]])
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet" }
    assert.are.equal(0, r.code, r.stderr)
    -- nothing beside the project, and the sim driver's deliverables are inside it
    assert.are.same({ "outer/", "outer/project/" }, (function()
      local t = tree(base)
      local out = {}
      for _, p in ipairs(t) do if not p:find("^outer/project/.") then out[#out + 1] = p end end
      return out
    end)())
    assert.are.same({ "%2E.%2F..%2Fx.md", "%2E.%2Fescape.md" }, H.entries(dir .. "/deliverables"))
    -- each task's files in its own dir of tasks/, none in the run dir's root
    local rd = run_dir_of(dir)
    for _, name in ipairs(H.entries(rd)) do assert.is_nil(name:find("^attempt"), name) end
    assert.are.same({ "%2E", "%2E.", "%2E.%2F..%2Fx", "%2E.%2Fescape", "%2Ftmp%2Fabs", ".names" },
                    H.entries(rd .. "/tasks"))
    assert.are.equal("dotdot\n", H.read_file(rd .. "/tasks/%2E./attempt-1.out"))
    assert.are.equal("dot\n", H.read_file(rd .. "/tasks/%2E/attempt-1.out"))
    assert.are.equal("abs\n", H.read_file(rd .. "/tasks/%2Ftmp%2Fabs/attempt-1.out"))
  end)

  it("keeps the output of tasks whose ids the old names mixed up, and one joblog row per attempt", function()
    local dir = H.tmpdir()
    recipe(dir, [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("w", "slash", { id = "a/b", cmd = "echo I am a/b" }),
  t("w", "underscore", { id = "a_b", cmd = "echo I am a_b" }),
  t("w", "space", { id = "a b", cmd = "echo I am a space b" }),
  t("w", "percent", { id = "a%2Fb", cmd = "echo I am a percent b" }),
  t("w", "backslash", { id = "a\\tb\"", cmd = "echo I am a backslash" }),
  t("w", "uses", { id = "uses", depends_on = { "a/b", "a_b" }, cmd = 'cat "$CORAL_INPUTS"' }),
}
]])
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report" }
    assert.are.equal(0, r.code, r.stderr)
    local rd = run_dir_of(dir)
    local outputs = {
      ["a/b"] = "I am a/b\n", a_b = "I am a_b\n", ["a b"] = "I am a space b\n", ["a%2Fb"] = "I am a percent b\n",
      ["a\\tb\""] = "I am a backslash\n",
    }
    for id, text in pairs(outputs) do
      assert.are.equal(text, H.read_file(rd .. "/tasks/" .. names.path_name(id) .. "/attempt-1.out"), id)
    end
    -- the dependent is handed both outputs, each from its own file
    local inputs_text = H.read_file(rd .. "/tasks/uses/attempt-1.out")
    local inputs = cjson.decode(inputs_text)
    -- a dependency that declares no files: its outputs are an empty JSON list, not an object
    assert.truthy(inputs_text:find('"outputs":[]', 1, true), inputs_text)
    assert.falsy(inputs_text:find('"outputs":{}', 1, true), inputs_text)
    assert.are.equal("I am a/b\n", H.read_file(inputs["a/b"].output))
    assert.are.equal("I am a_b\n", H.read_file(inputs.a_b.output))
    -- one row per attempt, the task column giving the id back
    local rows = joblog(rd)
    assert.are.equal(6, #rows)
    local seen = {}
    for _, row in ipairs(rows) do seen[row.task] = row.attempt end
    assert.are.same({ ["a/b"] = 1, a_b = 1, ["a b"] = 1, ["a%2Fb"] = 1, ["a\\tb\""] = 1, uses = 1 }, seen)
    assert.truthy(H.read_file(rd .. "/joblog.tsv"):find("\na\\\\tb\"\t1\t", 1, true))
  end)

  it("refuses an id with a control character at plan time: exit 2, the recipe's line, nothing written", function()
    local cases = {
      { [[t("w", "nl", { id = "a\nb", cmd = "true" }),   -- culprit]], [[id "a\nb" has a control character (byte 2)]] },
      -- a raw task table: the plan's line is blamed
      { [[{ id = "tab\there", agent = "w", cmd = "true" },]], [[id "tab\there" has a control character (byte 4)]] },
      { [[t("nul\0agent", "the agent's name is the id", { cmd = "true" }),   -- culprit]],
        [[id "nul\x00agent" has a control character (byte 4)]] },
      { [[t("w", "cr", { id = "x\r", cmd = "true" }),   -- culprit]], [[id "x\r" has a control character (byte 2)]] },
    }
    for _, case in ipairs(cases) do
      local dir = H.tmpdir()
      local culprit = case[1]:find("-- culprit", 1, true) and "-- culprit" or "-- the plan"
      local text = "local coral = require \"coral\"\nlocal t = coral.task\nlocal plan = coral.plan {   -- the plan\n" ..
        "  t(\"w\", \"fine\", { id = \"fine\", cmd = \"touch ran\" }),\n  " .. case[1] .. "\n}\nreturn plan\n"
      local path = recipe(dir, text)
      local r = H.run { path, "x", "--dir", dir, "--quiet" }
      assert.are.equal(2, r.code, r.stderr)
      assert.matches("^" .. line_of(path, text, culprit) .. ": coral%.task: " .. quote(case[2]) ..
                     ": ids name files and joblog rows\n$", r.stderr)
      assert.are.same({ "r.lua" }, H.entries(dir))
    end
  end)

  it("refuses a control character in an id added while the run goes, blaming the line that added it", function()
    local dir = H.tmpdir()
    local text = [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("w", "adds", { id = "adds", cmd = "true", on_success = function(_, run)
    run:add(t("w", "bad", { id = "bad\nid", cmd = "touch ran" }))   -- culprit
  end }),
}
]]
    local path = recipe(dir, text)
    local r = H.run { path, "x", "--dir", dir, "--quiet", "--no-report" }
    assert.are.equal(1, r.code, r.stderr)
    assert.matches("raised an error: " .. line_of(path, text, "-- culprit") ..
                   ": coral%.task: id \"bad\\nid\" has a control character",
                   r.stderr)
    assert.is_nil(H.read_file(dir .. "/ran"))
    for _, row in ipairs(joblog(run_dir_of(dir))) do assert.are.equal("adds", row.task) end
  end)

  it("runs a 5,000-character id, and status, why, report and resume find its files", function()
    local dir = H.tmpdir()
    local long = string.rep("0123456789", 500)
    H.write_file(dir .. "/id", long)
    recipe(dir, [[
local coral = require "coral"
local t = coral.task
local long = string.rep("0123456789", 500)
return coral.plan {
  t("w", "long", { id = long, cmd = "echo try; test -e ready", retries = 0 }),
  t("w", "after", { id = "after", depends_on = { long }, cmd = 'cat "$CORAL_INPUT_' .. long .. '"' }),
}
]])
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet" }
    assert.are.equal(1, r.code, r.stderr)   -- it fails until `ready` exists
    local rd = run_dir_of(dir)
    -- its dir: a cut name ending with the SHA-256 of the id (sha256sum's, not coral's own)
    local f = io.popen("sha256sum " .. dir .. "/id")
    local digest = f:read("a"):match("^%x+")
    f:close()
    local name = string.rep("0123456789", 7):sub(1, 67) .. "+" .. digest:sub(1, 32)
    assert.are.same({ ".names", name }, H.entries(rd .. "/tasks"))
    assert.are.equal("try\n", H.read_file(rd .. "/tasks/" .. name .. "/attempt-1.out"))

    local status = cjson.decode(H.run({ "status", "--dir", dir, "--json" }).stdout)
    assert.are.equal("failed", status.summary.results[long].status)
    local why = H.run { "why", long, "--dir", dir }
    assert.are.equal(0, why.code, why.stderr)
    assert.matches("will not run on resume unless %-%-retry%-failed is given", why.stdout)

    H.write_file(dir .. "/ready", "")
    r = H.run { "resume", "--retry-failed", "--dir", dir, "--quiet" }
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({ ".names", name, "after" }, H.entries(rd .. "/tasks"))
    assert.are.same({ "attempt-1.err", "attempt-1.out", "attempt-2.err", "attempt-2.out" },
                    H.entries(rd .. "/tasks/" .. name))
    assert.are.equal("try\n", H.read_file(rd .. "/tasks/after/attempt-1.out"))   -- handed on by its variable
    local rows = joblog(rd)
    assert.are.same({ { task = long, attempt = 1, exit = 1 }, { task = long, attempt = 2, exit = 0 },
                      { task = "after", attempt = 1, exit = 0 } }, rows)

    local rep = H.run { "report", "--dir", dir, "-o", dir .. "/report.html" }
    assert.are.equal(0, rep.code, rep.stderr)
    local html = H.read_file(dir .. "/report.html")
    local href = quote(".coral/runs/" .. rd:match("[^/]+$") .. "/tasks/" .. name:gsub("%+", "%%2B"))
    for _, file in ipairs { "attempt-1.out", "attempt-1.err", "attempt-2.out", "attempt-2.err" } do
      assert.matches('href="' .. href .. "/" .. quote(file) .. '"', html)
    end
    -- the report kept in the run dir during the run links the same files
    assert.matches('href="tasks/' .. quote(name:gsub("%+", "%%2B")) .. '/attempt%-2%.out"',
                   H.read_file(rd .. "/report.html"))
  end)

  it("the sim driver's deliverable and CORAL_TASK_DIR name a task alike", function()
    local dir = H.tmpdir()
    local ids = { "x/y", "..", "über", string.rep("long/", 40), "plain" }
    local lines = {}
    for i, id in ipairs(ids) do
      lines[#lines + 1] = string.format("  t('w', 'sim %d', { id = %q, driver = 'sim', estimate = 1 }),", i, id)
      lines[#lines + 1] = string.format("  t('w', 'cmd %d', { id = %q, cmd = 'echo \"$CORAL_TASK_DIR\"' }),",
                                        i, "cmd " .. id)
    end
    recipe(dir, "local coral = require 'coral'\nlocal t = coral.task\nreturn coral.plan {\n" ..
                table.concat(lines, "\n") .. "\n}\n")
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report" }
    assert.are.equal(0, r.code, r.stderr)
    local rd = run_dir_of(dir)
    local want_deliverables, want_dirs = {}, { ".names" }
    for _, id in ipairs(ids) do
      want_deliverables[#want_deliverables + 1] = names.path_name(id) .. ".md"
      want_dirs[#want_dirs + 1] = names.path_name(id)
      want_dirs[#want_dirs + 1] = names.path_name("cmd " .. id)
      -- a command is told its own dir, where its output is
      local task_dir = rd .. "/tasks/" .. names.path_name("cmd " .. id)
      assert.are.equal(task_dir .. "\n", H.read_file(task_dir .. "/attempt-1.out"))
      -- the sim task's deliverable has its dir's name
      assert.matches("wrote " .. quote(dir .. "/deliverables/" .. names.path_name(id) .. ".md"),
                     H.read_file(rd .. "/tasks/" .. names.path_name(id) .. "/attempt-1.out"))
    end
    table.sort(want_deliverables)
    table.sort(want_dirs)
    assert.are.same(want_deliverables, H.entries(dir .. "/deliverables"))
    assert.are.same(want_dirs, H.entries(rd .. "/tasks"))
  end)

  it("reads and resumes a run dir of an earlier coral version, which named task dirs the old way", function()
    local dir = H.tmpdir()
    recipe(dir, [[
local coral = require "coral"
local t = coral.task
return coral.plan {
  t("w", "slash", { id = "a/b", cmd = "echo I am a/b" }),
  t("w", "space", { id = "c d", cmd = "echo try; test -e ready", depends_on = { "a/b" }, retries = 0 }),
  t("w", "plain", { id = "plain", cmd = "echo plain" }),
}
]])
    local r = H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report" }
    assert.are.equal(1, r.code, r.stderr)
    -- what an earlier coral left: its names ("/" and " " as "_") in tasks/ and in the paths
    -- its records hold, and no mark
    local rd = run_dir_of(dir)
    assert(uv.fs_rename(rd .. "/tasks/a%2Fb", rd .. "/tasks/a_b"))
    assert(uv.fs_rename(rd .. "/tasks/c%20d", rd .. "/tasks/c_d"))
    assert(uv.fs_unlink(rd .. "/tasks/.names"))
    for _, file in ipairs { "journal.jsonl", "summary.json" } do
      local text = H.read_file(rd .. "/" .. file):gsub("a%%2Fb", "a_b"):gsub("c%%20d", "c_d")
      H.write_file(rd .. "/" .. file, text)
    end

    local rep = H.run { "report", "--dir", dir, "-o", dir .. "/old.html" }
    assert.are.equal(0, rep.code, rep.stderr)
    local html = H.read_file(dir .. "/old.html")
    assert.matches('/tasks/a_b/attempt%-1%.out">output', html)
    assert.matches('/tasks/c_d/attempt%-1%.err">err1', html)
    local why = H.run { "why", "c d", "--dir", dir }
    assert.matches("c d will not run on resume unless", why.stdout)

    H.write_file(dir .. "/ready", "")
    r = H.run { "resume", "--retry-failed", "--dir", dir, "--quiet" }
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    -- the resumed run goes on in the old dirs: attempt 2 beside attempt 1
    assert.are.same({ "a_b", "c_d", "plain" }, H.entries(rd .. "/tasks"))
    assert.are.same({ "attempt-1.err", "attempt-1.out", "attempt-2.err", "attempt-2.out", "inputs.json" },
                    H.entries(rd .. "/tasks/c_d"))
    local inputs = cjson.decode(H.read_file(rd .. "/tasks/c_d/inputs.json"))
    assert.are.equal(rd .. "/tasks/a_b/attempt-1.out", inputs["a/b"].output)
    local status = cjson.decode(H.run({ "status", "--dir", dir, "--json" }).stdout)
    assert.are.equal(rd .. "/tasks/c_d/attempt-2.out", status.summary.results["c d"].output_file)
    rep = H.run { "report", "--dir", dir, "-o", dir .. "/resumed.html" }
    assert.are.equal(0, rep.code, rep.stderr)
    assert.matches('/tasks/c_d/attempt%-2%.out">output', H.read_file(dir .. "/resumed.html"))

    -- a new run of the same project names its dirs today's way
    uv.fs_unlink(dir .. "/ready")
    H.run { dir .. "/r.lua", "x", "--dir", dir, "--quiet", "--no-report" }
    local runs = H.entries(dir .. "/.coral/runs")
    assert.are.same({ ".names", "a%2Fb", "c%20d", "plain" }, H.entries(dir .. "/.coral/runs/" .. runs[2] .. "/tasks"))
  end)

  it("names Slurm jobs by the file name of the id, and adopts them again by it", function()
    local slurm = require "coral.exec.slurm"
    local id = "dir/task: 1|2 " .. string.rep("z", 200)
    local argv = slurm.new():sbatch_args({ cwd = "/w", stdout_path = "/r/o", stderr_path = "/r/e" },
                                         { run = "r1", task = id, attempt = 2 }, "s")
    assert.are.equal("--job-name=coral." .. names.path_name(id), argv[4])
    assert.are.equal("--comment=coral:r1:2:" .. names.path_name(id), argv[5])
    assert.is_nil(argv[5]:find("[ |]"))
    assert(#argv[5] <= #"--comment=coral:r1:2:" + names.MAX)
    local dir = H.tmpdir()
    H.write_file(dir .. "/squeue", "#!/bin/sh\ncat <<'EOF'\n" ..
      "10|RUNNING|0|coral:r1:2:" .. names.path_name(id) .. "|\n" ..
      "11|RUNNING|0|coral:r1:1:old_style|\n" ..     -- submitted by an earlier coral: the id itself
      "EOF\n", tonumber("755", 8))
    H.write_file(dir .. "/scancel", "#!/bin/sh\n", tonumber("755", 8))
    local adopt = slurm.new { squeue = dir .. "/squeue", scancel = dir .. "/scancel" }:recover("r1",
      { [id] = { attempt = 2 }, old_style = { attempt = 1 } })
    assert.are.same({ [id] = { job_id = 10, state = "RUNNING" }, old_style = { job_id = 11, state = "RUNNING" } },
                    adopt)
  end)
end)
