--- Task ids as file names. A task id is the recipe's text: it may hold "/", "..", spaces, any
-- byte, and be thousands of bytes long. Every place that makes a path, a file name or a job
-- name of a task id goes through path_name here (the run dir's tasks/<name>/, the sim
-- driver's deliverable, Slurm job names), and task_dir is the one lookup of a task's dir,
-- which still finds the dirs of runs written by earlier coral versions.
--
-- What must stay true: path_name is a path component, never "." or "..", never more than
-- MAX bytes; two different ids never get the same name; a name without "+" decodes back to
-- its id (id_of).
local uv = require "luv"

local M = {}

--- Longest name path_name gives (bytes): far below NAME_MAX (255), so that "attempt-12.out"
-- and the like fit under it, and a path stays readable.
M.MAX = 100

-- Hex digits of the SHA-256 of the id that end a long id's name: 128 bits, so two long ids
-- never share a name in practice, whoever chose them.
local HASH_HEX = 32

-- Marks a run dir whose task dirs are named by path_name: a file in tasks/ whose name no task
-- dir can have (path_name never begins with a dot).
local MARK = ".names"

-- {{{ SHA-256 (FIPS 180-4), for the names of long ids

local K, H0

-- The first 32 bits of the fractional parts of the square (H0) and cube (K) roots of the
-- first primes, as the standard defines them; the test vectors of the spec catch a wrong one.
local function constants()
  local primes, n = {}, 2
  while #primes < 64 do
    local prime = true
    for _, p in ipairs(primes) do
      if p * p > n then break end
      if n % p == 0 then prime = false; break end
    end
    if prime then primes[#primes + 1] = n end
    n = n + 1
  end
  local function frac32(x) return math.floor((x - math.floor(x)) * 2 ^ 32) end
  K, H0 = {}, {}
  for i, p in ipairs(primes) do
    K[i] = frac32(p ^ (1 / 3))
    if i <= 8 then H0[i] = frac32(math.sqrt(p)) end
  end
end

local function rrot(x, n)
  return ((x >> n) | (x << (32 - n))) & 0xffffffff
end

--- The SHA-256 digest of `s`, as 64 lowercase hex digits.
function M.sha256(s)
  if not K then constants() end
  local h = { table.unpack(H0) }
  s = s .. "\128" .. string.rep("\0", (55 - #s) % 64) .. string.pack(">I8", #s * 8)
  local w = {}
  for chunk = 1, #s, 64 do
    for i = 1, 16 do w[i] = string.unpack(">I4", s, chunk + (i - 1) * 4) end
    for i = 17, 64 do
      local x, y = w[i - 15], w[i - 2]
      local s0 = rrot(x, 7) ~ rrot(x, 18) ~ (x >> 3)
      local s1 = rrot(y, 17) ~ rrot(y, 19) ~ (y >> 10)
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & 0xffffffff
    end
    local a, b, c, d, e, f, g, hh = table.unpack(h)
    for i = 1, 64 do
      local t1 = hh + (rrot(e, 6) ~ rrot(e, 11) ~ rrot(e, 25)) + ((e & f) ~ (~e & g)) + K[i] + w[i]
      local t2 = (rrot(a, 2) ~ rrot(a, 13) ~ rrot(a, 22)) + ((a & b) ~ (a & c) ~ (b & c))
      hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & 0xffffffff, c, b, a, (t1 + t2) & 0xffffffff
    end
    local v = { a, b, c, d, e, f, g, hh }
    for i = 1, 8 do h[i] = (h[i] + v[i]) & 0xffffffff end
  end
  return string.format(string.rep("%08x", 8), table.unpack(h))
end

-- }}}

--- The file name of task `id`: every byte outside [A-Za-z0-9._-] percent-encoded (%2F for
-- "/", %25 for "%"), and a leading "." too, so that neither "." nor ".." nor a hidden name can
-- come out. A name longer than MAX is cut (never inside a %XX) and ends with "+" and the first
-- 32 hex digits of the SHA-256 of the whole id: "+" is never part of an encoded name, so a cut
-- name cannot equal the name of a short id.
function M.path_name(id)
  local name = id:gsub("[^A-Za-z0-9._%-]", function(c) return string.format("%%%02X", c:byte()) end)
  if name:sub(1, 1) == "." then name = "%2E" .. name:sub(2) end
  if #name <= M.MAX then return name end
  local cut = name:sub(1, M.MAX - 1 - HASH_HEX):gsub("%%%x?$", "")
  return cut .. "+" .. M.sha256(id):sub(1, HASH_HEX)
end

--- The id a name of path_name stands for, or nil for the name of a long id (cut and hashed).
function M.id_of(name)
  if name:find("+", 1, true) then return nil end
  return (name:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

-- The name earlier coral versions gave a task's dir (each character but a letter, digit, "-",
-- "_" and "." as "_"), or nil where that name was no dir of the task's own ("." and ".." are
-- tasks/ and the run dir; a name over NAME_MAX was never created).
local function legacy_name(id)
  local name = id:gsub("[^%w%-_.]", "_")
  if name == "." or name == ".." or #name > 255 then return nil end
  return name
end

-- Run dirs seen with the mark (a run keeps its naming for life).
local marked = {}

local function is_marked(run_dir)
  if marked[run_dir] then return true end
  if uv.fs_stat(run_dir .. "/tasks/" .. MARK) then
    marked[run_dir] = true
    return true
  end
  return false
end

--- Marks the new run dir `run_dir` (its tasks/ exists) as naming its task dirs by path_name.
-- A run dir that already has a journal keeps the naming it was begun with.
function M.mark(run_dir)
  if uv.fs_stat(run_dir .. "/journal.jsonl") then return true end
  local fd, err, code = uv.fs_open(run_dir .. "/tasks/" .. MARK, "wx", tonumber("600", 8))
  if not fd then
    if code == "EEXIST" then return true end
    return nil, "create " .. run_dir .. "/tasks/" .. MARK .. ": " .. err
  end
  uv.fs_write(fd, "task dirs are named by coral.records.names.path_name (docs/runner.md)\n", -1)
  uv.fs_close(fd)
  marked[run_dir] = true
  return true
end

--- The dir of task `id`'s files in run dir `run_dir`: tasks/<path_name(id)>. A run dir of an
-- earlier coral version (no mark) keeps its old names, so that status, report and resume of
-- it find what it wrote, and a resumed old run goes on writing there: the old name when a dir
-- has it or the task has no dir yet, today's name when the old one could not be a dir.
function M.task_dir(run_dir, id)
  local name = M.path_name(id)
  local dir = run_dir .. "/tasks/" .. name
  local old = legacy_name(id)
  if not old or old == name or is_marked(run_dir) then return dir end
  local old_dir = run_dir .. "/tasks/" .. old
  if uv.fs_stat(old_dir) or not uv.fs_stat(dir) then return old_dir end
  return dir
end

--- Why `id` cannot be a task id, or nil. Control characters are refused: a newline or a tab
-- would split a row of the joblog and a line of every log and view that shows the id, and a
-- NUL cuts a path short.
function M.refusal(id)
  local at = id:find("%c")
  if not at then return nil end
  return string.format("id \"%s\" has a control character (byte %d): ids name files and joblog rows",
                       M.printable(id), at)
end

local ESCAPES = { ["\\"] = "\\\\", ["\t"] = "\\t", ["\n"] = "\\n", ["\r"] = "\\r" }

local function escape(c) return ESCAPES[c] or string.format("\\x%02X", c:byte()) end

--- `s` with backslash, tab, newline and carriage return as \\, \t, \n, \r and every other
-- control byte as \xNN: one field of one line (the joblog's task column, an error message).
function M.printable(s)
  if not s:find("[%c\\]") then return s end   -- nearly every id: nothing to escape
  return (s:gsub("[%c\\]", escape))
end

return M
