/*
 * ctest.h: the smallest test harness for the C tests under spec/c/. Each test prints
 * "ok - name" or "not ok - name"; scripts/run-tests counts those lines. The tests are built
 * with ASan and UBSan (Makefile, CTESTS), so a memory error fails the run too.
 */
#ifndef CORAL_CTEST_H
#define CORAL_CTEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "coral.h"

static int ctest_failures;       /* in the test running now */
static int ctest_total_failures;

#define CHECK(cond) do { \
    if (!(cond)) { \
      fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ctest_failures++; \
    } \
  } while (0)

#define RUN(test) do { \
    ctest_failures = 0; \
    test(); \
    printf("%s - %s\n", ctest_failures ? "not ok" : "ok", #test); \
    fflush(stdout); \
    if (ctest_failures) ctest_total_failures++; \
  } while (0)

#define CTEST_EXIT() return ctest_total_failures ? EXIT_FAILURE : EXIT_SUCCESS

/* A coral Lua state on its own loop, as the host makes it (without --dev). */
typedef struct ctest_host { uv_loop_t loop; lua_State *L; } ctest_host;

static void ctest_host_open(ctest_host *h) {
  uv_loop_init(&h->loop);
  h->L = luaL_newstate();
  coral_open_state(h->L, &h->loop, NULL);
}

static void ctest_host_close(ctest_host *h) {
  coral_shutdown(h->L);
  lua_close(h->L);
  CHECK(uv_loop_close(&h->loop) == 0);
}

/* Runs a Lua chunk with a traceback; returns 1 if it ran without error, printing the error. */
static int ctest_lua(lua_State *L, const char *code) {
  int base = lua_gettop(L);
  int ok;
  lua_pushcfunction(L, coral_traceback);
  ok = luaL_loadbuffer(L, code, strlen(code), "=ctest") == LUA_OK &&
       lua_pcall(L, 0, 0, base + 1) == LUA_OK;
  if (!ok)
    fprintf(stderr, "  lua error: %s\n", lua_tostring(L, -1));
  lua_settop(L, base);
  return ok;
}

#endif
