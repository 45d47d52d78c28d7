/*
 * main.c: the coral command. Parses lua-style options, then runs a script, -e code, stdin,
 * a subcommand (lua/coral/cli.lua) or the REPL. Everything runs inside one protected call
 * (pmain) with a traceback handler; the host owns the libuv loop and runs it after the main
 * chunk, then stops every child and closes every handle before the state is closed.
 *
 * Exit codes: 0 success, 2 usage error or error in a script, 130 interrupted by SIGINT,
 * SIGTERM or SIGHUP; a script's os.exit(n) gives n.
 */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "coral.h"

#define EXIT_USAGE 2
#define EXIT_SCRIPT_ERROR 2
#define EXIT_INTERRUPTED 130

static const char *progname = "coral";

/* jemalloc's options (read at its first allocation; MALLOC_CONF in the environment adds to
 * them). Freed pages go back to the kernel at once rather than after 10 s: a run's heap peaks
 * while its plan is built and its summary written, and its RSS should fall between. Unused
 * when build/coral is linked without jemalloc (a sanitizer build). */
extern const char *malloc_conf;
const char *malloc_conf = "dirty_decay_ms:0,muzzy_decay_ms:0";

typedef struct options {
  int script;         /* index in argv of the script, 0 if none */
  int first_arg;      /* index of the first argument after the options */
  int has_e;          /* -e given */
  int interactive;    /* -i given */
  int version;        /* -v given */
  int help;           /* -h given */
  int dev;            /* --dev given */
  int command;        /* argv[first_arg] is a subcommand */
} options;

static void usage_error(const char *fmt, const char *what) {
  fprintf(stderr, "%s: ", progname);
  fprintf(stderr, fmt, what);
  fprintf(stderr, " (try '%s --help')\n", progname);
}

/* The "interrupted by SIG..." in the first line of `msg` when a signal interrupted the host
 * (core.c's hook or the wait it cut short said so), else NULL; *len is its length. */
static const char *interruption(const char *msg, int *len) {
  const char *eol, *p, *end;
  if (msg == NULL || coral_interrupted() == 0)
    return NULL;
  eol = strchr(msg, '\n');
  p = strstr(msg, "interrupted by SIG");
  if (p == NULL || (eol != NULL && p > eol))
    return NULL;
  for (end = p + strlen("interrupted by SIG"); *end >= 'A' && *end <= 'Z'; end++)
    ;
  *len = (int)(end - p);
  return p;
}

/* Reports an error left on the stack by a failed chunk. Messages already start with the
 * chunk's file:line; the traceback follows on the next lines. An interruption is no error of
 * the script: it gets one line, "coral: interrupted by SIGINT" (all of it with CORAL_DEBUG=1). */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    const char *debug = getenv("CORAL_DEBUG");
    const char *what;
    int len;
    if ((debug == NULL || strcmp(debug, "1") != 0) && (what = interruption(msg, &len)) != NULL) {
      fprintf(stderr, "%s: %.*s\n", progname, len, what);
      fflush(stderr);
      lua_pop(L, 1);
      return status;
    }
    if (status == LUA_ERRFILE)
      fprintf(stderr, "%s: ", progname);  /* "cannot open x.lua": say who could not */
    fprintf(stderr, "%s\n", msg != NULL ? msg : "(error object is not a string)");
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}

static int docall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  int status;
  lua_pushcfunction(L, coral_traceback);
  lua_insert(L, base);
  status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  return status;
}

/* Scans argv like lua.c does. Returns 0 on a usage error (already reported). */
static int parse_options(int argc, char **argv, options *o) {
  int i;
  memset(o, 0, sizeof *o);
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || strcmp(a, "-") == 0)
      break;  /* script name, command, or stdin */
    if (strcmp(a, "--") == 0) { i++; break; }
    if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) {
      if (i + 1 >= argc) { usage_error("option '%s' needs an argument", a); return 0; }
      if (a[1] == 'e') o->has_e = 1;
      i++;
    } else if (strncmp(a, "-e", 2) == 0 || strncmp(a, "-l", 2) == 0) {
      if (a[1] == 'e') o->has_e = 1;   /* -eCODE, -lMOD */
    } else if (strcmp(a, "-i") == 0) {
      o->interactive = 1;
    } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      o->version = 1;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      o->help = 1;
    } else if (strcmp(a, "--dev") == 0) {
      o->dev = 1;
    } else {
      usage_error("unrecognized option '%s'", a);
      return 0;
    }
  }
  o->first_arg = i;
  if (i < argc)
    o->script = i;
  return 1;
}

/* Builds the global `arg`: arg[0] is the script, arg[1..] its arguments, arg[-n..-1] what came
 * before (the interpreter and its options), as in lua. */
static void create_arg_table(lua_State *L, char **argv, int argc, int script) {
  int i;
  lua_createtable(L, argc - script - 1, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int run_chunk(lua_State *L, int status) {
  if (status == LUA_OK)
    status = docall(L, 0, 0);
  return report(L, status);
}

/* Runs the -e and -l options in order. */
static int run_options(lua_State *L, char **argv, int first_arg) {
  int i;
  for (i = 1; i < first_arg; i++) {
    const char *a = argv[i];
    const char *value;
    int status;
    if (a[0] != '-' || (a[1] != 'e' && a[1] != 'l'))
      continue;
    value = a[2] != '\0' ? a + 2 : argv[++i];
    if (a[1] == 'e') {
      status = run_chunk(L, luaL_loadbuffer(L, value, strlen(value), "=(command line)"));
    } else {
      lua_getglobal(L, "require");
      lua_pushstring(L, value);
      status = docall(L, 1, 1);
      if (status == LUA_OK) {
        const char *dot = strrchr(value, '.');
        lua_setglobal(L, dot != NULL ? dot + 1 : value);
      }
      report(L, status);
    }
    if (status != LUA_OK)
      return 0;
  }
  return 1;
}

/* Calls require("coral.cli")[fname](...) with the strings given; returns its integer result
 * (the exit code) or -1 if it raised an error (already reported). */
static int call_cli(lua_State *L, const char *fname, char **args, int nargs) {
  int i, status, code;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "coral.cli");
  status = docall(L, 1, 1);
  if (report(L, status) != LUA_OK)
    return -1;
  lua_getfield(L, -1, fname);
  lua_remove(L, -2);
  for (i = 0; i < nargs; i++)
    lua_pushstring(L, args[i]);
  status = docall(L, nargs, 1);
  if (report(L, status) != LUA_OK)
    return -1;
  code = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return code;
}

/* Calls require("coral.cli").script_result(value, script, args...) for the value a script
 * returned (on the stack top, popped); returns the exit code, or -1 after reporting an error. */
static int script_result(lua_State *L, char **args, int nargs) {
  int i, status, code;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "coral.cli");
  status = docall(L, 1, 1);
  if (report(L, status) != LUA_OK) {
    lua_pop(L, 1);
    return -1;
  }
  lua_getfield(L, -1, "script_result");
  lua_remove(L, -2);
  lua_insert(L, -2);  /* function, value */
  for (i = 0; i < nargs; i++)
    lua_pushstring(L, args[i]);
  status = docall(L, nargs + 1, 1);
  if (report(L, status) != LUA_OK)
    return -1;
  code = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return code;
}

/* Tells coral.cli that the script file argv[script] starts:
 * script_start(noptions, options..., script, args...), the interpreter's options before it and
 * its arguments after it, as given. The runs a script starts record them, so that
 * `coral resume` can run it again the same way. Returns 0 after reporting an error. */
static int script_start(lua_State *L, char **argv, int argc, int script) {
  int i, status;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "coral.cli");
  status = docall(L, 1, 1);
  if (report(L, status) != LUA_OK)
    return 0;
  lua_getfield(L, -1, "script_start");
  lua_remove(L, -2);
  lua_pushinteger(L, script - 1);
  for (i = 1; i < argc; i++)
    lua_pushstring(L, argv[i]);
  return report(L, docall(L, argc, 0)) == LUA_OK;
}

/* Runs the loop until no handle is active, reporting a callback's error like a script's. */
static int run_loop(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "luv");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "run");
  lua_remove(L, -2);
  return report(L, docall(L, 0, 0));
}

typedef struct host_args { int argc; char **argv; int exit_code; } host_args;

/* Everything that can raise runs in here, under lua_pcall. */
static int pmain(lua_State *L) {
  host_args *h = lua_touserdata(L, 1);
  int argc = h->argc;
  char **argv = h->argv;
  options o;
  int status = LUA_OK;

  h->exit_code = EXIT_USAGE;
  if (!parse_options(argc, argv, &o))
    return 0;
  lua_pop(L, 1);

  if (o.help) {
    h->exit_code = call_cli(L, "help", NULL, 0) < 0 ? EXIT_SCRIPT_ERROR : EXIT_SUCCESS;
    return 0;
  }
  if (o.version) {
    printf("coral %s (%s, libuv %s)\n", CORAL_VERSION, LUA_RELEASE, uv_version_string());
    h->exit_code = EXIT_SUCCESS;
    if (o.script == 0 && !o.has_e)
      return 0;
  }

  create_arg_table(L, argv, argc, o.script != 0 ? o.script : 0);
  h->exit_code = EXIT_SCRIPT_ERROR;
  if (!run_options(L, argv, o.first_arg))
    return 0;

  if (o.script != 0) {
    const char *script = argv[o.script];
    if (strcmp(script, "-") != 0 && call_cli(L, "is_command", argv + o.script, 1) == 1) {
      int code = call_cli(L, "main", argv + o.script, argc - o.script);
      if (code < 0)
        return 0;
      h->exit_code = code;
      return 0;
    } else {
      /* Pass the script's own arguments as `...`, as lua does. */
      int nargs = argc - o.script - 1, i;
      if (strcmp(script, "-") != 0 && !script_start(L, argv, argc, o.script))
        return 0;
      status = luaL_loadfile(L, strcmp(script, "-") == 0 ? NULL : script);
      if (status == LUA_OK) {
        for (i = 0; i < nargs; i++)
          lua_pushstring(L, argv[o.script + 1 + i]);
        status = docall(L, nargs, 1);
      }
      report(L, status);
      /* A script that returns a recipe or a plan is run as one, with its arguments. */
      if (status == LUA_OK && !lua_isnil(L, -1)) {
        int code = script_result(L, argv + o.script, argc - o.script);
        if (code < 0)
          return 0;
        h->exit_code = code;
        return 0;
      }
      if (status == LUA_OK)
        lua_pop(L, 1);
    }
  } else if (!o.has_e && !o.version) {
    if (isatty(STDIN_FILENO)) {
      o.interactive = 1;
    } else {
      status = run_chunk(L, luaL_loadfile(L, NULL));
    }
  }
  if (status == LUA_OK)
    status = run_loop(L);
  if (status == LUA_OK && o.interactive) {
    int code = call_cli(L, "repl", NULL, 0);
    status = code < 0 ? LUA_ERRRUN : LUA_OK;
  }
  h->exit_code = status == LUA_OK ? EXIT_SUCCESS : EXIT_SCRIPT_ERROR;
  return 0;
}

/* The state and the loop main leaves to exit (see the end of main): still reachable, so a
 * leak checker (make SANITIZE=address) does not report them. Volatile: a store that nothing
 * reads would be optimised away. */
static lua_State *volatile left_at_exit;
static uv_loop_t loop;

int main(int argc, char **argv) {
  lua_State *L;
  host_args h = { argc, argv, EXIT_FAILURE };
  char root[PATH_MAX];
  const char *lua_root = NULL;
  int i, status;

  /* A child that closes its stdin early must give EPIPE on write, not kill coral. */
  signal(SIGPIPE, SIG_IGN);

  /* --dev: the tree the binary was built in (build/coral -> ..); CORAL_LUA_PATH: a given tree. */
  lua_root = getenv("CORAL_LUA_PATH");
  if (lua_root != NULL && lua_root[0] == '\0')
    lua_root = NULL;
  for (i = 1; i < argc && argv[i][0] == '-' && strcmp(argv[i], "--") != 0; i++) {
    if (strcmp(argv[i], "--dev") == 0) {
      ssize_t n = readlink("/proc/self/exe", root, sizeof root - 4);
      char *slash;
      if (n > 0) {
        root[n] = '\0';
        slash = strrchr(root, '/');
        if (slash != NULL) {
          strcpy(slash, "/..");
          lua_root = root;
        }
      }
    }
    if (strcmp(argv[i], "-e") == 0 || strcmp(argv[i], "-l") == 0)
      i++;
  }

  if (uv_loop_init(&loop) != 0) {
    fprintf(stderr, "%s: cannot start the event loop\n", progname);
    return EXIT_FAILURE;
  }
  L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create the Lua state: not enough memory\n", progname);
    return EXIT_FAILURE;
  }
  coral_open_state(L, &loop, lua_root);
  luaL_requiref(L, "coral.host", coral_host_open, 0);
  lua_getfield(L, -1, "catch_signals");
  lua_call(L, 0, 0);
  lua_pop(L, 1);

  lua_pushcfunction(L, pmain);
  lua_pushlightuserdata(L, &h);
  status = lua_pcall(L, 1, 0, 0);
  if (status != LUA_OK) {
    report(L, status);
    h.exit_code = EXIT_SCRIPT_ERROR;
  }
  coral_shutdown(L);
  /* A program that succeeded has nothing left for lua_close to do that exit does not do as
   * well: its children are reaped and its handles closed (coral_shutdown), its files' buffers
   * are flushed by exit, its locks and descriptors go with the process. Freeing every object
   * one by one costs 5 ms at the end of a 200-task run, after its summary. Any other end keeps
   * the full close: finalizers take back what a failed step left (a coordination write's
   * temporary file, abandoned by an error). */
  if (status != LUA_OK || h.exit_code != EXIT_SUCCESS) {
    lua_close(L);
    uv_loop_close(&loop);
  } else {
    left_at_exit = L;
  }
  if (coral_interrupted() != 0 && h.exit_code == EXIT_SCRIPT_ERROR)
    return EXIT_INTERRUPTED;
  return h.exit_code;
}
