-- The HTML run report in a real browser: headless Chromium (Debian's chromium, installed by
-- scripts/install-deps --test when missing) loads the report of a real run from file://, with
-- no network; the page's own script counts what the browser drew and writes the counts into
-- the DOM, which --dump-dom hands back. A screenshot is kept as a test artifact in
-- $CORAL_ARTIFACTS (relative to the tree's root, e.g. build/artifacts) or else a temp dir.
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local fsutil = require "coral.fsutil"

local FLAGS = {
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
  "--disable-crash-reporter", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
}

local function chromium_path()
  local path = fsutil.which("chromium")
  if path then return path end
  local r = H.run({ "scripts/install-deps", "--test" }, { exe = "/bin/sh", timeout = 900 })
  assert(r.code == 0, "cannot install chromium: " .. r.stdout .. r.stderr)
  return assert(fsutil.which("chromium"), "chromium is not on PATH after install-deps --test")
end

-- Processes whose command line names `needle` (Chromium's helpers carry its --user-data-dir).
local function processes_with(needle)
  local found = {}
  local dir = uv.fs_scandir("/proc")
  while dir do
    local name = uv.fs_scandir_next(dir)
    if not name then break end
    local pid = tonumber(name)
    if pid and pid ~= uv.os_getpid() then
      local cmdline = H.read_file("/proc/" .. name .. "/cmdline")
      if cmdline and cmdline:find(needle, 1, true) then found[#found + 1] = pid end
    end
  end
  return found
end

-- Runs Chromium in a session of its own and waits for it; then kills its process group and any
-- helper still alive (the GPU, network and crashpad processes can outlive the browser).
local function chromium(exe, profile, args, timeout)
  local argv = { "--user-data-dir=" .. profile }
  for _, f in ipairs(FLAGS) do argv[#argv + 1] = f end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local env = {}
  for k, v in pairs(uv.os_environ()) do
    if k ~= "HOME" and k ~= "XDG_CONFIG_HOME" and k ~= "XDG_CACHE_HOME" then env[#env + 1] = k .. "=" .. v end
  end
  env[#env + 1] = "HOME=" .. profile     -- nothing is written into the user's home
  local stdout, stderr = uv.new_pipe(), uv.new_pipe()
  local out, err, result = {}, {}, {}
  local handle, pid
  handle, pid = uv.spawn(exe, { args = argv, env = env, stdio = { nil, stdout, stderr }, detached = true },
    function(code, signal)
      result.code, result.signal = code, signal
      handle:close()
    end)
  assert(handle, pid)
  stdout:read_start(function(e, chunk) assert(not e, e); if chunk then out[#out + 1] = chunk else stdout:close() end end)
  stderr:read_start(function(e, chunk) assert(not e, e); if chunk then err[#err + 1] = chunk else stderr:close() end end)
  local timer = uv.new_timer()
  local timed_out = false
  timer:start(math.floor((timeout or 30) * 1000), 0, function()
    timed_out = true
    uv.kill(-pid, "sigkill")
  end)
  while result.code == nil or not stdout:is_closing() or not stderr:is_closing() do uv.run("once") end
  timer:close()
  uv.kill(-pid, "sigkill")
  local deadline = uv.hrtime() + 5e9
  local left = processes_with(profile)
  while #left > 0 and uv.hrtime() < deadline do
    for _, p in ipairs(left) do uv.kill(p, "sigkill") end
    uv.sleep(20)
    left = processes_with(profile)
  end
  uv.run("nowait")
  assert(not timed_out, "chromium did not finish within the timeout: " .. table.concat(args, " "))
  result.stdout, result.stderr = table.concat(out), table.concat(err)
  return result
end

local function artifacts_dir()
  local dir = os.getenv("CORAL_ARTIFACTS")
  if dir and dir ~= "" then
    assert(fsutil.mkdirs(fsutil.absolute(dir)))
    return fsutil.absolute(dir)
  end
  -- Not an H.tmpdir(): those are removed after the spec, and the screenshot is kept.
  return assert(uv.fs_mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/coral-artifacts-XXXXXX"))
end

local function attr(tag, name)
  return tonumber(tag:match(name:gsub("%-", "%%-") .. '="(%d+)"'))
end

describe("the run report in headless Chromium", function()
  it("shows one bar per attempt and the critical path, and is screenshotted", function()
    local exe = chromium_path()
    local dir = H.tmpdir()
    H.write_file(dir .. "/plan.lua", [[
local coral = require "coral"
local t = coral.task
return coral.plan({
  { t("project-architect", "Design", { id = "design", cmd = "sleep 0.2" }) },
  { t("backend-developer", "API, flaky", { id = "api", cmd = "test -f flaky || { touch flaky; sleep 0.1; exit 3; }; sleep 0.2" }),
    t("frontend-developer", "UI", { id = "ui", cmd = "sleep 0.3" }),
    t("qa-testing", "Always fails", { id = "broken", cmd = "sleep 0.1; exit 1", retries = 0 }) },
  { t("devops-deployment", "Deploy", { id = "deploy", cmd = "sleep 0.1", depends_on = { "api", "ui" } }) },
}, { name = "browser-spec" })
]])
    local r = H.run({ dir .. "/plan.lua", "Browser spec", "--dir", dir, "--quiet", "--retries", "1" })
    assert.are.equal(1, r.code, r.stderr)
    local run_id = require("coral.records").run_ids(dir)[1]
    local report = dir .. "/.coral/runs/" .. run_id .. "/report.html"
    assert.truthy(uv.fs_stat(report))
    local attempts = 0
    for line in io.lines(dir .. "/.coral/runs/" .. run_id .. "/joblog.tsv") do
      if not line:find("^task\t") then attempts = attempts + 1 end
    end
    assert.are.equal(6, attempts)   -- design, api x2, ui, broken, deploy

    -- The DOM after the page's script ran.
    local dom = chromium(exe, dir .. "/profile-dom", { "--dump-dom", "file://" .. report })
    assert.are.equal(0, dom.code, dom.stderr)
    local counts = dom.stdout:match('<span id="dom%-counts"[^>]*>')
    assert.truthy(counts, "the page's script did not run: " .. dom.stdout:sub(1, 300))
    assert.are.equal(attempts, attr(counts, "data-bars"), counts)
    assert.are.equal(attempts, attr(counts, "data-expected-bars"), counts)
    assert.are.equal(5, attr(counts, "data-tasks"), counts)
    -- design, api (two attempts) and deploy are the critical path, outlined.
    assert.are.equal(4, attr(counts, "data-critical-bars"), counts)
    assert.are.equal(attr(counts, "data-expected-critical-bars"), attr(counts, "data-critical-bars"))
    local drawn = select(2, dom.stdout:gsub('<rect class="bar ', ""))
    assert.are.equal(attempts, drawn)
    assert.truthy(dom.stdout:find('<rect class="bar outcome%-failed critical" data%-task="api" data%-attempt="1"'))
    assert.truthy(dom.stdout:find('<rect class="bar outcome%-succeeded critical retry" data%-task="api" data%-attempt="2"'))
    assert.truthy(dom.stdout:find('<g class="node critical" data-task="deploy"', 1, true))

    -- The screenshot, kept.
    local shot = artifacts_dir() .. "/report-screenshot.png"
    uv.fs_unlink(shot)
    local s = chromium(exe, dir .. "/profile-shot", { "--window-size=1280,1400", "--screenshot=" .. shot, "file://" .. report })
    assert.are.equal(0, s.code, s.stderr)
    local png = assert(H.read_file(shot), "no screenshot at " .. shot)
    assert.are.equal("\137PNG\r\n\26\n", png:sub(1, 8))
    assert.are.equal(1280, string.unpack(">I4", png, 17))
    assert.are.equal(1400, string.unpack(">I4", png, 21))
    assert.is_true(#png > 20000, "the screenshot looks empty")
    io.stderr:write("\nbrowser spec: screenshot of the run report kept at ", shot, "\n")
  end)
end)
