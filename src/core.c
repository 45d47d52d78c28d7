/*
 * core.c: sets up a coral Lua state. Gathers the C modules into package.preload, links luv to
 * the host's own libuv loop with the host's protected callback, adds the searcher for the Lua
 * files compiled into the binary, and exposes "coral.host" (version, paths, embedded files).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>
#include <luv/luv.h>
#include <luv/lhandle.h>

#include "coral.h"
#include "embedded.h"

/* Openers whose C file is not built yet are skipped (weak), so the primitives can land one by one. */
#pragma weak coral_spawn_open
#pragma weak coral_dag_open
#pragma weak coral_coord_open
#pragma weak coral_spawn_shutdown

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);

/* Registry keys (addresses of these statics are unique per process, the values per state). */
static const char PENDING_ERROR_KEY = 'e';
static const char LUA_ROOT_KEY = 'r';

static lua_State *volatile signal_state;  /* whose signal handlers are installed (see below) */

static void release_signals(void);

/* {{{ callbacks from the event loop */

int coral_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;  /* an object with its own text: keep it as it is */
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  /* An error kept from an event-loop callback and raised again already has its traceback. */
  if (strstr(msg, "\nstack traceback:") != NULL)
    return 1;
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int coral_callback(lua_State *L, int nargs, int nresults, int flags) {
  int base = lua_gettop(L) - nargs;  /* index of the function */
  int status;
  (void)flags;
  lua_pushcfunction(L, coral_traceback);
  lua_insert(L, base);
  status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (status == LUA_OK)
    return nresults == LUA_MULTRET ? lua_gettop(L) - base + 1 : nresults;
  /* Keep the first error only: later ones are usually its consequences. */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PENDING_ERROR_KEY) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PENDING_ERROR_KEY);
  } else {
    lua_pop(L, 2);
  }
  uv_stop(luv_loop(L));
  return -status;
}

/* uv.run([mode]) that raises the error of a callback that failed while it ran. */
static int host_run(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));  /* luv's own run */
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PENDING_ERROR_KEY) != LUA_TNIL) {
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PENDING_ERROR_KEY);
    return lua_error(L);
  }
  lua_pop(L, 1);
  return lua_gettop(L);
}

static int is_coral_handle(const uv_handle_t *handle) {
  return handle->data != NULL && *(const unsigned *)handle->data == CORAL_HANDLE_TAG;
}

typedef struct walk_state { lua_State *L; int fn; int n; } walk_state;

static void collect_luv_handle(uv_handle_t *handle, void *arg) {
  walk_state *w = arg;
  const luv_handle_t *data = handle->data;
  if (data == NULL || is_coral_handle(handle))
    return;
  lua_rawgeti(w->L, LUA_REGISTRYINDEX, data->ref);
  lua_rawseti(w->L, -2, ++w->n);
}

/* uv.walk(fn) over luv's handles only: coral's own handles have no Lua object. The handles
 * are collected first and visited after, so fn may close them. */
static int host_walk(lua_State *L) {
  walk_state w = { L, 1, 0 };
  int i;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_newtable(L);
  uv_walk(luv_loop(L), collect_luv_handle, &w);
  for (i = 1; i <= w.n; i++) {
    lua_pushvalue(L, 1);
    lua_rawgeti(L, 2, i);
    lua_call(L, 1, 0);
  }
  return 0;
}

static int open_luv(lua_State *L) {
  luaopen_luv(L);
  lua_getfield(L, -1, "run");
  lua_pushcclosure(L, host_run, 1);
  lua_setfield(L, -2, "run");
  lua_pushcfunction(L, host_walk);
  lua_setfield(L, -2, "walk");
  return 1;
}

static void close_luv_handle(lua_State *L, uv_handle_t *handle) {
  if (uv_is_closing(handle))
    return;
  lua_getfield(L, -1, "close");
  lua_rawgeti(L, LUA_REGISTRYINDEX, ((const luv_handle_t *)handle->data)->ref);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK)
    lua_pop(L, 1);
}

static void shutdown_walk(uv_handle_t *handle, void *arg) {
  lua_State *L = arg;
  if (handle->data == NULL || is_coral_handle(handle)) {
    if (!uv_is_closing(handle))
      uv_close(handle, NULL);
    return;
  }
  close_luv_handle(L, handle);
}

void coral_shutdown(lua_State *L) {
  uv_loop_t *loop = luv_loop(L);
  if (coral_spawn_shutdown)
    coral_spawn_shutdown(L);
  /* After the children (a Ctrl-C while they are killed must not end coral before they are
   * reaped), before the async handle is closed below and the state goes away. */
  if (signal_state == L)
    release_signals();
  if (loop == NULL)
    return;
  uv_run(loop, UV_RUN_NOWAIT);  /* let handles the primitives closed finish closing */
  luaL_requiref(L, "luv", open_luv, 0);
  uv_walk(loop, shutdown_walk, L);
  lua_pop(L, 1);
  while (uv_run(loop, UV_RUN_NOWAIT) != 0)
    ;
  /* An error raised by a close callback now has nobody to report to. */
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &PENDING_ERROR_KEY);
}

/* }}} */
/* {{{ embedded Lua files */

static const coral_embedded_file *find_embedded(const char *path) {
  const coral_embedded_file *f;
  for (f = coral_embedded_files; f->path != NULL; f++)
    if (strcmp(f->path, path) == 0)
      return f;
  return NULL;
}

/* package.searchers entry: module "coral.x" is lua/coral/x.lua or lua/coral/x/init.lua. */
static int embedded_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *candidates[2] = { "lua/%s.lua", "lua/%s/init.lua" };
  const char *dotted = luaL_gsub(L, name, ".", "/");
  int i;
  for (i = 0; i < 2; i++) {
    const char *path = lua_pushfstring(L, candidates[i], dotted);
    const coral_embedded_file *f = find_embedded(path);
    if (f != NULL) {
      const char *chunkname = lua_pushfstring(L, "@%s", path);
      if (luaL_loadbuffer(L, f->data, f->size, chunkname) != LUA_OK)
        return luaL_error(L, "error loading module '%s' from the binary:\n\t%s", name,
                          lua_tostring(L, -1));
      lua_pushstring(L, path);
      return 2;
    }
    lua_pop(L, 1);
  }
  lua_pushfstring(L, "no module '%s' in the coral binary", name);
  return 1;
}

/* source = host.embedded(path): a file compiled into the binary, or nil. */
static int host_embedded(lua_State *L) {
  const coral_embedded_file *f = find_embedded(luaL_checkstring(L, 1));
  if (f == NULL)
    return 0;
  lua_pushlstring(L, f->data, f->size);
  return 1;
}

/* paths = host.embedded_files([prefix]): paths of the compiled-in files, in sorted order. */
static int host_embedded_files(lua_State *L) {
  const char *prefix = luaL_optstring(L, 1, "");
  size_t n = strlen(prefix);
  const coral_embedded_file *f;
  int i = 0;
  lua_newtable(L);
  for (f = coral_embedded_files; f->path != NULL; f++)
    if (strncmp(f->path, prefix, n) == 0) {
      lua_pushstring(L, f->path);
      lua_rawseti(L, -2, ++i);
    }
  return 1;
}

/* }}} */
/* {{{ signals: Ctrl-C, SIGTERM and SIGHUP end a script cleanly
 *
 * Children lead their own process groups, so a terminal's Ctrl-C reaches coral only; if coral
 * died of the signal's default action its children would run on unseen. The handler (as in
 * lua.c) sets a hook that raises "interrupted" at the next Lua instruction, and wakes the loop
 * through an async handle in case coral is waiting in uv.run: the error unwinds to main, which
 * stops every child and exits 130. Signal dispositions are process-wide, so this state is too;
 * there is one host state per process. The runner watches these signals itself while it runs
 * (luv signal handles replace these handlers) and calls host.catch_signals() again after.
 * coral_shutdown gives the signals their default action back before the state and the async
 * handle go away (release_signals). */

static uv_async_t signal_async;
static struct { unsigned tag; } signal_async_tag = { CORAL_HANDLE_TAG };
static volatile sig_atomic_t caught_signal;    /* the last signal caught, kept for the exit code */
static volatile sig_atomic_t pending_signal;   /* caught, and not raised in Lua yet */

const char *coral_signal_name(int signo) {
  return signo == SIGTERM ? "SIGTERM" : signo == SIGHUP ? "SIGHUP" :
         signo == SIGINT ? "SIGINT" : "a signal";
}

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  int signo = caught_signal;
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  pending_signal = 0;
  luaL_error(L, "interrupted by %s", coral_signal_name(signo));
}

/* Runs between any two instructions of the host, so it only touches what stays valid while
 * it is installed: release_signals() uninstalls it before signal_state and the async handle
 * go away, and a handler already running has returned by then (one thread). A disposition
 * saved before shutdown and put back after it (as repl.c does around readline) would still
 * call it: then it only records the signal. */
static void on_signal(int signo) {
  lua_State *L = signal_state;
  caught_signal = signo;
  if (L == NULL)
    return;
  pending_signal = signo;
  lua_sethook(L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  uv_async_send(&signal_async);
}

/* The loop was waiting: make uv.run return with the interruption as its error. */
static void on_signal_async(uv_async_t *handle) {
  lua_State *L = signal_state;
  (void)handle;
  if (caught_signal == 0 || L == NULL)
    return;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PENDING_ERROR_KEY) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushfstring(L, "interrupted by %s", coral_signal_name(caught_signal));
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PENDING_ERROR_KEY);
  } else {
    lua_pop(L, 1);
  }
  uv_stop(luv_loop(L));
}

static const int caught_signals[] = { SIGINT, SIGTERM, SIGHUP };
#define NCAUGHT ((int)(sizeof caught_signals / sizeof caught_signals[0]))

/* Done with the handlers (coral_shutdown): as lua.c's laction does, give the signals their
 * default action back, so one that comes during or after shutdown ends the process instead of
 * reaching a state or a handle that is gone. A signal whose handler is not ours any more (a
 * luv signal handle of the runner still open) is left to its owner. */
static void release_signals(void) {
  struct sigaction old, dfl;
  int i;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (i = 0; i < NCAUGHT; i++)
    if (sigaction(caught_signals[i], NULL, &old) == 0 && old.sa_handler == on_signal)
      sigaction(caught_signals[i], &dfl, NULL);
  signal_state = NULL;   /* the async handle is closed with the loop's other handles */
}

/* host.catch_signals(): (re)install the handlers of SIGINT, SIGTERM and SIGHUP. */
static int host_catch_signals(lua_State *L) {
  struct sigaction sa;
  int i;
  if (signal_state == NULL) {
    signal_state = L;
    uv_async_init(luv_loop(L), &signal_async, on_signal_async);
    signal_async.data = &signal_async_tag;
    uv_unref((uv_handle_t *)&signal_async);
  }
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (i = 0; i < NCAUGHT; i++)
    sigaction(caught_signals[i], &sa, NULL);
  return 0;
}

int coral_interrupted(void) {
  return caught_signal;
}

int coral_interrupt_pending(void) {
  return pending_signal;
}

/* }}} */
/* {{{ coral.host */

/* yes = host.isatty(fd) */
static int host_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* name = host.interrupted(): the signal (SIGINT, SIGTERM, SIGHUP) that interrupted the host,
 * or nil: an "interrupted by SIG..." error raised before a run watched for signals is a stop
 * asked for, not a failure (the command line exits 130). */
static int host_interrupted(lua_State *L) {
  int signo = coral_interrupted();
  if (signo == 0)
    lua_pushnil(L);
  else
    lua_pushstring(L, coral_signal_name(signo));
  return 1;
}

/* host.exit([code]): like os.exit, but first stops every child and closes the loop, so
 * nothing the host started outlives it. true/false mean 0/1, as in os.exit. */
static int host_exit(lua_State *L) {
  int code;
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  coral_shutdown(L);
  fflush(NULL);
  exit(code);
  return 0;
}

/* nil, err = host.exec(path, argv): replaces coral with the program at `path`, given the
 * strings of the list `argv` (argv[1] its name), in coral's environment and working directory:
 * `coral resume` runs a script again this way, so the script keeps coral's pid, terminal and
 * process group, and Ctrl-C and the exit status are the script's own with no coral in between
 * to relay them. Like host.exit it first stops every child and closes the loop, so nothing the
 * host started outlives it. It returns only when `path` cannot be run (checked before anything
 * is stopped); an exec that fails after that (out of memory) is reported and ends coral, 1. */
static int host_exec(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const char **argv;
  lua_Integer n, i;
  coral_checknargs(L, 2);
  luaL_checktype(L, 2, LUA_TTABLE);
  n = luaL_len(L, 2);
  luaL_argcheck(L, n >= 1, 2, "the list needs the program's name first");
  /* A userdata, not malloc: a bad element below raises, and the collector frees it. */
  argv = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *argv, 0);
  for (i = 1; i <= n; i++) {
    if (lua_rawgeti(L, 2, i) != LUA_TSTRING)
      return luaL_error(L, "bad argument #2 to 'exec' (argv[%d] is not a string)", (int)i);
    argv[i - 1] = lua_tostring(L, -1);   /* kept alive by the table */
    lua_pop(L, 1);
  }
  argv[n] = NULL;
  if (access(path, X_OK) != 0) {
    int e = errno;
    lua_pushnil(L);
    lua_pushfstring(L, "exec %s: %s", path, strerror(e));
    return 2;
  }
  coral_shutdown(L);
  fflush(NULL);
  execv(path, (char *const *)argv);
  fprintf(stderr, "coral: exec %s: %s\n", path, strerror(errno));
  exit(EXIT_FAILURE);
  return 0;
}

/* uid, gid, pid = host.peer_cred(fd) | nil, err: who is at the other end of a connected
 * Unix socket (SO_PEERCRED, which luv does not expose): the live-control socket refuses a
 * connection from another uid (lua/coral/control/server.lua). `fd` from pipe:fileno(). */
static int host_peer_cred(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  struct ucred cred;
  socklen_t len = sizeof cred;
  coral_checknargs(L, 1);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred) {
    char buf[128];
    int e = errno;
    luaL_pushfail(L);
    lua_pushfstring(L, "peer credentials of fd %d: %s", fd, coral_strerror(e, buf, sizeof buf));
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)cred.uid);
  lua_pushinteger(L, (lua_Integer)cred.gid);
  lua_pushinteger(L, (lua_Integer)cred.pid);
  return 3;
}

static const luaL_Reg host_functions[] = {
  { "embedded", host_embedded },
  { "embedded_files", host_embedded_files },
  { "isatty", host_isatty },
  { "interrupted", host_interrupted },
  { "exit", host_exit },
  { "exec", host_exec },
  { "catch_signals", host_catch_signals },
  { "peer_cred", host_peer_cred },
  { NULL, NULL }
};

int coral_host_open(lua_State *L) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  luaL_newlib(L, host_functions);
  lua_pushliteral(L, CORAL_VERSION);
  lua_setfield(L, -2, "version");
  if (n > 0) {
    exe[n] = '\0';
    lua_pushstring(L, exe);
    lua_setfield(L, -2, "exe");
  }
  /* luv's uv.constants has no O_NOFOLLOW, and its value differs between architectures:
   * fsutil opens coral's own files in a project with it (never through a planted link). */
  lua_pushinteger(L, O_NOFOLLOW);
  lua_setfield(L, -2, "O_NOFOLLOW");
  /* Where lua/ and recipes/ are read from in --dev mode; nil when the embedded copies are used. */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &LUA_ROOT_KEY);
  lua_setfield(L, -2, "source_root");
  return 1;
}

/* }}} */

void coral_open_state(lua_State *L, uv_loop_t *loop, const char *lua_root) {
  const struct { const char *name; lua_CFunction open; } preload[] = {
    { "luv", open_luv },
    { "cjson", luaopen_cjson },
    { "cjson.safe", luaopen_cjson_safe },
    { "coral.host", coral_host_open },
    { "coral.readline", coral_readline_open },
    { "coral.proc", coral_spawn_open },
    { "coral.dag", coral_dag_open },
    { "coral.coord", coral_coord_open },
    { "coral.jsonw", coral_jsonw_open },
    { "coral.yamlw", coral_yamlw_open },
  };
  size_t i;

  luaL_openlibs(L);
  luv_set_loop(L, loop);
  luv_set_callback(L, coral_callback);

  if (lua_root != NULL) {
    lua_pushstring(L, lua_root);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LUA_ROOT_KEY);
  }

  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (i = 0; i < sizeof preload / sizeof preload[0]; i++) {
    if (preload[i].open == NULL)
      continue;
    lua_pushcfunction(L, preload[i].open);
    lua_setfield(L, -2, preload[i].name);
  }
  lua_pop(L, 1);

  /* The embedded searcher goes right after preload, before package.path: a stray coral.lua
   * in the working directory must not replace coral's own modules. In --dev mode the tree's
   * lua/ is put first on package.path and the embedded copies come after it. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  lua_pushcfunction(L, embedded_searcher);
  if (lua_root != NULL) {
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;", lua_root, lua_root);
    lua_getfield(L, -4, "path");
    lua_concat(L, 2);
    lua_setfield(L, -4, "path");
  }
  {
    /* shift entries up and put the searcher at 2 (normal) or 3 (--dev) */
    int pos = lua_root != NULL ? 3 : 2;
    int n = (int)luaL_len(L, -2);
    int j;
    for (j = n; j >= pos; j--) {
      lua_rawgeti(L, -2, j);
      lua_rawseti(L, -3, j + 1);
    }
    lua_rawseti(L, -2, pos);
  }
  lua_pop(L, 2);

  /* os.exit must not leave children behind. */
  lua_getglobal(L, "os");
  lua_pushcfunction(L, host_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
}
