/*
 * util.c: argument checks and error names shared by the primitives (spawn.c, dag.c, coord.c),
 * so that the same mistake or failure reads the same in every module. Model: luaposix's
 * _helpers.c (checknargs).
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "coral.h"

int coral_checknargs(lua_State *L, int max) {
  lua_Debug ar;
  const char *msg;
  int n = lua_gettop(L), self = 0;
  if (n <= max)
    return n;
  /* Count as luaL_argerror numbers the arguments: without the object of a method call. */
  if (max > 0 && lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar) && ar.namewhat != NULL &&
      strcmp(ar.namewhat, "method") == 0)
    self = 1;
  if (max == self)
    msg = lua_pushfstring(L, "no arguments expected, got %d", n - self);
  else
    msg = lua_pushfstring(L, "no more than %d argument%s expected, got %d", max - self,
                          max - self == 1 ? "" : "s", n - self);
  return luaL_argerror(L, max + 1, msg);
}

/* libuv names the errors it knows ("ENOENT", "no such file or directory") and calls the rest
 * "Unknown system error -8" (libuv 1.44 has no ENOEXEC, for one). glibc names them all. */
static int util_libuv_knows(const char *name) {
  return strncmp(name, "Unknown", 7) != 0;
}

const char *coral_errname(int e, char *buf, size_t size) {
  const char *name;
  uv_err_name_r(-e, buf, size);
  if (util_libuv_knows(buf))
    return buf;
  name = strerrorname_np(e);
  if (name != NULL)
    snprintf(buf, size, "%s", name);
  else
    snprintf(buf, size, "E%d", e);
  return buf;
}

const char *coral_strerror(int e, char *buf, size_t size) {
  const char *text;
  char tmp[128];
  uv_strerror_r(-e, buf, size);
  if (util_libuv_knows(buf))
    return buf;
  /* glibc's text, lower-cased at the start as libuv writes its own ("exec format error") */
  text = strerror_r(e, tmp, sizeof tmp);
  snprintf(buf, size, "%s", text);
  if (size > 0 && isupper((unsigned char)buf[0]) && !isupper((unsigned char)buf[1]))
    buf[0] = (char)tolower((unsigned char)buf[0]);
  return buf;
}

void coral_text_grow(coral_text *t, size_t more) {
  size_t cap = t->cap * 2;
  char *p;
  if (cap < t->len + more)
    cap = t->len + more;
  p = lua_newuserdatauv(t->L, cap, 0);
  memcpy(p, t->p, t->len);
  lua_replace(t->L, t->slot);
  t->p = p;
  t->cap = cap;
}

void coral_text_begin(coral_text *t, lua_State *L) {
  t->L = L;
  t->len = 0;
  lua_pushvalue(L, lua_upvalueindex(1));
  t->slot = lua_gettop(L);
  if (lua_isnil(L, t->slot)) {
    t->p = lua_newuserdatauv(L, 256, 0);
    lua_replace(L, t->slot);
  } else {
    t->p = lua_touserdata(L, t->slot);
    lua_pushnil(L);
    lua_replace(L, lua_upvalueindex(1));
  }
  t->cap = lua_rawlen(L, t->slot);
}

void coral_text_closure(lua_State *L, lua_CFunction fn) {
  lua_newuserdatauv(L, 256, 0);
  lua_pushcclosure(L, fn, 1);
}

void coral_text_push(coral_text *t, size_t keep) {
  lua_pushlstring(t->L, t->p, t->len);
  if (t->cap <= keep) {
    lua_pushvalue(t->L, t->slot);
    lua_replace(t->L, lua_upvalueindex(1));
  }
}
