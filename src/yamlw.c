/*
 * yamlw.c: coral.yamlw, the writer of the project state's YAML (.coral/project_state.yaml).
 * Reading stays in Lua (lua/coral/records/yaml.lua's decode, which reads this subset only).
 *
 *   text = yamlw.encode(t [, comment [, list_mt]])
 *
 * Why in C: a run writes the state at its start, every 1 + N/1000 s and at its end, on the
 * event loop. The pure-Lua writer it replaces took 11.7M instructions to write a 35 KB state
 * (callgrind; 2.4 ms), most of it pattern scans, gsub and string building; this one 1.26M
 * (0.2-0.3 ms), of which a sixth is glibc's "%.17g" for the floats.
 *
 * What is written is that writer's text to the byte (spec/yaml_oracle.lua keeps it, and
 * spec/yaml_spec.lua compares the two): block maps and lists indented by two spaces, each line
 * ending in "\n"; map keys sorted bytewise by their text (as Lua's `<` does in the "C" locale
 * coral runs in; keys whose texts tie are kept in the table's traversal order); a table is a
 * list when its count of pairs equals its length, and its items are written from 1 up to the
 * first nil; a map inside a list starts on the item's line ("- k: v"); an empty table is {}, or
 * [] when its metatable is `list_mt`; an empty document is {} or []; `comment` becomes a first
 * "# comment" line. Scalars: strings always double-quoted, with \" \\ \n \t \r, other control
 * bytes and every byte of text that is not UTF-8 as \xNN, and in UTF-8 text the C1 controls and
 * U+FFFE, U+FFFF as \uXXXX (YAML allows none of them unescaped); a key is plain when it reads
 * [A-Za-z_][A-Za-z0-9_.-]* and is none of true, false, null, yes, no, on, off in any case, and
 * a key that is not a string is its tostring text; integers as %d, floats as %.17g with ".0"
 * added when that has no point and no exponent, NaN and infinities as null; booleans. Tables
 * are read raw (no __index, __len or __pairs), as lua-cjson and coral.jsonw read them. Other
 * values (functions, threads, userdata) raise "yaml: cannot write a <type>"; nesting deeper
 * than MAX_DEPTH raises too (a table that contains itself), before the C stack could run out.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "coral.h"

#define MAX_DEPTH 1000
/* Bytes of text buffer kept between calls: a state of a few hundred agents' histories. */
#define MAX_KEPT (256 * 1024)

/* One key of the map being written: its text (the key, or tostring of it) and where the
 * scratch table holds that text (2 * slot - 1, which keeps the text alive while the C array
 * points at it) and the key's value (2 * slot). */
typedef struct {
  const char *text;
  size_t len;
  lua_Integer slot;
} yamlw_key;

/* The text and the keys are built in full userdata at fixed stack slots, each replaced by a
 * bigger one as it grows: an error anywhere leaves garbage for the collector, nothing to free
 * by hand. The keys of the maps being written (the current one and its ancestors) are a stack
 * in `keys` and in the scratch table: a map's keys are the entries from `top` when it starts. */
typedef struct {
  lua_State *L;
  coral_text text;   /* the bytes, in the userdata at text.slot */
  int keys_slot;
  yamlw_key *keys;
  size_t top, keys_cap;
  int scratch;    /* stack index of the scratch table */
  int list_mt;    /* stack index of list_mt, or 0 */
} yamlw_writer;

/* {{{ the text */

static void yamlw_put(yamlw_writer *w, const char *s, size_t n) { coral_text_put(&w->text, s, n); }
static void yamlw_putc(yamlw_writer *w, char c) { coral_text_putc(&w->text, c); }

static void yamlw_spaces(yamlw_writer *w, size_t n) {
  coral_text_reserve(&w->text, n);
  memset(w->text.p + w->text.len, ' ', n);
  w->text.len += n;
}

/* }}} */
/* {{{ scalars */

static void yamlw_put_integer(yamlw_writer *w, lua_Integer i) {
  char buf[24], *end = buf + sizeof buf, *s = end;
  uint64_t u = i < 0 ? (uint64_t)0 - (uint64_t)i : (uint64_t)i;
  do {
    *--s = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  if (i < 0)
    *--s = '-';
  yamlw_put(w, s, (size_t)(end - s));
}

/* 17 digits always read back as the same double; the point or exponent keeps it a float for
 * every reader (2.0 written as "2" would come back an integer). */
static void yamlw_put_float(yamlw_writer *w, double x) {
  char buf[40];
  int n;
  if (isnan(x) || isinf(x)) {
    yamlw_put(w, "null", 4);
    return;
  }
  n = snprintf(buf, sizeof buf, "%.17g", x);
  yamlw_put(w, buf, (size_t)n);
  if (memchr(buf, '.', (size_t)n) == NULL && memchr(buf, 'e', (size_t)n) == NULL)
    yamlw_put(w, ".0", 2);
}

/* Whether s[0..n) is UTF-8 as Lua's utf8.len takes it (strict): no stray continuation byte, no
 * truncated or overlong sequence, no surrogate, nothing above U+10FFFF. */
static int yamlw_utf8(const unsigned char *s, size_t n) {
  size_t i = 0, k, len;
  uint32_t cp, min;
  while (i < n) {
    unsigned c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xC0 && c < 0xE0) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c < 0xF0) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c < 0xF8) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (n - i < len)
      return 0;
    for (k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80)
        return 0;
      cp = cp << 6 | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += len;
  }
  return 1;
}

static const char YAMLW_HEX[] = "0123456789ABCDEF";

/* The bytes that are not written as they are in every string: control bytes (iscntrl in the
 * "C" locale: below 0x20, and 0x7F), the quote, the backslash, and bytes from 0x80 (kept when
 * the string is UTF-8, except for the characters below). A table: one load a byte. */
static const unsigned char YAMLW_SPECIAL[256] = {
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0x00 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0x10 */
  0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x20 */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x30 */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x40 */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,   /* 0x50 */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x60 */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,   /* 0x70 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0x80 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0x90 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0xA0 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0xB0 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0xC0 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0xD0 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0xE0 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,   /* 0xF0 */
};

static void yamlw_put_quoted(yamlw_writer *w, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, run = 0;
  int utf8 = -1;   /* whether the whole string is UTF-8: looked at the first byte from 0x80 */
  yamlw_putc(w, '"');
  for (;;) {
    unsigned char c;
    char esc[6];
    size_t esc_len = 2, skip = 0;
    while (i < n && !YAMLW_SPECIAL[u[i]])   /* most strings (ids, times, paths) are one run */
      i++;
    if (i == n)
      break;
    c = u[i];
    esc[0] = '\\';
    if (c >= 0x80) {
      if (utf8 < 0)
        utf8 = yamlw_utf8(u, n);
      if (utf8 && c == 0xC2 && i + 1 < n && u[i + 1] <= 0x9F) {
        /* U+0080..U+009F (C1 controls, NEL among them: a reader folds it into a space) */
        esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
        esc[4] = YAMLW_HEX[u[i + 1] >> 4]; esc[5] = YAMLW_HEX[u[i + 1] & 15];
        esc_len = 6;
        skip = 1;
      } else if (utf8 && c == 0xEF && i + 2 < n && u[i + 1] == 0xBF && u[i + 2] >= 0xBE) {
        /* U+FFFE, U+FFFF: LibYAML refuses a file that has them */
        memcpy(esc + 1, u[i + 2] == 0xBE ? "uFFFE" : "uFFFF", 5);
        esc_len = 6;
        skip = 2;
      } else if (utf8) {
        i++;   /* a byte of a character kept as it is */
        continue;
      } else {
        esc[1] = 'x'; esc[2] = YAMLW_HEX[c >> 4]; esc[3] = YAMLW_HEX[c & 15];
        esc_len = 4;
      }
    } else {
      switch (c) {
      case '"': esc[1] = '"'; break;
      case '\\': esc[1] = '\\'; break;
      case '\n': esc[1] = 'n'; break;
      case '\t': esc[1] = 't'; break;
      case '\r': esc[1] = 'r'; break;
      default:
        esc[1] = 'x'; esc[2] = YAMLW_HEX[c >> 4]; esc[3] = YAMLW_HEX[c & 15];
        esc_len = 4;
      }
    }
    yamlw_put(w, s + run, i - run);
    yamlw_put(w, esc, esc_len);
    i += skip + 1;
    run = i;
  }
  yamlw_put(w, s + run, n - run);
  yamlw_putc(w, '"');
}

static int yamlw_letter(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* Whether a key may be written plain: [A-Za-z_][A-Za-z0-9_.-]*, and not a word that YAML 1.1
 * readers (LibYAML's lyaml, PyYAML) take for a boolean or null, in any case. */
static int yamlw_plain_key(const char *s, size_t n) {
  static const char *const words[] = { "true", "false", "null", "yes", "no", "on", "off" };
  char lower[5];
  size_t i;
  if (n == 0 || !(yamlw_letter((unsigned char)s[0]) || s[0] == '_'))
    return 0;
  for (i = 1; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!(yamlw_letter(c) || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
      return 0;
  }
  if (n > sizeof lower)   /* the words have at most 5 letters */
    return 1;
  for (i = 0; i < n; i++)
    lower[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] - 'A' + 'a' : s[i]);
  for (i = 0; i < sizeof words / sizeof words[0]; i++)
    if (strlen(words[i]) == n && memcmp(words[i], lower, n) == 0)
      return 0;
  return 1;
}

static void yamlw_put_scalar(yamlw_writer *w, int idx) {
  lua_State *L = w->L;
  const char *s;
  size_t n;
  switch (lua_type(L, idx)) {
  case LUA_TSTRING:
    s = lua_tolstring(L, idx, &n);
    yamlw_put_quoted(w, s, n);
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx))
      yamlw_put_integer(w, lua_tointeger(L, idx));
    else
      yamlw_put_float(w, (double)lua_tonumber(L, idx));
    break;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx))
      yamlw_put(w, "true", 4);
    else
      yamlw_put(w, "false", 5);
    break;
  default:   /* (never nil: a value comes from a table) */
    luaL_error(L, "yaml: cannot write a %s", luaL_typename(L, idx));
  }
}

/* }}} */
/* {{{ tables */

static void yamlw_put_block(yamlw_writer *w, int idx, int list, int indent, int depth, int dash);

/* The Lua writer's test, kept: a list when the count of pairs equals the length (#t).
 * `*empty`: whether the table has no pair. A map of string keys has length 0: one step of
 * lua_next says it is not a list, without counting its keys. */
static int yamlw_is_list(lua_State *L, int idx, int *empty) {
  lua_Integer len = (lua_Integer)lua_rawlen(L, idx), n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    if (++n > len) {
      lua_pop(L, 1);   /* the key */
      break;
    }
  }
  *empty = n == 0;
  return n == len;
}

/* getmetatable(t) == list_mt, __metatable field included, as the Lua writer asked it. */
static int yamlw_marked_list(yamlw_writer *w, int idx) {
  lua_State *L = w->L;
  int marked;
  if (w->list_mt == 0)
    return 0;
  if (luaL_getmetafield(L, idx, "__metatable") == LUA_TNIL && !lua_getmetatable(L, idx))
    return 0;
  marked = lua_rawequal(L, -1, w->list_mt);
  lua_pop(L, 1);
  return marked;
}

/* The value after "key:" or "-", and the end of that line: " scalar", " {}" or " []", or
 * nothing there and the table's block on the lines below, indented two spaces more. */
static void yamlw_put_after(yamlw_writer *w, int idx, int indent, int depth) {
  int list, empty;
  if (lua_type(w->L, idx) != LUA_TTABLE) {
    yamlw_putc(w, ' ');
    yamlw_put_scalar(w, idx);
    yamlw_putc(w, '\n');
    return;
  }
  list = yamlw_is_list(w->L, idx, &empty);
  if (empty) {
    yamlw_put(w, yamlw_marked_list(w, idx) ? " []\n" : " {}\n", 4);
    return;
  }
  yamlw_putc(w, '\n');
  yamlw_put_block(w, idx, list, indent + 2, depth + 1, 0);
}

static void yamlw_put_list(yamlw_writer *w, int idx, int indent, int depth) {
  lua_State *L = w->L;
  lua_Integer i;
  int empty;
  for (i = 1; lua_rawgeti(L, idx, i) != LUA_TNIL; i++) {
    int item = lua_gettop(L);
    if (lua_type(L, item) == LUA_TTABLE && !yamlw_is_list(L, item, &empty)) {
      yamlw_put_block(w, item, 0, indent + 2, depth + 1, 1);
    } else {
      yamlw_spaces(w, (size_t)indent);
      yamlw_putc(w, '-');
      yamlw_put_after(w, item, indent, depth);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static void yamlw_reserve_keys(yamlw_writer *w, size_t count) {
  size_t cap;
  yamlw_key *keys;
  if (count <= w->keys_cap)
    return;
  cap = w->keys_cap * 2;
  if (cap < count)
    cap = count;
  keys = lua_newuserdatauv(w->L, cap * sizeof *keys, 0);
  memcpy(keys, w->keys, w->top * sizeof *keys);
  lua_replace(w->L, w->keys_slot);
  w->keys = keys;
  w->keys_cap = cap;
}

/* Bytewise, as Lua's `<` compares strings in the "C" locale; ties (keys of other types whose
 * texts are equal: 1 and "1") in traversal order, so the text does not depend on qsort. */
static int yamlw_key_order(const void *a, const void *b) {
  const yamlw_key *x = a, *y = b;
  int c = memcmp(x->text, y->text, x->len < y->len ? x->len : y->len);
  if (c != 0)
    return c;
  if (x->len != y->len)
    return x->len < y->len ? -1 : 1;
  return x->slot < y->slot ? -1 : x->slot > y->slot;
}

/* Most maps have a few keys: sorted by insertion, without qsort's call per comparison. */
static void yamlw_sort(yamlw_key *keys, size_t n) {
  size_t i, j;
  if (n > 16) {
    qsort(keys, n, sizeof *keys, yamlw_key_order);
    return;
  }
  for (i = 1; i < n; i++) {
    yamlw_key k = keys[i];
    for (j = i; j > 0 && yamlw_key_order(&keys[j - 1], &k) > 0; j--)
      keys[j] = keys[j - 1];
    keys[j] = k;
  }
}

/* `dash`: the map is a list item; its first line starts with "- " two spaces left of `indent`. */
static void yamlw_put_map(yamlw_writer *w, int idx, int indent, int depth, int dash) {
  lua_State *L = w->L;
  size_t base = w->top, n = 0, i;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {   /* the key at -2, its value at -1 */
    lua_Integer slot = (lua_Integer)(base + n + 1);
    yamlw_key *k;
    if (lua_type(L, -2) == LUA_TSTRING)
      lua_pushvalue(L, -2);
    else
      luaL_tolstring(L, -2, NULL);   /* tostring, __tostring and __name included */
    yamlw_reserve_keys(w, base + n + 1);
    k = &w->keys[base + n];
    k->text = lua_tolstring(L, -1, &k->len);
    k->slot = slot;
    lua_rawseti(L, w->scratch, 2 * slot - 1);
    lua_rawseti(L, w->scratch, 2 * slot);
    w->top = base + ++n;
  }
  yamlw_sort(w->keys + base, n);
  for (i = 0; i < n; i++) {
    yamlw_key k = w->keys[base + i];   /* a copy: a nested map may move the array */
    if (i == 0 && dash) {
      yamlw_spaces(w, (size_t)indent - 2);
      yamlw_put(w, "- ", 2);
    } else {
      yamlw_spaces(w, (size_t)indent);
    }
    if (yamlw_plain_key(k.text, k.len))
      yamlw_put(w, k.text, k.len);
    else
      yamlw_put_quoted(w, k.text, k.len);
    yamlw_putc(w, ':');
    lua_rawgeti(L, w->scratch, 2 * k.slot);
    yamlw_put_after(w, lua_gettop(L), indent, depth);
    lua_pop(L, 1);
  }
  w->top = base;
}

static void yamlw_put_block(yamlw_writer *w, int idx, int list, int indent, int depth, int dash) {
  if (depth > MAX_DEPTH)
    luaL_error(w->L, "yaml: cannot write tables nested deeper than %d (a table that contains itself?)",
               MAX_DEPTH);
  luaL_checkstack(w->L, 8, "yaml: tables nested too deep");
  if (list)
    yamlw_put_list(w, idx, indent, depth);
  else
    yamlw_put_map(w, idx, indent, depth, dash);
}

/* }}} */

/* text = yamlw.encode(t [, comment [, list_mt]]) */
static int yamlw_encode(lua_State *L) {
  yamlw_writer w;
  int list, empty;
  coral_checknargs(L, 3);
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  w.L = L;
  w.list_mt = lua_isnil(L, 3) ? 0 : 3;
  /* The buffer the last call left, taken out of the upvalue while this call writes in it: a
   * key's __tostring that wrote YAML itself would get a buffer of its own. */
  coral_text_begin(&w.text, L);
  w.keys_cap = 64;
  w.keys = lua_newuserdatauv(L, w.keys_cap * sizeof *w.keys, 0);
  w.keys_slot = lua_gettop(L);
  w.top = 0;
  lua_createtable(L, 256, 0);
  w.scratch = lua_gettop(L);

  if (lua_toboolean(L, 2)) {
    const char *comment;
    size_t len;
    int t = lua_type(L, 2);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      return luaL_typeerror(L, 2, "string");
    lua_pushvalue(L, 2);   /* a number is written as `..` writes it, converted on a copy */
    comment = lua_tolstring(L, -1, &len);
    yamlw_put(&w, "# ", 2);
    yamlw_put(&w, comment, len);
    yamlw_putc(&w, '\n');
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  if (lua_next(L, 1) == 0) {
    /* no lines would be an empty document, which YAML reads as null */
    yamlw_put(&w, yamlw_marked_list(&w, 1) ? "[]\n" : "{}\n", 3);
  } else {
    lua_pop(L, 2);
    list = yamlw_is_list(L, 1, &empty);
    yamlw_put_block(&w, 1, list, 0, 0, 0);
    if (w.text.len == 0)   /* a "list" whose item 1 is nil (holes, #t a later border): no line */
      yamlw_putc(&w, '\n');
  }
  coral_text_push(&w.text, MAX_KEPT);
  return 1;
}

int coral_yamlw_open(lua_State *L) {
  lua_createtable(L, 0, 1);
  coral_text_closure(L, yamlw_encode);
  lua_setfield(L, -2, "encode");
  return 1;
}
