-- The executors as modules (lua/coral/exec/): the local one with real children; the Slurm one's
-- pure parts (parsing squeue, wait statuses and comments, the sbatch arguments, its options),
-- and its commands run through coral.proc against fake sbatch/squeue/scancel scripts, so no
-- cluster is needed (spec/slurm_spec.lua runs the real one).
local H = require("spec.helper").guard(_ENV)
local uv = require "luv"
local proc = require "coral.proc"
local exec = require "coral.exec"
local slurm = require "coral.exec.slurm"

local function line() return debug.getinfo(2, "l").currentline end

-- Starts `job` on executor `ex`; returns the handle and a table that gets `info` at the exit.
local function start(ex, job)
  local result = {}
  local handle, err = ex:start(job, function(info) result.info = info end)
  assert(handle, err)
  return handle, result
end

-- Runs the loop until the job has ended and every child is reaped; returns the exit info.
local function wait_exit(result, secs)
  H.wait_until(function() return result.info ~= nil and proc.live() == 0 end, secs)
  return result.info
end

local function script(path, text)
  H.write_file(path, "#!/bin/sh\n" .. text, tonumber("755", 8))
  return path
end

local function lines_of(path)
  local out = {}
  for l in (H.read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

describe("coral.exec", function()
  describe("get", function()
    it("gives the local executor by default or by name, with its options", function()
      local ex = exec.get()
      assert.are.equal("function", type(ex.start))
      assert.are.equal(5, ex.kill_grace)
      assert.are.equal(1.5, exec.get("local", { kill_grace = 1.5 }).kill_grace)
      assert.are.equal(1.5, exec.local_executor { kill_grace = 1.5 }.kill_grace)
    end)

    it("finds an executor module by name, and returns a table as is", function()
      local ex = exec.get("slurm", { kill_grace = 2 })
      assert.are.equal(slurm.Slurm, getmetatable(ex))
      assert.are.equal(2, ex.kill_grace)
      local mine = { start = function() end }
      assert.are.equal(mine, exec.get(mine))
    end)

    it("returns nil and a message for an unknown name", function()
      local ex, err = exec.get("x")
      assert.is_nil(ex)
      assert.are.equal("unknown executor 'x' (executors: local, slurm)", err)
    end)
  end)

  describe("local executor", function()
    it("runs argv in cwd with env, into the stdout and stderr files", function()
      local dir = H.tmpdir()
      local handle, result = start(exec.local_executor(), {
        argv = { "sh", "-c", 'pwd; echo "$CORAL_SPEC_X"; echo "$1"; echo oops >&2; exit 3', "sh", "a 'b' $c" },
        env = { CORAL_SPEC_X = "from env" }, cwd = dir,
        stdout_path = dir .. "/a.out", stderr_path = dir .. "/a.err",
      })
      assert.is_true(math.type(handle.pid) == "integer" and handle.pid > 0)
      local info = wait_exit(result)
      assert.are.equal(3, info.code)
      assert.is_nil(info.signal)
      assert.is_nil(info.timed_out)
      assert.is_true(info.duration > 0 and info.duration < 5, tostring(info.duration))
      assert.are.equal(handle.pid, info.pid)
      assert.are.equal(uv.fs_realpath(dir) .. "\nfrom env\na 'b' $c\n", H.read_file(dir .. "/a.out"))
      assert.are.equal("oops\n", H.read_file(dir .. "/a.err"))
    end)

    it("feeds stdin from a string or a pipe, and streams stdout to on_stdout", function()
      local dir = H.tmpdir()
      local _, result = start(exec.local_executor(), { argv = { "cat" }, stdin = "given\n",
        stdout_path = dir .. "/s.out", stderr_path = dir .. "/s.err" })
      assert.are.equal(0, wait_exit(result).code)
      assert.are.equal("given\n", H.read_file(dir .. "/s.out"))
      local chunks = {}
      local handle
      handle, result = start(exec.local_executor(), { argv = { "cat" }, stdin = "pipe",
        on_stdout = function(d) chunks[#chunks + 1] = d end,
        stdout_path = dir .. "/p.out", stderr_path = dir .. "/p.err" })
      assert.is_true(handle:write("streamed\n"))
      handle:close_stdin()
      assert.are.equal(0, wait_exit(result).code)
      assert.are.equal("streamed\n", table.concat(chunks))
      assert.are.equal("streamed\n", H.read_file(dir .. "/p.out"))
    end)

    it("ends a job at its timeout with TERM and says so", function()
      local dir = H.tmpdir()
      local _, result = start(exec.local_executor(), { argv = { "sleep", "30" }, timeout = 0.3,
        stdout_path = dir .. "/t.out", stderr_path = dir .. "/t.err" })
      local info = wait_exit(result)
      assert.are.equal("timeout", info.timed_out)
      assert.are.equal(15, info.signal)
      assert.are.equal(143, info.code)
      assert.are.equal(0.3, info.timeout)
      assert.is_true(info.duration >= 0.3 and info.duration < 5, tostring(info.duration))
    end)

    -- outer.sh ignores TERM and starts inner.sh, which catches it: only a signal to the whole
    -- group reaches inner.sh, and only KILL ends outer.sh.
    local function group_job(dir)
      script(dir .. "/inner.sh", [[
trap 'echo term > inner.got; exit 0' TERM
echo > inner.ready
while :; do sleep 0.05; done
]])
      script(dir .. "/outer.sh", [[
./inner.sh &
trap '' TERM
echo > outer.ready
wait
echo > inner.ended
while :; do sleep 0.05; done
]])
      return { argv = { "./outer.sh" }, cwd = dir, stdout_path = dir .. "/g.out", stderr_path = dir .. "/g.err" }
    end

    local function ready(dir)
      return function() return H.read_file(dir .. "/inner.ready") and H.read_file(dir .. "/outer.ready") end
    end

    it("cancel() sends TERM to the process group, then KILL after the grace", function()
      local dir = H.tmpdir()
      local handle, result = start(exec.local_executor { kill_grace = 0.5 }, group_job(dir))
      H.wait_until(ready(dir))
      handle:cancel()
      local info = wait_exit(result)
      assert.are.equal("term\n", H.read_file(dir .. "/inner.got"))
      assert.truthy(H.read_file(dir .. "/inner.ended"), "outer.sh outlived the TERM")
      assert.are.equal(9, info.signal)
      assert.are.equal(137, info.code)
      assert.is_nil(info.timed_out)
      -- a plain child ends at the TERM
      local plain
      handle, plain = start(exec.local_executor(), { argv = { "sleep", "30" },
        stdout_path = dir .. "/p.out", stderr_path = dir .. "/p.err" })
      handle:cancel()
      assert.are.equal(15, wait_exit(plain).signal)
    end)

    it("cancel(true) sends KILL to the process group at once", function()
      local dir = H.tmpdir()
      local handle, result = start(exec.local_executor { kill_grace = 10 }, group_job(dir))
      H.wait_until(ready(dir))
      handle:cancel(true)
      local info = wait_exit(result)
      assert.are.equal(9, info.signal)
      assert.is_true(info.duration < 5, tostring(info.duration))
      assert.is_nil(H.read_file(dir .. "/inner.got"))
    end)

    it("returns nil, message, code when the program cannot start", function()
      local dir = H.tmpdir()
      local handle, err, code = exec.local_executor():start({ argv = { "nosuchprog" },
        stdout_path = dir .. "/a.out", stderr_path = dir .. "/a.err" }, function() end)
      assert.is_nil(handle)
      assert.are.equal("spawn nosuchprog: ENOENT: no such file or directory", err)
      assert.are.equal("ENOENT", code)
    end)
  end)
end)

describe("coral.exec.slurm", function()
  describe("parsing", function()
    it("parse_squeue reads id, state, wait status and comment from -O JobID:|,State:|,exit_code:|,Comment:|", function()
      local jobs = slurm.parse_squeue(table.concat({
        "12|RUNNING|0|coral:r1:1:a|",
        "13|COMPLETED|1792|coral:r1:2:b:c|",
        "14|CANCELLED by 0|15|(null)|",
        "15|PENDING||coral:r1:1:d",
        "slurm_load_jobs error: Invalid job id specified",
        "",
      }, "\n"))
      assert.are.same({
        ["12"] = { state = "RUNNING", status = 0, comment = "coral:r1:1:a" },
        ["13"] = { state = "COMPLETED", status = 1792, comment = "coral:r1:2:b:c" },
        ["14"] = { state = "CANCELLED", status = 15, comment = "(null)" },
        ["15"] = { state = "PENDING", comment = "coral:r1:1:d" },
      }, jobs)
      assert.are.same({}, slurm.parse_squeue(""))
    end)

    it("decode_status turns a raw wait status into code and signal, as a shell reports them", function()
      assert.are.same({ 0 }, { slurm.decode_status(0) })
      assert.are.same({ 7 }, { slurm.decode_status(7 << 8) })
      assert.are.same({ 143, 15 }, { slurm.decode_status(15) })
      assert.are.same({ 137, 9 }, { slurm.decode_status(9 | 0x80) })  -- killed, dumped core
      assert.are.same({}, { slurm.decode_status(nil) })
    end)

    it("parse_comment reads coral:<run>:<attempt>:<task>, and nothing else", function()
      assert.are.same({ "r1", 2, "a" }, { slurm.parse_comment("coral:r1:2:a") })
      assert.are.same({ "r1", 1, "ns:task" }, { slurm.parse_comment("coral:r1:1:ns:task") })
      assert.is_nil(slurm.parse_comment("coral:r1:x:a"))
      assert.is_nil(slurm.parse_comment("other"))
      assert.is_nil(slurm.parse_comment(nil))
    end)
  end)

  describe("new", function()
    it("rejects an unknown option or a wrong type at the caller's line", function()
      local l
      local ok, err = pcall(function() l = line(); slurm.new { partiton = "batch" } end)
      assert.is_false(ok)
      assert.are.equal("spec/exec_spec.lua:" .. l .. ": coral.exec.slurm: unknown option 'partiton' " ..
        "(did you mean 'partition'? known: account, args, coral_bin, cpus, kill_grace, mem, partition, poll, qos, sbatch, scancel, squeue, " ..
        "time)", tostring(err))
      ok, err = pcall(function() l = line(); slurm.new { cpus = "2" } end)
      assert.is_false(ok)
      assert.are.equal("spec/exec_spec.lua:" .. l .. ": coral.exec.slurm: option 'cpus' must be integer, got string",
                       tostring(err))
    end)

    it("has defaults, and from_cli maps the --slurm-* options", function()
      local ex = slurm.new()
      assert.are.same({ 5, 0.5, "sbatch", "squeue", "scancel" },
        { ex.kill_grace, ex.poll_interval, ex.sbatch, ex.squeue, ex.scancel })
      ex = slurm.from_cli { slurm_partition = "batch", slurm_mem = "4096", slurm_cpus = 2,
                            slurm_coral_bin = "/opt/coral" }
      assert.are.same({ partition = "batch", mem = 4096, cpus = 2 }, ex.defaults)
      assert.are.equal("/opt/coral", ex.coral_bin)
    end)
  end)

  describe("sbatch_args", function()
    it("builds the arguments from the executor's defaults and the task's slurm table", function()
      local ex = slurm.new { partition = "batch", cpus = 2, qos = "low", args = "--nice=5 --hold" }
      local job = { cwd = "/srv/a dir", stdout_path = "/r/tasks/a/attempt-2.out", stderr_path = "/r/50%/attempt-2.err",
                    stdin_path = "/r/tasks/a/attempt-2.in", timeout = 90,
                    slurm = { cpus = 4, mem = "4G", account = "proj", args = { "--gres=gpu:1" } } }
      assert.are.same({
        "sbatch", "--parsable", "--export=ALL", "--job-name=coral.a", "--comment=coral:r1:2:a",
        "--chdir=/srv/a dir", "--output=/r/tasks/a/attempt-2.out", "--error=/r/50%%/attempt-2.err",
        "--input=/r/tasks/a/attempt-2.in", "--partition=batch", "--cpus-per-task=4", "--mem=4G",
        "--account=proj", "--qos=low",
        "--time=3",  -- (90 s + 5 s of grace) in minutes, rounded up, plus one
        "--nice=5", "--hold", "--gres=gpu:1", "/r/tasks/a/attempt-2.sbatch",
      }, ex:sbatch_args(job, { run = "r1", task = "a", attempt = 2 }, "/r/tasks/a/attempt-2.sbatch"))
    end)

    it("asks the cluster for the task's resources; its slurm table wins", function()
      local job = { cwd = "/w", stdout_path = "/r/o", stderr_path = "/r/e", resources = { cpus = 2, mem_gb = 1.5, gpu = 1 } }
      local argv = slurm.new():sbatch_args(job, { run = "r", task = "t", attempt = 1 }, "s")
      assert.are.same({ "sbatch", "--parsable", "--export=ALL", "--job-name=coral.t", "--comment=coral:r:1:t",
                        "--chdir=/w", "--output=/r/o", "--error=/r/e", "--cpus-per-task=2", "--mem=1536",
                        "--gres=gpu:1", "s" }, argv)
      job.slurm = { cpus = 8 }
      argv = slurm.new():sbatch_args(job, { run = "r", task = "t", attempt = 1 }, "s")
      assert.are.equal("--cpus-per-task=8", argv[9])
    end)

    it("takes a task's time as given, and adds no limit without a timeout", function()
      local ex = slurm.new { sbatch = "/opt/slurm/bin/sbatch", time = 30 }
      local job = { cwd = "/w", stdout_path = "/r/o", stderr_path = "/r/e", timeout = 600,
                    slurm = { time = "1:00:00" } }
      local argv = ex:sbatch_args(job, { run = "r", task = "t", attempt = 1 }, "s")
      assert.are.equal("/opt/slurm/bin/sbatch", argv[1])
      assert.are.equal("--time=1:00:00", argv[#argv - 1])
      argv = slurm.new():sbatch_args({ cwd = "/w", stdout_path = "/r/o", stderr_path = "/r/e" },
                                     { run = "r", task = "t", attempt = 1 }, "s")
      assert.are.same({ "sbatch", "--parsable", "--export=ALL", "--job-name=coral.t", "--comment=coral:r:1:t",
                        "--chdir=/w", "--output=/r/o", "--error=/r/e", "s" }, argv)
    end)
  end)

  describe("start", function()
    local function job_in(dir, extra)
      local job = { argv = { "echo", "it's $HOME" }, cwd = dir, stdout_path = dir .. "/attempt-1.out",
                    stderr_path = dir .. "/attempt-1.err",
                    env = { CORAL_RUN_ID = "r1", CORAL_TASK_ID = "a", CORAL_ATTEMPT = "1" } }
      for k, v in pairs(extra or {}) do job[k] = v end
      return job
    end

    it("refuses pipeline mode and a task's unknown slurm option, with the task's name", function()
      local dir = H.tmpdir()
      local ex = slurm.new { sbatch = dir .. "/never" }
      local handle, err = ex:start(job_in(dir, { stdin = "pipe" }), function() end)
      assert.is_nil(handle)
      assert.are.equal("the slurm executor cannot stream between tasks (pipeline mode): use another mode", err)
      handle, err = ex:start(job_in(dir, { slurm = { partiton = "x" } }), function() end)
      assert.is_nil(handle)
      assert.matches("^task 'a': slurm: unknown option 'partiton' %(did you mean 'partition'%? known: account, args, cpus", err)
    end)

    it("returns nil, message, code when sbatch cannot start", function()
      local dir = H.tmpdir()
      local handle, err, code = slurm.new { sbatch = dir .. "/nosuch" }:start(job_in(dir), function() end)
      assert.is_nil(handle)
      assert.are.equal("spawn " .. dir .. "/nosuch: ENOENT: no such file or directory", err)
      assert.are.equal("ENOENT", code)
    end)
  end)

  -- Fake Slurm commands: each logs its arguments, one per line, and answers from files.
  describe("with fake commands", function()
    local function fakes(dir)
      return {
        sbatch = script(dir .. "/sbatch", ([[
for a in "$@"; do echo "$a"; done > %s/sbatch.args
echo "$CORAL_TASK_ID" > %s/sbatch.env
echo 4242
]]):format(dir, dir)),
        -- RUNNING until scancel was called, then CANCELLED by the signal scancel sent
        squeue = script(dir .. "/squeue", ([[
for a in "$@"; do echo "$a"; done > %s/squeue.args
if [ -e %s/sig ]; then echo "4242|CANCELLED|$(cat %s/sig)|coral:r1:1:a|"
else echo "4242|RUNNING|0|coral:r1:1:a|"; fi
]]):format(dir, dir, dir)),
        scancel = script(dir .. "/scancel", ([[
for a in "$@"; do echo "$a"; done >> %s/scancel.args
case "$1" in --signal=KILL) echo 9 > %s/sig ;; *) echo 15 > %s/sig ;; esac
]]):format(dir, dir, dir)),
      }
    end

    local function slurm_job(dir)
      local job = { argv = { "echo", "it's $HOME" }, cwd = dir .. "/a 'dir'", stdout_path = dir .. "/attempt-1.out",
                    stderr_path = dir .. "/attempt-1.err",
                    env = { CORAL_RUN_ID = "r1", CORAL_TASK_ID = "a", CORAL_ATTEMPT = "1" } }
      uv.fs_mkdir(job.cwd, tonumber("755", 8))
      return job
    end

    it("submits with sbatch's argv, no shell, and cancel() runs scancel on the job id", function()
      local dir = H.tmpdir()
      local f = fakes(dir)
      local ex = slurm.new { sbatch = f.sbatch, squeue = f.squeue, scancel = f.scancel, poll = 0.05 }
      local job = slurm_job(dir)
      local submitted
      job.on_submit = function(id) submitted = id end
      local handle, result = start(ex, job)
      H.wait_until(function() return H.read_file(dir .. "/squeue.args") end)
      assert.are.equal(4242, submitted)
      assert.are.equal(4242, handle.job_id)
      assert.are.same(ex:sbatch_args(job, { run = "r1", task = "a", attempt = "1" }, dir .. "/attempt-1.sbatch"),
                      { f.sbatch, table.unpack(lines_of(dir .. "/sbatch.args")) })
      assert.are.equal("--chdir=" .. dir .. "/a 'dir'", lines_of(dir .. "/sbatch.args")[5])
      assert.are.equal("a\n", H.read_file(dir .. "/sbatch.env"))
      assert.are.equal("#!/bin/sh\n# coral: run r1, task a, attempt 1\nexec 'echo' 'it'\\''s $HOME'\n",
                       H.read_file(dir .. "/attempt-1.sbatch"))
      assert.are.same({ "-h", "--states=all", "--jobs=4242", "-O", "JobID:|,State:|,exit_code:|,Comment:|" },
                      lines_of(dir .. "/squeue.args"))
      handle:cancel()
      local info = wait_exit(result)
      assert.are.same({ "4242" }, lines_of(dir .. "/scancel.args"))
      assert.are.same({ 143, 15, "CANCELLED", 4242 }, { info.code, info.signal, info.slurm_state, info.job_id })
      assert.is_true(info.duration >= 0 and info.duration < 5)
    end)

    it("cancel(true) sends KILL through scancel, and a cancel before sbatch answers waits for the id", function()
      local dir = H.tmpdir()
      local f = fakes(dir)
      local ex = slurm.new { sbatch = f.sbatch, squeue = f.squeue, scancel = f.scancel, poll = 0.05 }
      local handle, result = start(ex, slurm_job(dir))
      assert.is_nil(handle.job_id)
      handle:cancel(true)
      local info = wait_exit(result)
      assert.are.same({ "--signal=KILL", "4242" }, lines_of(dir .. "/scancel.args"))
      assert.are.same({ 137, 9 }, { info.code, info.signal })
    end)

    it("puts sbatch's own error in the attempt's stderr file and ends the attempt with its code", function()
      local dir = H.tmpdir()
      local cases = {
        { "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1",
          1, "sbatch: error: Batch job submission failed: Invalid partition name specified\n" },
        { "echo 'Invalid partition' >&2; exit 1", 1, "sbatch: Invalid partition\n" },
        { "exit 3", 3, "sbatch: exit code 3\n" },
        { "echo Submitted", 1, "sbatch: no job id in its answer 'Submitted'\n" },
      }
      for i, case in ipairs(cases) do
        local sub = dir .. "/" .. i
        uv.fs_mkdir(sub, tonumber("755", 8))
        local ex = slurm.new { sbatch = script(sub .. "/sbatch", case[1]) }
        local _, result = start(ex, slurm_job(sub))
        local info = wait_exit(result)
        assert.are.equal(case[2], info.code, case[1])
        assert.is_nil(info.job_id)
        assert.are.equal(case[3], H.read_file(sub .. "/attempt-1.err"))
      end
    end)

    describe("recover", function()
      local saved_user
      before_each(function()
        saved_user = os.getenv("USER")
        uv.os_setenv("USER", "spec-user")
      end)
      after_each(function()
        if saved_user then uv.os_setenv("USER", saved_user) else uv.os_unsetenv("USER") end
      end)

      it("adopts the expected attempts and cancels the run's other unfinished jobs", function()
        local dir = H.tmpdir()
        local squeue = script(dir .. "/squeue", ([[
for a in "$@"; do echo "$a"; done > %s/squeue.args
cat <<'EOF'
10|RUNNING|0|coral:r1:2:a|
11|PENDING|0|coral:r1:1:a|
12|COMPLETED|0|coral:r1:1:b|
9|COMPLETED|256|coral:r1:1:d|
103|RUNNING|0|coral:r1:1:c|
14|RUNNING|0|coral:r2:1:a|
15|RUNNING|0|not-coral|
EOF
]]):format(dir))
        local scancel = script(dir .. "/scancel", ('for a in "$@"; do echo "$a"; done > %s/scancel.args\n'):format(dir))
        local adopt = slurm.new { squeue = squeue, scancel = scancel }:recover("r1",
          { a = { attempt = 2 }, d = { attempt = 1 } })
        assert.are.same({ a = { job_id = 10, state = "RUNNING" }, d = { job_id = 9, state = "COMPLETED" } }, adopt)
        assert.are.same({ "-h", "--user=spec-user", "--states=all", "-O", "JobID:|,State:|,exit_code:|,Comment:|" },
                        lines_of(dir .. "/squeue.args"))
        assert.are.same({ "11", "103" }, lines_of(dir .. "/scancel.args"))
        assert.are.equal(0, proc.live())
      end)

      -- Runs recover in a coral of its own, to see its warnings on stderr.
      local function recover_in_coral(opts, running)
        local r = H.run { "-e", string.format([[
local adopt = require("coral.exec.slurm").new(%s):recover("r1", %s)
io.write(require("cjson").encode(adopt))]], opts, running) }
        assert.are.equal(0, r.code, r.stderr)
        return r.stdout, r.stderr
      end

      it("warns and adopts nothing when squeue fails or is missing", function()
        local dir = H.tmpdir()
        local failing = script(dir .. "/squeue", "echo 'squeue: error: Invalid user: spec-user' >&2; exit 1\n")
        local adopt, err = recover_in_coral(string.format("{ squeue = %q }", failing), "{ a = { attempt = 1 } }")
        assert.are.equal("{}", adopt)
        assert.are.equal("coral: warning: cannot list the run's slurm jobs: squeue: error: Invalid user: spec-user\n",
                         err)
        adopt, err = recover_in_coral(string.format("{ squeue = %q }", dir .. "/nosuch"), "{}")
        assert.are.equal("{}", adopt)
        assert.are.equal("coral: warning: cannot list the run's slurm jobs: spawn " .. dir ..
                         "/nosuch: ENOENT: no such file or directory\n", err)
      end)

      it("warns when scancel fails", function()
        local dir = H.tmpdir()
        local listing = script(dir .. "/squeue", "echo '7|RUNNING|0|coral:r1:1:a|'\n")
        local scancel = script(dir .. "/scancel",
          "echo 'scancel: error: Kill job error on job id 7: Access denied' >&2; exit 1\n")
        local adopt, err = recover_in_coral(string.format("{ squeue = %q, scancel = %q }", listing, scancel), "{}")
        assert.are.equal("{}", adopt)
        assert.are.equal("coral: warning: cannot cancel the run's unexpected slurm jobs 7: " ..
                         "scancel: error: Kill job error on job id 7: Access denied\n", err)
      end)
    end)
  end)
end)
