/* C tests of coral.proc (spawn.c) under ASan and UBSan: every path that allocates, frees or
 * hands memory to libuv (pipes, line buffers, write requests, timers, detached states,
 * shutdown with live children) runs through a real Lua state. */
#include <errno.h>
#include <signal.h>

#include "ctest.h"

static void spawns_and_reports_exit(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc = require 'coral.proc'\n"
    "local out = {}\n"
    "local p = assert(proc.spawn { argv = { 'sh', '-c', 'echo hi; exit 3' },\n"
    "  stdout = function(d) out[#out + 1] = d end })\n"
    "local info = p:wait()\n"
    "assert(info.code == 3 and table.concat(out) == 'hi\\n', tostring(info.code))\n"
    "assert(info.pid == p.pid and info.duration > 0 and info.max_rss_kb > 0)\n"
    "assert(p:wait() == nil or true)\n"
    "p:close(); p:close()\n"
    "assert(proc.live() == 0)\n"));
  ctest_host_close(&h);
}

static void reports_failures_and_raises_on_mistakes(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc = require 'coral.proc'\n"
    "local p, err, code = proc.spawn { argv = { 'no-such-program-here' } }\n"
    "assert(p == nil and code == 'ENOENT', err)\n"
    "p, err, code = proc.spawn { argv = { 'true' }, cwd = '/no/such/dir' }\n"
    "assert(p == nil and code == 'ENOENT' and err:find('cwd'), err)\n"
    "p, err, code = proc.spawn { argv = { 'true' }, stdout = '/no/such/dir/out' }\n"
    "assert(p == nil and code == 'ENOENT' and err:find('stdout'), err)\n"
    "local ok, e = pcall(proc.spawn, { argv = { 'true' }, nope = 1 })\n"
    "assert(not ok and e:find(\"unknown option 'nope'\"), e)\n"
    "ok, e = pcall(proc.spawn, { argv = { 'true' }, stdout = { lines = 1 } })\n"
    "assert(not ok and e:find('lines'), e)\n"
    "collectgarbage(); collectgarbage()\n"));
  ctest_host_close(&h);
}

static void streams_stdin_lines_and_cap(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc = require 'coral.proc'\n"
    "local lines = {}\n"
    "local p = assert(proc.spawn { argv = { 'cat' }, stdin = true,\n"
    "  stdout = { lines = true, on_data = function(l) lines[#lines + 1] = l end } })\n"
    "assert(p:write('a\\nb')); assert(p:write(string.rep('x', 200000) .. '\\nc'))\n"
    "p:close_stdin()\n"
    "p:wait()\n"
    "assert(#lines == 3 and lines[1] == 'a' and #lines[2] == 200001 and lines[3] == 'c')\n"
    "local n = 0\n"
    "p = proc.spawn { argv = { 'head', '-c', '3000000', '/dev/zero' },\n"
    "  stdout = { cap = 1000, on_data = function(d) n = n + #d end } }\n"
    "local info = p:wait()\n"
    "assert(n == 1000 and info.stdout_dropped == 3000000 - 1000, info.stdout_dropped)\n"
    "p = proc.spawn { argv = { 'cat' }, stdin = string.rep('y', 300000), stdout = { cap = 10, on_data = function() end } }\n"
    "assert(p:wait().stdout_dropped == 300000 - 10)\n"));
  ctest_host_close(&h);
}

/* Back-pressure: write callbacks (done, EPIPE, dropped after close, a callback that closes its
 * own proc), the queue size, and a paused stdout that outlives its idle timeout. */
static void write_callbacks_and_paused_stdout(void) {
  ctest_host h;
  signal(SIGPIPE, SIG_IGN);  /* as the host does: EPIPE is an error return, not a death */
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc, uv = require 'coral.proc', require 'luv'\n"
    "local done = {}\n"
    "local p = assert(proc.spawn { argv = { 'sh', '-c', 'sleep 0.2; wc -c' }, stdin = true,\n"
    "  stdout = function() end })\n"
    "assert(p:write(string.rep('x', 300000), function(e) done[#done + 1] = e or 'ok' end))\n"
    "assert(p:write('', function(e) done[#done + 1] = e or 'empty' end))\n"
    "assert(#done == 0 and p:write_queue_size() > 0, p:write_queue_size())\n"
    "p:close_stdin()\n"
    "p:wait()\n"
    "assert(done[1] == 'ok' and done[2] == 'empty' and p:write_queue_size() == 0, tostring(done[1]))\n"
    "local q = proc.spawn { argv = { 'sh', '-c', 'exec 0<&-; sleep 0.2' }, stdin = true }\n"
    "local err\n"
    "q:write(string.rep('y', 200000), function(e) err = e end)\n"
    "q:wait()\n"
    "uv.run('nowait')\n"
    "assert(err == 'EPIPE', tostring(err))\n"
    "local called = false\n"
    "local r = proc.spawn { argv = { 'sleep', '30' }, stdin = true }\n"
    "r:write(string.rep('z', 300000), function() called = true end)\n"
    "r:close()\n"
    "local s = proc.spawn { argv = { 'sleep', '30' }, stdin = true, on_exit = function() end }\n"
    "s:write(string.rep('w', 300000), function() s:close() end)\n"
    "s:terminate(0)\n"
    "local deadline = uv.hrtime() + 5e9\n"
    "while proc.live() > 0 and uv.hrtime() < deadline do uv.run('once') end\n"
    "assert(not called and proc.live() == 0)\n"
    "local n = 0\n"
    "local t = proc.spawn { argv = { 'head', '-c', '1000000', '/dev/zero' }, idle_timeout = 0.1,\n"
    "  stdout = function(d) n = n + #d end }\n"
    "t:pause_stdout(); t:pause_stdout()\n"
    "local timer = uv.new_timer()\n"
    "timer:start(400, 0, function() timer:close(); assert(n < 1000000); t:resume_stdout() end)\n"
    "local info = t:wait()\n"
    "assert(n == 1000000 and info.timed_out == nil and info.code == 0, tostring(info.timed_out))\n"
    "local ok, e = pcall(function() proc.spawn { argv = { 'true' } }:pause_stdout() end)\n"
    "assert(not ok and e:find('does not read this stdout'), e)\n"
    "local fds, soft, hard = proc.fds()\n"
    "assert(fds >= 3 and soft >= fds and hard >= soft, fds)\n"));
  ctest_host_close(&h);
}

static void timeout_kills_the_group(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc = require 'coral.proc'\n"
    "local p = proc.spawn { argv = { 'sh', '-c', 'sleep 30 & sleep 30; wait' },\n"
    "  timeout = 0.2, kill_grace = 0.2, stdout = { on_data = function() end } }\n"
    "local info = p:wait()\n"
    "assert(info.timed_out == 'timeout' and info.signame == 'SIGTERM', info.signame)\n"
    "p = proc.spawn { argv = { 'sh', '-c', 'trap \"\" TERM; sleep 30' }, idle_timeout = 0.1, kill_grace = 0.1 }\n"
    "info = p:wait()\n"
    "assert(info.timed_out == 'idle' and info.signal == 9, tostring(info.signal))\n"));
  ctest_host_close(&h);
}

static void collected_and_closed_procs_are_reaped(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc, uv = require 'coral.proc', require 'luv'\n"
    "do proc.spawn { argv = { 'sleep', '30' }, stdout = { cap = 5 }, timeout = 30 } end\n"
    "local p = proc.spawn { argv = { 'sleep', '30' }, stdin = true }\n"
    "p:write('data that sleep never reads')\n"
    "p:close()\n"
    "assert(not pcall(p.wait, p))\n"
    "collectgarbage(); collectgarbage()\n"
    "local deadline = uv.hrtime() + 5e9\n"
    "while proc.live() > 0 and uv.hrtime() < deadline do uv.sleep(5); uv.run('nowait') end\n"
    "assert(proc.live() == 0, proc.live())\n"));
  ctest_host_close(&h);
}

static void callback_error_is_raised_by_wait(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc = require 'coral.proc'\n"
    "local p = proc.spawn { argv = { 'echo', 'x' }, stdout = function() error('in on_data') end }\n"
    "local ok, err = pcall(p.wait, p)\n"
    "assert(not ok and err:find('in on_data'), err)\n"
    "assert(p:wait().code == 0)\n"));
  ctest_host_close(&h);
}

/* The host exits with children still running: shutdown kills and reaps them all, closes
 * every handle (uv_loop_close fails otherwise), and nothing is leaked (ASan checks). */
static void shutdown_kills_live_children(void) {
  ctest_host h;
  lua_Integer pids[2];
  int i;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc = require 'coral.proc'\n"
    "A = proc.spawn { argv = { 'sleep', '30' }, on_exit = function() error('not called') end,\n"
    "  stdout = function() end, stdin = true, timeout = 60 }\n"
    "B = proc.spawn { argv = { 'sleep', '30' } }\n"
    "A:write(string.rep('z', 500000))\n"
    "A:write(string.rep('z', 500000), function() error('not called at shutdown') end)\n"
    "PIDS = { A.pid, B.pid }\n"));
  lua_getglobal(h.L, "PIDS");
  for (i = 0; i < 2; i++) {
    lua_rawgeti(h.L, -1, i + 1);
    pids[i] = lua_tointeger(h.L, -1);
    lua_pop(h.L, 1);
  }
  lua_pop(h.L, 1);
  ctest_host_close(&h);
  for (i = 0; i < 2; i++)
    CHECK(pids[i] > 0 && kill((pid_t)pids[i], 0) != 0 && errno == ESRCH);
}

/* Orphans come to the host (a subreaper): proc.adopted() lists the running ones (more than its
 * first 64-pid buffer), on_reaped comes before on_exit, adopted processes that exit are reaped,
 * and the host's shutdown kills and reaps the rest. */
static void adopted_processes_are_listed_reaped_and_killed(void) {
  ctest_host h;
  lua_Integer pids[70];
  int i, n;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc = require 'coral.proc'\n"
    "local order = {}\n"
    "local p = proc.spawn { cmd = 'for i in $(seq 70); do setsid sleep 30 & done; sleep 0.2', shell = true,\n"
    "  on_reaped = function(pid) order[#order + 1] = 'reaped'; assert(type(pid) == 'number') end,\n"
    "  on_exit = function() order[#order + 1] = 'exit' end }\n"
    "p:wait()\n"
    "assert(table.concat(order, ' ') == 'reaped exit', table.concat(order, ' '))\n"
    "local deadline = require('luv').hrtime() + 5e9\n"
    "PIDS = proc.adopted()\n"
    "while #PIDS < 70 and require('luv').hrtime() < deadline do PIDS = proc.adopted() end\n"
    "assert(#PIDS == 70, #PIDS)\n"
    "-- one exits: the next scan reaps it and lists the others\n"
    "require('luv').kill(PIDS[1], 'sigkill')\n"
    "while #proc.adopted() ~= 69 do require('luv').sleep(5) end\n"));
  lua_getglobal(h.L, "PIDS");
  n = (int)lua_rawlen(h.L, -1);
  for (i = 0; i < n && i < 70; i++) {
    lua_rawgeti(h.L, -1, i + 1);
    pids[i] = lua_tointeger(h.L, -1);
    lua_pop(h.L, 1);
  }
  lua_pop(h.L, 1);
  ctest_host_close(&h);
  CHECK(n == 70);
  for (i = 0; i < n && i < 70; i++)
    CHECK(pids[i] > 0 && kill((pid_t)pids[i], 0) != 0 && errno == ESRCH);
}

int main(void) {
  RUN(spawns_and_reports_exit);
  RUN(reports_failures_and_raises_on_mistakes);
  RUN(streams_stdin_lines_and_cap);
  RUN(write_callbacks_and_paused_stdout);
  RUN(timeout_kills_the_group);
  RUN(collected_and_closed_procs_are_reaped);
  RUN(callback_error_is_raised_by_wait);
  RUN(shutdown_kills_live_children);
  RUN(adopted_processes_are_listed_reaped_and_killed);
  CTEST_EXIT();
}
