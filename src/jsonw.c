/*
 * jsonw.c: coral.jsonw, the JSON writer of coral's records (the journal's lines, plan.json,
 * summary.json, a task's inputs.json). Reading stays with lua-cjson.
 *
 *   text = jsonw.encode(value [, list_keys])
 *
 * Why not cjson.encode: coral writes a few JSON records for every task, and most of their
 * numbers are times. lua-cjson formats every number, integers too, with snprintf("%.14g"),
 * which costs glibc's multi-precision float formatting each time (a third of a record's
 * encoding, measured) and keeps only 14 digits: a time of day to 0.1 ms. Here an integer is
 * written digit by digit, and a float as the few decimals that give it back exactly when there
 * are such (a time in microseconds, a duration in nanoseconds), else with 17 digits, which
 * always do. A number read back is the number written.
 *
 * What is written: nil as null, booleans, numbers (NaN and infinities are an error: JSON has
 * none), strings (", \ and control characters escaped; other bytes as they are), tables: a
 * table whose keys are exactly 1..n is an array, any other an object (string keys, and number
 * keys written as strings), the empty table {} — or [] under a key named in `list_keys` (a set:
 * key -> true), since an empty Lua table does not say which it is. Nesting deeper than
 * MAX_DEPTH is an error (a table that contains itself). Other values (functions, userdata) are
 * an error naming the key.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "coral.h"

#define MAX_DEPTH 1000
#define MAX_KEPT (64 * 1024)   /* bytes of buffer kept between calls */

/* The text is built in a full userdata at a fixed stack slot, replaced by a bigger one as it
 * grows: an error anywhere leaves garbage for the collector, nothing to free by hand. The
 * userdata is kept for the next call (the encode function's upvalue): a record a task costs no
 * buffer of its own, only its string. */
typedef struct {
  lua_State *L;
  coral_text text;   /* the bytes, in the userdata at text.slot */
  int lists;         /* stack index of list_keys, or 0 */
} writer;

static void put(writer *w, const char *s, size_t n) { coral_text_put(&w->text, s, n); }
static void putc1(writer *w, char c) { coral_text_putc(&w->text, c); }

/* Decimal digits of `u` at the end of buf[0..24): returns where they start. */
static char *digits(uint64_t u, char *end) {
  do {
    *--end = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  return end;
}

static void put_integer(writer *w, lua_Integer i) {
  char buf[24], *end = buf + sizeof buf, *s;
  uint64_t u = i < 0 ? (uint64_t)0 - (uint64_t)i : (uint64_t)i;
  s = digits(u, end);
  if (i < 0)
    *--s = '-';
  put(w, s, (size_t)(end - s));
}

/* 10^k for k = 0..9, exact in a double. */
static const double POW10[] = { 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9 };

/* A float: integral values as integers; else the fewest decimals (3, 6 or 9) that give `x`
 * back — m / 10^k with m below 2^53 is exact in the division, so when it equals x the text
 * "m / 10^k" reads back as x —, else 17 significant digits. `x` is finite. The text goes at
 * the end of buf[0..CORAL_JSON_NUMBER); returns where it starts, its length in *n. */
static const char *format_float(double x, char *buf, size_t *n) {
  static const int tries[] = { 3, 6, 9 };
  const double exact = 9007199254740992.0;   /* 2^53: integers up to here are exact */
  char *end = buf + CORAL_JSON_NUMBER, *s;
  size_t t;
  if (x == floor(x) && fabs(x) < exact) {
    lua_Integer i = (lua_Integer)x;
    uint64_t u = i < 0 ? (uint64_t)0 - (uint64_t)i : (uint64_t)i;
    s = digits(u, end);
    if (i < 0)
      *--s = '-';
    *n = (size_t)(end - s);
    return s;
  }
  for (t = 0; t < sizeof tries / sizeof tries[0]; t++) {
    int k = tries[t];
    double scaled = x * POW10[k];
    double m = nearbyint(scaled);
    if (fabs(m) < exact && m / POW10[k] == x) {
      uint64_t u = (uint64_t)fabs(m);
      char *last = end;
      int i;
      /* the k decimals, then the integer part, then the sign */
      s = end;
      for (i = 0; i < k; i++) {
        *--s = (char)('0' + u % 10);
        u /= 10;
      }
      *--s = '.';
      s = digits(u, s);
      if (m < 0)
        *--s = '-';
      while (last[-1] == '0')   /* not all of them: x is not integral */
        last--;
      *n = (size_t)(last - s);
      return s;
    }
  }
  *n = (size_t)snprintf(buf, CORAL_JSON_NUMBER, "%.17g", x);
  return buf;
}

size_t coral_json_number(double x, char *buf) {
  size_t n;
  const char *s = format_float(x, buf, &n);
  memmove(buf, s, n);
  return n;
}

static void put_float(writer *w, double x) {
  char buf[CORAL_JSON_NUMBER];
  const char *s;
  size_t n;
  if (isnan(x) || isinf(x))
    luaL_error(w->L, "jsonw.encode: cannot write %s: JSON has no such number", isnan(x) ? "NaN" : "an infinity");
  s = format_float(x, buf, &n);
  put(w, s, n);
}

static const char HEX[] = "0123456789abcdef";

static void put_string(writer *w, const char *s, size_t n) {
  size_t i, run = 0;
  putc1(w, '"');
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    char u[6];
    if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f)
      continue;
    put(w, s + run, i - run);
    run = i + 1;
    switch (c) {
    case '"': esc = "\\\""; break;
    case '\\': esc = "\\\\"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\t': esc = "\\t"; break;
    case '\b': esc = "\\b"; break;
    case '\f': esc = "\\f"; break;
    default:
      u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0'; u[4] = HEX[c >> 4]; u[5] = HEX[c & 15];
      put(w, u, 6);
      continue;
    }
    put(w, esc, 2);
  }
  put(w, s + run, n - run);
  putc1(w, '"');
}

static void put_value(writer *w, int idx, int depth, const char *key);

/* Whether the table at `idx` has exactly the keys 1..n, n >= 1: n, else 0. */
static lua_Integer array_length(lua_State *L, int idx) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
  if (n == 0)
    return 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  return count == n ? n : 0;
}

static int is_list_key(writer *w, const char *key) {
  int yes;
  if (w->lists == 0 || key == NULL)
    return 0;
  yes = lua_getfield(w->L, w->lists, key) != LUA_TNIL && lua_toboolean(w->L, -1);
  lua_pop(w->L, 1);
  return yes;
}

static void put_table(writer *w, int idx, int depth, const char *key) {
  lua_State *L = w->L;
  lua_Integer n, i;
  int first = 1;
  if (depth > MAX_DEPTH)
    luaL_error(L, "jsonw.encode: tables nested deeper than %d (a table that contains itself?)", MAX_DEPTH);
  luaL_checkstack(L, 4, "jsonw.encode");
  n = array_length(L, idx);
  if (n > 0) {
    putc1(w, '[');
    for (i = 1; i <= n; i++) {
      if (i > 1)
        putc1(w, ',');
      lua_rawgeti(L, idx, i);
      put_value(w, lua_gettop(L), depth + 1, NULL);
      lua_pop(L, 1);
    }
    putc1(w, ']');
    return;
  }
  lua_pushnil(L);
  if (lua_next(L, idx) == 0) {
    put(w, is_list_key(w, key) ? "[]" : "{}", 2);
    return;
  }
  putc1(w, '{');
  do {
    const char *k;
    size_t klen;
    int kt = lua_type(L, -2);
    if (kt == LUA_TNUMBER) {
      /* written as a string, converted on a copy above the value: lua_next needs the key
       * as it is */
      lua_pushvalue(L, -2);
      k = lua_tolstring(L, -1, &klen);
    } else if (kt == LUA_TSTRING) {
      k = lua_tolstring(L, -2, &klen);
      lua_pushnil(L);   /* keeps the stack shape of the number case */
    } else {
      luaL_error(L, "jsonw.encode: a table key must be a string or a number, got %s", luaL_typename(L, -2));
      return;
    }
    if (!first)
      putc1(w, ',');
    first = 0;
    put_string(w, k, klen);
    putc1(w, ':');
    put_value(w, lua_gettop(L) - 1, depth + 1, k);
    lua_pop(L, 2);   /* the value and the key's copy (or nil) */
  } while (lua_next(L, idx) != 0);
  putc1(w, '}');
}

static void put_value(writer *w, int idx, int depth, const char *key) {
  lua_State *L = w->L;
  size_t n;
  const char *s;
  switch (lua_type(L, idx)) {
  case LUA_TNIL: put(w, "null", 4); break;
  case LUA_TBOOLEAN: if (lua_toboolean(L, idx)) put(w, "true", 4); else put(w, "false", 5); break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx))
      put_integer(w, lua_tointeger(L, idx));
    else
      put_float(w, lua_tonumber(L, idx));
    break;
  case LUA_TSTRING:
    s = lua_tolstring(L, idx, &n);
    put_string(w, s, n);
    break;
  case LUA_TTABLE: put_table(w, idx, depth, key); break;
  default:
    if (key != NULL)
      luaL_error(L, "jsonw.encode: cannot write a %s (key '%s')", luaL_typename(L, idx), key);
    luaL_error(L, "jsonw.encode: cannot write a %s", luaL_typename(L, idx));
  }
}

/* text = jsonw.encode(value [, list_keys]) */
static int jsonw_encode(lua_State *L) {
  writer w;
  coral_checknargs(L, 2);
  luaL_checkany(L, 1);
  if (!lua_isnoneornil(L, 2))
    luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  w.L = L;
  w.lists = lua_isnil(L, 2) ? 0 : 2;
  coral_text_begin(&w.text, L);   /* the buffer the last call left */
  put_value(&w, 1, 0, NULL);
  coral_text_push(&w.text, MAX_KEPT);   /* a big one (a whole plan.json) is not held for the run */
  return 1;
}

int coral_jsonw_open(lua_State *L) {
  lua_createtable(L, 0, 1);
  coral_text_closure(L, jsonw_encode);
  lua_setfield(L, -2, "encode");
  return 1;
}
