/* C tests of coral.coord (src/coord.c): locks between Lua states of one process, cleanup on
 * errors and on memory exhaustion at every allocation, the holder named on timeout, and a
 * lock file replaced while a process waits for it. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctest.h"

static char dir[64];

static void make_dir(void) {
  snprintf(dir, sizeof dir, "/tmp/coral-ctest-XXXXXX");
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    exit(EXIT_FAILURE);
  }
}

static void remove_dir(void) {
  DIR *d = opendir(dir);
  struct dirent *ent;
  char path[sizeof dir + sizeof ent->d_name + 1];
  while (d != NULL && (ent = readdir(d)) != NULL) {
    if (ent->d_name[0] == '.' && (ent->d_name[1] == '\0' || (ent->d_name[1] == '.' && ent->d_name[2] == '\0')))
      continue;
    snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
    unlink(path);
  }
  if (d != NULL)
    closedir(d);
  rmdir(dir);
}

static int count_entries(const char *path) {
  DIR *d = opendir(path);
  int n = 0;
  while (d != NULL && readdir(d) != NULL)
    n++;
  if (d != NULL)
    closedir(d);
  return n;
}

static int open_fds(void) {
  return count_entries("/proc/self/fd");
}

/* Is the lock of `path` free? Asked with a fresh OFD lock, which conflicts with any other. */
static int lock_is_free(const char *path) {
  char lockpath[256];
  struct flock fl;
  int fd, ok;
  snprintf(lockpath, sizeof lockpath, "%s.lock", path);
  fd = open(lockpath, O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return 1;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  ok = fcntl(fd, F_OFD_SETLK, &fl) == 0;
  close(fd);
  return ok;
}

/* Sets the global P to `path` in the state. */
static void set_path(lua_State *L, const char *path) {
  lua_pushstring(L, path);
  lua_setglobal(L, "P");
}

static void sleep_ms(int ms) {
  struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
  nanosleep(&ts, NULL);
}

static void api_round_trip(void) {
  ctest_host h;
  char path[128];
  make_dir();
  snprintf(path, sizeof path, "%s/scratchpad.md", dir);
  ctest_host_open(&h);
  set_path(h.L, path);
  CHECK(ctest_lua(h.L,
    "local coord = require 'coral.coord'\n"
    "assert(coord.append(P, 'a\\n', { header = '# h\\n', sync = true }))\n"
    "assert(coord.update(P, function(old) return old .. 'b\\n' end))\n"
    "assert(coord.read(P) == '# h\\na\\nb\\n')\n"
    "local l <close> = assert(coord.lock(P))\n"
    "assert(coord.append(P, 'c\\n'))\n"
    "assert(select(3, coord.lock(P)) == 'EDEADLK')\n"));
  CHECK(lock_is_free(path));
  ctest_host_close(&h);
  remove_dir();
}

/* OFD locks belong to the open file, not the process: two states of one process exclude
 * each other like two processes would. */
static void two_states_exclude_each_other(void) {
  ctest_host a, b;
  char path[128];
  make_dir();
  snprintf(path, sizeof path, "%s/f", dir);
  ctest_host_open(&a);
  ctest_host_open(&b);
  set_path(a.L, path);
  set_path(b.L, path);
  CHECK(ctest_lua(a.L, "L = assert(require('coral.coord').lock(P))"));
  CHECK(!lock_is_free(path));
  CHECK(ctest_lua(b.L,
    "local ok, err, code = require('coral.coord').append(P, 'x', { timeout = 0.05 })\n"
    "assert(ok == nil and code == 'ETIMEDOUT', err)\n"
    "assert(err:find('timed out after 0.05 s waiting for the lock (held by pid ' .. "
    "math.tointeger(require('luv').os_getpid()) .. ')', 1, true), err)\n"));
  CHECK(ctest_lua(a.L, "L:unlock()"));
  CHECK(ctest_lua(b.L, "assert(require('coral.coord').append(P, 'x', { timeout = 0 }))"));
  /* a lock left to the collector is released by lua_close */
  CHECK(ctest_lua(a.L, "L = assert(require('coral.coord').lock(P))"));
  ctest_host_close(&a);
  CHECK(lock_is_free(path));
  ctest_host_close(&b);
  remove_dir();
}

static void update_error_leaves_nothing(void) {
  ctest_host h;
  char path[128];
  int fds;
  make_dir();
  snprintf(path, sizeof path, "%s/state", dir);
  ctest_host_open(&h);
  set_path(h.L, path);
  CHECK(ctest_lua(h.L, "coord = require 'coral.coord'; assert(coord.update(P, function() return 'v1' end))"));
  fds = open_fds();
  CHECK(ctest_lua(h.L,
    "local ok, err = pcall(coord.update, P, function(old) error('boom: ' .. old) end)\n"
    "assert(not ok and err:find('boom: v1'), err)\n"
    "ok, err = pcall(coord.update, P, function() return {} end)\n"
    "assert(not ok and err:find('must return a string or nil, got table'), err)\n"
    "assert(coord.read(P) == 'v1')\n"));
  CHECK(open_fds() == fds);
  CHECK(lock_is_free(path));
  CHECK(count_entries(dir) == 4);  /* . .. state state.lock */
  ctest_host_close(&h);
  remove_dir();
}

/* {{{ out of memory at every allocation */

typedef struct budget { int armed; long left; } budget;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  budget *b = ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (b->armed && b->left-- <= 0)
    return NULL;
  return realloc(ptr, nsize);
}

/* Runs `code` with memory failing at the n-th allocation, for n = 0, 1, ... until it runs
 * through; after each failure nothing may be left: no fd, no temp file, no lock. */
static void each_allocation_fails(const char *name, const char *code, const char *path, int entries) {
  budget b = { 0, 0 };
  uv_loop_t loop;
  lua_State *L;
  long n;
  int fds, status = LUA_ERRMEM, failures = 0;
  uv_loop_init(&loop);
  L = lua_newstate(limited_alloc, &b);
  coral_open_state(L, &loop, NULL);
  set_path(L, path);
  /* Lua 5.4.4's lauxlib makes the "_UBOX*" metatable of big luaL_Buffers on first use; if
   * memory runs out halfway it keeps one without __close and every later big buffer fails.
   * Make it before memory can fail: that is Lua's path, not coord's. */
  CHECK(ctest_lua(L, "coord = require 'coral.coord'; collectgarbage('stop'); local _ = string.rep('x', 100000)"));
  CHECK(luaL_loadstring(L, code) == LUA_OK);
  fds = open_fds();
  for (n = 0; n < 5000 && status != LUA_OK; n++) {
    lua_pushvalue(L, -1);
    b.left = n;
    b.armed = 1;
    status = lua_pcall(L, 0, 0, 0);
    b.armed = 0;
    if (status != LUA_OK) {
      const char *msg = lua_tostring(L, -1);
      if (status != LUA_ERRMEM && (msg == NULL || strstr(msg, "not enough memory") == NULL)) {
        fprintf(stderr, "  %s: unexpected error at allocation %ld: %s\n", name, n, msg ? msg : "?");
        failures++;
      }
      lua_pop(L, 1);
    }
    lua_gc(L, LUA_GCCOLLECT);  /* as a long-running host would, eventually */
    if (open_fds() != fds || !lock_is_free(path) || count_entries(dir) > entries) {
      fprintf(stderr, "  %s: left something behind after failing at allocation %ld\n", name, n);
      failures++;
      break;
    }
  }
  CHECK(status == LUA_OK);
  CHECK(failures == 0);
  CHECK(n > 3);  /* the loop did fail some allocations */
  lua_settop(L, 0);
  coral_shutdown(L);
  lua_close(L);
  CHECK(uv_loop_close(&loop) == 0);
}

static void out_of_memory_leaves_nothing(void) {
  char path[128];
  make_dir();
  snprintf(path, sizeof path, "%s/state", dir);
  /* . .. state state.lock: a temp file would make it 5 */
  each_allocation_fails("update",
    "assert(coord.update(P, function(old) return (old or '') .. string.rep('x', 100000) end))", path, 4);
  each_allocation_fails("append", "assert(coord.append(P, 'record\\n', { header = '# h\\n' }))", path, 4);
  each_allocation_fails("read", "assert(#coord.read(P) > 100000)", path, 4);
  each_allocation_fails("lock", "local l <close> = assert(coord.lock(P)); assert(coord.update(P, function() return 'y' end))",
                        path, 4);
  remove_dir();
}

/* }}} */
/* {{{ other processes */

/* A child that takes the lock of `path` itself (classic or OFD lock) and holds it until the
 * parent closes the pipe. */
static pid_t hold_in_child(const char *path, int classic, int *pipe_w) {
  int to_child[2], ready[2];
  char c;
  pid_t pid;
  CHECK(pipe(to_child) == 0 && pipe(ready) == 0);
  fflush(NULL);
  pid = fork();
  if (pid == 0) {
    char lockpath[256];
    struct flock fl;
    int fd;
    close(to_child[1]);
    close(ready[0]);
    snprintf(lockpath, sizeof lockpath, "%s.lock", path);
    fd = open(lockpath, O_RDWR | O_CREAT, 0644);
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fd < 0 || fcntl(fd, classic ? F_SETLK : F_OFD_SETLK, &fl) != 0)
      _exit(1);
    if (write(ready[1], "r", 1) != 1 || read(to_child[0], &c, 1) < 0)
      _exit(1);
    _exit(0);
  }
  close(to_child[0]);
  close(ready[1]);
  CHECK(read(ready[0], &c, 1) == 1);
  close(ready[0]);
  *pipe_w = to_child[1];
  return pid;
}

static void release_child(pid_t pid, int pipe_w) {
  int status;
  close(pipe_w);
  CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void timeout_names_the_holder(void) {
  ctest_host h;
  char path[128], expect[256];
  int pipe_w;
  pid_t pid;
  make_dir();
  snprintf(path, sizeof path, "%s/scratchpad.md", dir);
  ctest_host_open(&h);
  set_path(h.L, path);

  /* a classic lock: the kernel knows the pid */
  pid = hold_in_child(path, 1, &pipe_w);
  snprintf(expect, sizeof expect,
           "local l, err, code = require('coral.coord').lock(P, { timeout = 0.02 })\n"
           "assert(code == 'ETIMEDOUT', err)\n"
           "assert(err == 'lock ' .. P .. ': timed out after 0.02 s (held by pid %ld)', err)\n", (long)pid);
  CHECK(ctest_lua(h.L, expect));
  release_child(pid, pipe_w);

  /* an OFD lock taken by something that did not leave its pid: said so */
  pid = hold_in_child(path, 0, &pipe_w);
  CHECK(ctest_lua(h.L,
    "local l, err, code = require('coral.coord').lock(P, { timeout = 0 })\n"
    "assert(err == 'lock ' .. P .. ': timed out after 0 s (held by pid ' .. "
    "math.tointeger(require('luv').os_getpid()) .. ')' or err:find('held by another process', 1, true), err)\n"));
  release_child(pid, pipe_w);
  CHECK(ctest_lua(h.L, "local l <close> = assert(require('coral.coord').lock(P, { timeout = 0 }))"));
  ctest_host_close(&h);
  remove_dir();
}

/* Someone removes the lock file and locks a new one while a process waits on the old one:
 * when the old one is released, the waiter must notice and wait for the new one. */
static void lock_file_replaced_while_waiting(void) {
  ctest_host h;
  char path[128], lockpath[160];
  struct flock fl;
  int fd, status;
  pid_t pid;
  make_dir();
  snprintf(path, sizeof path, "%s/f", dir);
  snprintf(lockpath, sizeof lockpath, "%s.lock", path);
  ctest_host_open(&h);
  set_path(h.L, path);
  CHECK(ctest_lua(h.L, "L = assert(require('coral.coord').lock(P))"));
  fflush(NULL);
  pid = fork();
  if (pid == 0) {
    ctest_host c;
    int ok;
    ctest_host_open(&c);
    set_path(c.L, path);
    /* exit 0 only if the lock came after the replacement was released (~400 ms) */
    ok = ctest_lua(c.L,
      "local uv = require 'luv'\n"
      "local t0 = uv.hrtime()\n"
      "local l <close> = assert(require('coral.coord').lock(P, { timeout = 5 }))\n"
      "local took = (uv.hrtime() - t0) / 1e9\n"
      "assert(took > 0.3, 'locked after ' .. took .. ' s: on the removed lock file')\n");
    _exit(ok ? 0 : 1);
  }
  sleep_ms(100);                       /* the child is polling the old lock file */
  CHECK(unlink(lockpath) == 0);
  fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  CHECK(fd >= 0 && fcntl(fd, F_OFD_SETLK, &fl) == 0);
  CHECK(ctest_lua(h.L, "L:unlock()"));  /* the old file is free now */
  sleep_ms(300);
  close(fd);                            /* and now the new one */
  CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ctest_host_close(&h);
  remove_dir();
}

/* A signal caught by the host ends a lock wait at once with nil, "...: interrupted by SIGINT",
 * "EINTR", and nothing written. State a catches the signals and holds the lock; state b waits
 * for it: b has no interrupt hook, so it sees what coord returns (a state with the hook raises
 * "interrupted" as the call returns). Once the hook has raised in a, waits wait again. */
static void lock_wait_is_interrupted_by_a_signal(void) {
  char path[128], c = 'r';
  int ready[2], status = -1;
  double took;
  struct timespec t0, t1;
  pid_t pid;
  make_dir();
  snprintf(path, sizeof path, "%s/scratchpad.md", dir);
  CHECK(pipe(ready) == 0);
  fflush(NULL);
  pid = fork();
  if (pid == 0) {
    ctest_host a, b;
    int ok;
    close(ready[0]);
    ctest_host_open(&a);
    ctest_host_open(&b);
    set_path(a.L, path);
    set_path(b.L, path);
    ok = ctest_lua(a.L, "require('coral.host').catch_signals(); L = assert(require('coral.coord').lock(P))");
    ok = ok && write(ready[1], &c, 1) == 1;
    ok = ok && ctest_lua(b.L,
      "local coord, uv = require 'coral.coord', require 'luv'\n"
      "local t0 = uv.hrtime()\n"
      "local ok, err, code = coord.append(P, 'x\\n', { timeout = 5 })\n"
      "local took = (uv.hrtime() - t0) / 1e9\n"
      "assert(ok == nil and code == 'EINTR', tostring(err))\n"
      "assert(err == 'append ' .. P .. ': interrupted by SIGINT', err)\n"
      "assert(took > 0.05, 'gave up after ' .. took .. ' s, before the signal')\n"
      "assert(io.open(P) == nil, 'the record was written')\n"
      "local l, err2, code2 = coord.lock(P, { timeout = 1 })\n"
      "assert(l == nil and code2 == 'EINTR', tostring(err2))\n");
    ok = ok && coral_interrupt_pending() == SIGINT;
    /* a's next instruction raises the interruption; after that, a wait is a wait again */
    ok = ok && luaL_dostring(a.L, "return 1") != LUA_OK &&
         strstr(lua_tostring(a.L, -1), "interrupted by SIGINT") != NULL;
    lua_settop(a.L, 0);
    ok = ok && coral_interrupt_pending() == 0 && coral_interrupted() == SIGINT;
    ok = ok && ctest_lua(b.L,
      "local ok, err, code = require('coral.coord').append(P, 'x\\n', { timeout = 0.05 })\n"
      "assert(code == 'ETIMEDOUT', tostring(err))\n");
    ok = ok && ctest_lua(a.L, "L:unlock()") &&
         ctest_lua(b.L, "assert(require('coral.coord').append(P, 'x\\n', { timeout = 0 }))");
    ctest_host_close(&b);
    ctest_host_close(&a);
    _exit(ok && ctest_failures == 0 ? 0 : 1);
  }
  close(ready[1]);
  CHECK(pid > 0 && read(ready[0], &c, 1) == 1);
  close(ready[0]);
  sleep_ms(150);                    /* b is waiting by now */
  clock_gettime(CLOCK_MONOTONIC, &t0);
  CHECK(kill(pid, SIGINT) == 0);
  CHECK(waitpid(pid, &status, 0) == pid);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(took < 1.0);                /* the wait ended (and both states closed) at once */
  remove_dir();
}

/* }}} */

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  RUN(api_round_trip);
  RUN(two_states_exclude_each_other);
  RUN(update_error_leaves_nothing);
  RUN(out_of_memory_leaves_nothing);
  RUN(timeout_names_the_holder);
  RUN(lock_file_replaced_while_waiting);
  RUN(lock_wait_is_interrupted_by_a_signal);
  CTEST_EXIT();
}
