/*
 * util.c: argument checks shared by the primitives (spawn.c, dag.c, coord.c), so that the
 * same mistake reads the same in every module. Model: luaposix's _helpers.c (checknargs).
 */
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
