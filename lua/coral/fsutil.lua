--- Small file-system helpers over luv, shared by the runner's modules.
-- None of them loops without a bound: mkdirs recurses once per missing parent, and nothing
-- here retries; the waits that can block (locks) are coral.coord's, which Ctrl-C ends.
local host = require "coral.host"
local uv = require "luv"

-- An executable is a file (a directory passes the X access check too).
local function is_executable(p)
  local st = uv.fs_stat(p)
  return st ~= nil and st.type == "file" and uv.fs_access(p, "X") == true
end

local M = {}

--- Why `path` (whose lstat is `st`) is not what coral expected to find there: "<path> is a
-- symbolic link (coral does not follow it)", "... is not a directory" (`want` "directory") or
-- "... is not a regular file" (`want` "file"); nil when it is what was wanted. coral.coord
-- says the same about the coordination files.
function M.refusal(path, st, want)
  if not st then return nil end
  if st.type == "link" then return path .. " is a symbolic link (coral does not follow it)" end
  if st.type ~= want then
    return path .. (want == "directory" and " is not a directory" or " is not a regular file")
  end
  return nil
end

--- Is `path` free for coral's own file: missing, or a regular file (not a link, a FIFO, a
-- directory)? Returns true or nil and the refusal.
function M.own_file(path)
  local err = M.refusal(path, uv.fs_lstat(path), "file")
  if err then return nil, err end
  return true
end

--- Creates one directory `path` with `mode`; one that is there already is fine, a link or a
-- file in its place is refused. One mkdir when it is new, no stat first. Returns true and
-- "new" when this call made it, true when it was there, or nil and the refusal.
function M.mkdir(path, mode)
  local ok, err, code = uv.fs_mkdir(path, mode or tonumber("755", 8))
  if ok then return true, "new" end
  if code == "EEXIST" then
    local st = uv.fs_lstat(path)
    if st and st.type == "directory" then return true end
    return nil, M.refusal(path, st, "directory") or ("create directory " .. path .. ": " .. err)
  end
  return nil, "create directory " .. path .. ": " .. err
end

--- Creates `path` and its missing parents with `mode` (default 0755). Returns true or nil, err.
-- Below `root` (a prefix of path, followed as named: the caller chose it), each component is
-- checked or made one at a time, and a symbolic link or a file there is refused: coral's own
-- directories (.coral, run dirs) are never reached through a link.
function M.mkdirs(path, mode, root)
  mode = mode or tonumber("755", 8)
  if root and path:sub(1, #root + 1) == root .. "/" then
    local dir = root
    for part in path:sub(#root + 2):gmatch("[^/]+") do
      dir = dir .. "/" .. part
      local ok, err = M.mkdir(dir, mode)
      if not ok then return nil, err end
    end
    return true
  end
  local st = uv.fs_stat(path)
  if st and st.type == "directory" then return true end
  local parent = not st and path:match("^(.*)/[^/]+/*$")
  if parent and parent ~= "" then
    local ok, err = M.mkdirs(parent, mode)
    if not ok then return nil, err end
  end
  local ok, err, code = uv.fs_mkdir(path, mode)
  if not ok and code == "EEXIST" then
    -- made meanwhile by another process, or a file is in the way
    st = uv.fs_stat(path)
    if st and st.type == "directory" then return true end
  end
  if not ok then return nil, "create directory " .. path .. ": " .. err end
  return true
end

--- Opens a file to write, never through a symbolic link: `how` "w" (created or truncated),
-- "a" (created or appended to) or "a+" (the same, and readable: the journal reads its last byte). O_NOFOLLOW refuses a link at path, even a dangling one;
-- O_NONBLOCK keeps a FIFO there from blocking the open, and anything but a regular file is
-- refused. Returns the fd, or nil and why not (the caller names the operation and the path:
-- "write <path>: <why>").
function M.open(path, how, mode)
  local c = uv.constants
  assert(how == "w" or how == "a" or how == "a+", "fsutil.open: how must be \"w\", \"a\" or \"a+\"")
  local append = how == "a" or how == "a+"
  local flags = (how == "a+" and c.O_RDWR or c.O_WRONLY) | c.O_CREAT | host.O_NOFOLLOW | c.O_NONBLOCK
    | (append and c.O_APPEND or c.O_TRUNC)
  local fd, err, code = uv.fs_open(path, flags, mode or tonumber("644", 8))
  if not fd then
    return nil, (code == "ELOOP" or code == "ENXIO") and M.refusal(path, uv.fs_lstat(path), "file") or err
  end
  local st, serr = uv.fs_fstat(fd)
  if not st or st.type ~= "file" then
    uv.fs_close(fd)
    return nil, st and (path .. " is not a regular file") or serr
  end
  return fd
end

--- The whole content of a file, or nil and the error.
function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data, rerr = f:read("a")   -- a directory opens, and fails here
  f:close()
  if not data then return nil, path .. ": " .. tostring(rerr) end
  return data
end

--- Writes all of `data` to `fd` at `offset` (-1: at the file's position, as O_APPEND does).
-- A write that stops short (the disk filled up) is followed by another for the rest, which
-- says why: the error names the cause ("ENOSPC: no space left on device"), not "short write".
-- Returns true, or nil, the error and the count of bytes written.
function M.write_all(fd, data, offset)
  local done = 0
  while done < #data do
    local n, err = uv.fs_write(fd, done == 0 and data or data:sub(done + 1), offset < 0 and -1 or offset + done)
    if not n then return nil, err, done end
    if n == 0 then return nil, "write returned 0 bytes", done end
    done = done + n
  end
  return true
end

--- Writes a whole file (no temp file, no fsync: for files that only this process writes and
-- that a crash of coral, not of the machine, must not lose), never through a link (M.open).
-- Returns true or nil, err.
function M.write_file(path, data, mode)
  local fd, err = M.open(path, "w", mode)
  if not fd then return nil, "write " .. path .. ": " .. err end
  local ok, werr = M.write_all(fd, data, 0)
  uv.fs_close(fd)
  if not ok then return nil, "write " .. path .. ": " .. tostring(werr) end
  return true
end

--- Writes a file through a temp file and rename, so readers see the old or the new content.
-- `data` is the text, or a function(write) that gives it in pieces, write(piece) each in turn
-- (a large record is then never whole in memory; an error it raises is raised here, with
-- nothing left on disk). A link at `path` is replaced by the file, never written through.
-- `nosync`: no fsync before the rename, for a file that is only a view of others (the live
-- report: the fsync of each rewrite cost more than drawing it), which a crash of the machine
-- may leave empty.
function M.write_atomic(path, data, mode, nosync)
  local tmp = string.format("%s.tmp-%d", path, uv.os_getpid())
  -- A temp file of that name may be left from a crashed process: remove it and create a new one
  -- (exclusively), so that `mode` applies and a link in its place is not written through.
  uv.fs_unlink(tmp)
  local fd, err = uv.fs_open(tmp, "wx", mode or tonumber("644", 8))
  if not fd then return nil, "write " .. path .. ": " .. err end
  -- a short write (disk full, file size limit) must not replace the file with a truncated one
  local ok, werr
  if type(data) == "function" then
    local at = 0
    ok = true
    local done, perr = pcall(data, function(piece)
      if not ok then return end
      ok, werr = M.write_all(fd, piece, at)
      at = at + #piece
    end)
    if not done then
      uv.fs_close(fd)
      uv.fs_unlink(tmp)
      error(perr, 0)
    end
  else
    ok, werr = M.write_all(fd, data, 0)
  end
  if ok and not nosync then ok, werr = uv.fs_fsync(fd) end
  uv.fs_close(fd)
  if ok then ok, werr = uv.fs_rename(tmp, path) end
  if not ok then
    uv.fs_unlink(tmp)
    return nil, "write " .. path .. ": " .. tostring(werr)
  end
  return true
end

--- Writes `data` to a new file named `path`, or `path`-2, -3, ... when that name is taken:
-- a copy kept aside never replaces an earlier one. Returns the name used, or nil and the error.
function M.write_new(path, data, mode)
  for i = 1, 1000 do
    local name = i == 1 and path or (path .. "-" .. i)
    local fd, err, code = uv.fs_open(name, "wx", mode or tonumber("644", 8))
    if fd then
      local ok, werr = M.write_all(fd, data, 0)
      if ok then ok, werr = uv.fs_fsync(fd) end
      uv.fs_close(fd)
      if not ok then
        uv.fs_unlink(name)
        return nil, "write " .. name .. ": " .. tostring(werr)
      end
      return name
    end
    if code ~= "EEXIST" then return nil, "write " .. name .. ": " .. tostring(err) end
  end
  return nil, "write " .. path .. ": 1000 copies of that name already"
end

--- An absolute, normalised version of `path` (relative to the current directory).
function M.absolute(path)
  if path:sub(1, 1) ~= "/" then path = uv.cwd() .. "/" .. path end
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." then parts[#parts] = nil
    elseif part ~= "." then parts[#parts + 1] = part end
  end
  return "/" .. table.concat(parts, "/")
end

-- The text of the last second asked, per format: a run asks for the same second many times
-- (a task's history entry, its activity entry), and os.date is not cheap.
local stamp_sec, stamp_text = {}, {}

--- Local time as "2026-01-15 10:30:12" (or with `fmt`).
function M.timestamp(t, fmt)
  fmt = fmt or "%Y-%m-%d %H:%M:%S"
  local sec = math.floor(t or os.time())
  if stamp_sec[fmt] ~= sec then stamp_sec[fmt], stamp_text[fmt] = sec, os.date(fmt, sec) end
  return stamp_text[fmt]
end

--- Wall-clock seconds with sub-second precision.
function M.now()
  local sec, usec = uv.gettimeofday()
  return sec + usec / 1e6
end

--- The last `limit` bytes of a file (all of a smaller one); "" when it cannot be read.
function M.tail(path, limit)
  local f = io.open(path, "rb")
  if not f then return "" end
  local size = f:seek("end")
  f:seek("set", math.max(0, size - limit))
  local data = f:read("a") or ""
  f:close()
  return data
end

--- Is `name` an executable on PATH? Returns its path.
function M.which(name)
  if name:find("/") then return is_executable(name) and name or nil end
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    local p = dir .. "/" .. name
    if is_executable(p) then return p end
  end
  return nil
end

--- A function(chunk) that hands each complete line of a stream cut anywhere to on_line
-- (without its newline); a partial line waits for the rest, in a list (not by repeated
-- concatenation: one line may come in many chunks). A line longer than `max_line` bytes is
-- dropped whole.
function M.line_reader(on_line, max_line)
  local parts, size, skipping = {}, 0, false
  return function(chunk)
    local pos = 1
    while true do
      local nl = chunk:find("\n", pos, true)
      if not nl then break end
      if not skipping then
        parts[#parts + 1] = chunk:sub(pos, nl - 1)
        on_line(table.concat(parts))
      end
      parts, size, skipping, pos = {}, 0, false, nl + 1
    end
    if pos <= #chunk and not skipping then
      size = size + #chunk - pos + 1
      if size > max_line then parts, skipping = {}, true
      else parts[#parts + 1] = chunk:sub(pos) end
    end
  end
end

return M
