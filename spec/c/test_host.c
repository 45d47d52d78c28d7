/* C tests of the host: state setup, embedded modules, callback errors, shutdown, signals. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctest.h"

static void opens_embedded_modules(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L, "assert(require('coral').version == require('coral.host').version)"));
  CHECK(ctest_lua(h.L, "assert(require('cjson').encode({1}) == '[1]')"));
  CHECK(ctest_lua(h.L, "assert(#require('coral.host').embedded_files('lua/') > 0)"));
  CHECK(!ctest_lua(h.L, "require('coral.no_such_module')"));
  ctest_host_close(&h);
}

static void callback_error_is_raised_by_run(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local uv = require 'luv'\n"
    "local t = uv.new_timer()\n"
    "t:start(1, 0, function() t:close(); error('in callback') end)\n"
    "local ok, err = pcall(uv.run)\n"
    "assert(not ok and err:find('in callback'), err)\n"
    "assert(uv.run() == false)\n"));
  ctest_host_close(&h);
}

static void shutdown_closes_open_handles(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local uv = require 'luv'\n"
    "uv.new_timer():start(100000, 0, function() end)\n"
    "local p = uv.new_pipe()\n"
    "local n = 0; uv.walk(function() n = n + 1 end); assert(n == 2)\n"));
  ctest_host_close(&h);   /* uv_loop_close fails if a handle is left */
}

/* The three primitives word a call with too many arguments alike (util.c), numbering the
 * arguments as luaL_argerror does: without the object of a method call. */
static void argument_counts_read_the_same_everywhere(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local proc, dag, coord = require 'coral.proc', require 'coral.dag', require 'coral.coord'\n"
    "local function check(f, n, text)\n"
    "  local ok, err = pcall(f)\n"
    "  local got_n, got_text = tostring(err):match(\"bad argument #(%d+) to '[^']*' %((.*)%)$\")\n"
    "  assert(not ok and got_n == n and got_text == text, err)\n"
    "end\n"
    "check(function() dag.new(1) end, '1', 'no arguments expected, got 1')\n"
    "local g = dag.new(); g:add('a'); g:validate()\n"
    "check(function() g:counts(1) end, '1', 'no arguments expected, got 1')\n"
    "check(function() g:state('a', 1) end, '2', 'no more than 1 argument expected, got 2')\n"
    "check(function() g.state(g, 'a', 1) end, '3', 'no more than 2 arguments expected, got 3')\n"
    "check(function() g:ready(1, 'id', 3, 4) end, '3', 'no more than 2 arguments expected, got 4')\n"
    "check(function() coord.read('/nonexistent', nil, 1) end, '3', 'no more than 2 arguments expected, got 3')\n"
    "check(function() coord.lock('/nonexistent', nil, 1, 2) end, '3', 'no more than 2 arguments expected, got 4')\n"
    "check(function() proc.spawn({ argv = { 'true' } }, 2) end, '2', 'no more than 1 argument expected, got 2')\n"
    "local p = proc.spawn { argv = { 'true' } }\n"
    "check(function() p:wait(1) end, '1', 'no arguments expected, got 1')\n"
    "check(function() p:kill('TERM', 1) end, '2', 'no more than 1 argument expected, got 2')\n"
    "p:wait(); p:close()\n"));
  ctest_host_close(&h);
}

static int has_default_action(int signo) {
  struct sigaction sa;
  return sigaction(signo, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL;
}

/* Shutdown gives SIGINT, SIGTERM and SIGHUP their default action back: the handler it
 * installed must not outlive the state and the async handle it uses. */
static void shutdown_restores_default_signal_actions(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L, "require('coral.host').catch_signals()"));
  CHECK(!has_default_action(SIGINT));
  CHECK(!has_default_action(SIGTERM));
  CHECK(!has_default_action(SIGHUP));
  ctest_host_close(&h);
  CHECK(has_default_action(SIGINT));
  CHECK(has_default_action(SIGTERM));
  CHECK(has_default_action(SIGHUP));
}

/* In a child: catch the signals, shut down, then get `signo`. Returns the wait status. */
static int signal_after_shutdown(int signo) {
  int status = 0;
  pid_t pid = fork();
  if (pid == 0) {
    ctest_host h;
    ctest_host_open(&h);
    if (!ctest_lua(h.L, "require('coral.host').catch_signals()"))
      _exit(3);
    ctest_host_close(&h);
    raise(signo);
    _exit(0);   /* the signal was caught by a handler of a state that is gone */
  }
  if (pid < 0 || waitpid(pid, &status, 0) != pid)
    return -1;
  return status;
}

/* A signal after shutdown ends the process by its default action, as it would have without
 * coral, instead of calling into a closed state (a crash) or being swallowed. */
static void signal_after_shutdown_takes_default_action(void) {
  int status = signal_after_shutdown(SIGINT);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
  status = signal_after_shutdown(SIGTERM);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
}

/* While the handlers are installed, a signal becomes an error at the next Lua instruction
 * (in a child: the signal that interrupted the host is remembered for good). */
static void signal_raises_interrupted_error(void) {
  int status = 0;
  pid_t pid = fork();
  if (pid == 0) {
    ctest_host h;
    int ok;
    ctest_host_open(&h);
    ok = ctest_lua(h.L, "require('coral.host').catch_signals()") &&
         ctest_lua(h.L,
           "local uv = require 'luv'\n"
           "local ok, err = pcall(function()\n"
           "  uv.kill(uv.os_getpid(), 'sigterm')\n"
           "  while true do end\n"
           "end)\n"
           "assert(not ok and err:find('interrupted by SIGTERM', 1, true), err)\n") &&
         coral_interrupted() == SIGTERM;
    ctest_host_close(&h);
    _exit(ok ? 0 : 1);
  }
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* host.peer_cred: the uid and pid at the other end of a Unix socket luv accepted (the
 * live-control socket compares the uid with its own), nil and an error for a non-socket. */
static void peer_cred_names_the_connecting_process(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local uv, host = require 'luv', require 'coral.host'\n"
    "local path = os.tmpname(); os.remove(path)\n"
    "local server = uv.new_pipe(false)\n"
    "assert(server:bind(path))\n"
    "local got\n"
    "assert(server:listen(4, function()\n"
    "  local c = uv.new_pipe(false); server:accept(c)\n"
    "  got = { host.peer_cred(c:fileno()) }\n"
    "  c:close()\n"
    "end))\n"
    "local client = uv.new_pipe(false)\n"
    "client:connect(path, function() end)\n"
    "while not got do uv.run('once') end\n"
    "client:close(); server:close(); uv.run(); os.remove(path)\n"
    "assert(got[1] == uv.getuid() and got[2] == uv.getgid() and got[3] == uv.os_getpid(), tostring(got[1]))\n"
    "local f = io.open('/dev/null')\n"
    "local fd = assert(uv.fs_open('/dev/null', 'r', 0))\n"
    "local ok, err = host.peer_cred(fd); uv.fs_close(fd); f:close()\n"
    "assert(ok == nil and err:find('^peer credentials of fd %d+: '), err)\n"));
  ctest_host_close(&h);
}

int main(void) {
  RUN(opens_embedded_modules);
  RUN(callback_error_is_raised_by_run);
  RUN(shutdown_closes_open_handles);
  RUN(argument_counts_read_the_same_everywhere);
  RUN(shutdown_restores_default_signal_actions);
  RUN(signal_after_shutdown_takes_default_action);
  RUN(signal_raises_interrupted_error);
  RUN(peer_cred_names_the_connecting_process);
  CTEST_EXIT();
}
