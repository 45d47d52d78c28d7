/*
 * repl.c: line editing for the REPL, module "coral.readline", on libedit's readline interface.
 * Mechanism only: reading a line with history and completion, and telling Ctrl-C from
 * Ctrl-D. lua/coral/repl.lua decides what a line means.
 *
 * readline's interface keeps its state in globals, so one REPL runs at a time: the state and
 * the completer are held in statics only while readline() is running.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <editline/readline.h>
#include <lauxlib.h>

#include "coral.h"

static volatile sig_atomic_t interrupted;
static lua_State *completing_state;     /* set while readline() runs with a completer */
static int completer_ref = LUA_NOREF;
static int watch_fd = -1;               /* readline.watch: a descriptor watched while reading */
static int watch_ref = LUA_NOREF;       /* ... and the function called when it is readable */

static void on_sigint(int signo) {
  (void)signo;
  interrupted = 1;
}

/* Asks the Lua completer for the candidates of `text`; returns a malloc'ed array as readline
 * wants it, or NULL. Errors in the completer are ignored: completion must never end the REPL. */
static char **complete(const char *text, int start, int end) {
  lua_State *L = completing_state;
  char **matches = NULL;
  lua_Integer n, i;
  (void)end;
  rl_attempted_completion_over = 1;  /* no file name completion as a fallback */
  if (L == NULL || completer_ref == LUA_NOREF)
    return NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, completer_ref);
  lua_pushstring(L, text);
  lua_pushstring(L, rl_line_buffer);
  lua_pushinteger(L, start);
  if (lua_pcall(L, 3, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  n = luaL_len(L, -1);
  if (n > 0) {
    /* matches[0] is what replaces text: the longest common prefix of the candidates. */
    matches = calloc((size_t)n + 2, sizeof *matches);
    if (matches != NULL) {
      size_t common = SIZE_MAX;
      for (i = 1; i <= n; i++) {
        const char *s;
        lua_rawgeti(L, -1, i);
        s = lua_tostring(L, -1);
        matches[i] = strdup(s != NULL ? s : "");
        lua_pop(L, 1);
        if (i == 1) {
          common = strlen(matches[1]);
        } else {
          size_t k = 0;
          while (k < common && matches[1][k] == matches[i][k]) k++;
          common = k;
        }
      }
      matches[0] = strndup(matches[1], common);
      if (n == 1) {  /* one candidate: it replaces text, no list to show */
        free(matches[1]);
        matches[1] = NULL;
      }
    }
  }
  lua_pop(L, 1);
  return matches;
}

/* Calls the watch function (the REPL's state is the one reading); it returns false to stop
 * watching. An error stops watching too: the line being typed must never be lost to it. */
static void call_watcher(void) {
  lua_State *L = completing_state;
  int keep;
  if (L == NULL || watch_ref == LUA_NOREF)
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, watch_ref);
  keep = lua_pcall(L, 0, 1, 0) == LUA_OK && lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (!keep)
    watch_fd = -1;
  rl_forced_update_display();   /* the prompt and the line typed so far, below what was printed */
}

/* readline's getc while a descriptor is watched: waits for a key or the descriptor, and
 * returns one character (a UTF-8 sequence decoded to its code point, which libedit takes). */
static int getc_watching(FILE *in) {
  int fd = fileno(in);
  unsigned char c[4];
  int need, i, cp;
  for (;;) {
    struct pollfd p[2];
    int n;
    p[0].fd = fd; p[0].events = POLLIN; p[0].revents = 0;
    p[1].fd = watch_fd; p[1].events = POLLIN; p[1].revents = 0;
    n = poll(p, watch_fd >= 0 ? 2 : 1, -1);
    if (n < 0) {
      if (errno == EINTR && !interrupted)
        continue;
      return EOF;   /* Ctrl-C: readline returns NULL, and `interrupted` says why */
    }
    if (watch_fd >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR)))
      call_watcher();
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
      break;
  }
  for (;;) {
    ssize_t r = read(fd, c, 1);
    if (r == 1)
      break;
    if (r < 0 && errno == EINTR && !interrupted)
      continue;
    return EOF;
  }
  need = c[0] < 0x80 ? 0 : c[0] >= 0xf0 ? 3 : c[0] >= 0xe0 ? 2 : c[0] >= 0xc0 ? 1 : 0;
  cp = need == 0 ? c[0] : need == 1 ? (c[0] & 0x1f) : need == 2 ? (c[0] & 0x0f) : (c[0] & 0x07);
  for (i = 1; i <= need; i++) {
    if (read(fd, c + i, 1) != 1 || (c[i] & 0xc0) != 0x80)
      return '?';
    cp = (cp << 6) | (c[i] & 0x3f);
  }
  return cp;
}

/* line = readline.readline(prompt): the line typed, nil at end of input (Ctrl-D), or false
 * when Ctrl-C cancelled the line. */
static int rl_readline_l(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "> ");
  struct sigaction sa, old;
  char *line;

  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;   /* no SA_RESTART: the read must return EINTR */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old);
  interrupted = 0;
  completing_state = L;
  line = readline(prompt);
  completing_state = NULL;
  sigaction(SIGINT, &old, NULL);

  if (line == NULL) {
    if (interrupted) {
      fputc('\n', stdout);
      fflush(stdout);
      lua_pushboolean(L, 0);
    } else {
      lua_pushnil(L);
    }
    return 1;
  }
  lua_pushstring(L, line);
  free(line);
  return 1;
}

/* readline.watch(fd, fn) | readline.watch(nil): while readline() waits for a key, fn() is
 * called whenever `fd` is readable (coral attach prints the run's events above the prompt);
 * fn returns false to stop. libedit reads its getc function when it is set up, so each
 * change sets it up again (its history starts empty: read_history after). */
static int rl_watch_l(lua_State *L) {
  luaL_unref(L, LUA_REGISTRYINDEX, watch_ref);
  watch_ref = LUA_NOREF;
  watch_fd = -1;
  if (lua_isnoneornil(L, 1)) {
    rl_getc_function = NULL;
  } else {
    watch_fd = (int)luaL_checkinteger(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    watch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    rl_getc_function = getc_watching;
  }
  rl_initialize();
  return 0;
}

/* readline.add_history(line) */
static int rl_add_history_l(lua_State *L) {
  add_history(luaL_checkstring(L, 1));
  return 0;
}

/* ok, err = readline.read_history(path) */
static int rl_read_history_l(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int err = read_history(path);
  if (err != 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "read history %s: %s", path, strerror(err > 0 ? err : errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ok, err = readline.write_history(path [, max_entries]) */
static int rl_write_history_l(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int max = (int)luaL_optinteger(L, 2, 1000);
  int err;
  stifle_history(max);
  err = write_history(path);
  if (err != 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "write history %s: %s", path, strerror(err > 0 ? err : errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* readline.set_completer(fn | nil): fn(word, line, start) returns a list of candidates for
 * the word under the cursor. */
static int rl_set_completer_l(lua_State *L) {
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, completer_ref);
  completer_ref = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    lua_settop(L, 1);
    completer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

static const luaL_Reg readline_functions[] = {
  { "readline", rl_readline_l },
  { "add_history", rl_add_history_l },
  { "read_history", rl_read_history_l },
  { "write_history", rl_write_history_l },
  { "set_completer", rl_set_completer_l },
  { "watch", rl_watch_l },
  { NULL, NULL }
};

int coral_readline_open(lua_State *L) {
  static char word_breaks[] = " \t\n\"\\'`@$><=;|&{}()[],+-*/%^~#";
  rl_readline_name = "coral";
  rl_catch_signals = 0;
  rl_attempted_completion_function = complete;
  rl_completion_append_character = '\0';
  rl_basic_word_break_characters = word_breaks;  /* '.' and ':' stay in the word: coral.ta<TAB> */
  using_history();
  luaL_newlib(L, readline_functions);
  return 1;
}
