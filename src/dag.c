/*
 * dag.c: "coral.dag", the scheduling primitive. A graph of tasks (string ids with
 * dependencies, a weight in estimated seconds and a priority) that validates itself, answers
 * questions about its shape (phases, critical path, ranks) and hands out runnable tasks one
 * batch at a time. It never runs anything: the runner asks ready(), runs what it got, and
 * reports back with done() (ninja's Plan vs CommandRunner).
 *
 * Layout, chosen for a million tasks: ids are interned in one char arena and found through an
 * open-addressing hash table of node indices; dependencies are one flat array indexed by
 * per-node offsets (append-only, so it is CSR from the start); dependents are a CSR rebuilt by
 * validate(); the ready queue is a binary heap whose entries carry their sort key. Every array
 * lives in the userdata's struct and is freed by __gc, so a Lua error can never leak one.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "coral.h"

#define DAG_META "coral.dag"
#define DAG_UNRESOLVED 0x80000000u          /* dep entry holds an offset in pnames, not a node */
#define DAG_MAX_NODES 0x7fffffffu
#define DAG_EMPTY UINT32_MAX                /* no such node */
#define DAG_FREE UINT64_MAX                 /* free hash slot */

enum { ST_PENDING, ST_READY, ST_RUNNING, ST_DONE, ST_FAILED, ST_SKIPPED, ST_COUNT };
static const char *const dag_state_names[ST_COUNT] = {
  "pending", "ready", "running", "done", "failed", "skipped"
};

typedef struct dag_node {
  double weight;      /* estimated seconds, >= 0 */
  double rank;        /* weight + max rank of dependents (valid after validate) */
  int32_t priority;   /* higher first */
  uint32_t name;      /* offset of the id in names */
  uint32_t name_len;
  uint32_t missing;   /* dependencies not yet done (or released) */
  uint32_t phase;     /* 0-based topological generation (valid after validate) */
  uint8_t state;
  uint8_t released;   /* failed, but its dependents were released anyway */
} dag_node;


typedef struct dag_entry { double rank; int32_t priority; uint32_t node; } dag_entry;

typedef struct dag {
  dag_node *nodes;     size_t n, nodes_cap;
  size_t nvalid;       /* nodes [0, nvalid) passed validate() */
  char *names;         size_t names_len, names_cap;
  uint64_t *slots;     size_t slots_cap;             /* hash << 32 | node; power of two, or 0 */
  uint32_t *dep_off;   size_t dep_off_cap;           /* n + 1 entries */
  uint32_t *deps;      size_t deps_cap;              /* dep_off[n] entries */
  size_t npend;        /* dependencies named before their task was declared */
  char *pnames;        size_t pnames_len, pnames_cap;    /* their names, until validate() */
  uint32_t *rdep_off;  size_t rdep_off_cap;          /* n + 1, valid for nvalid nodes */
  uint32_t *rdeps;     size_t rdeps_cap;
  uint32_t *order;     size_t order_cap;             /* topological order; scratch */
  uint32_t *tmp;       size_t tmp_cap;               /* scratch */
  dag_entry *heap;     size_t heap_n, heap_cap;
  size_t count[ST_COUNT];
  uint32_t nphases;
  int sorted;          /* every dependency points to an earlier node: index order is topological */
} dag;

/* {{{ memory: every array is grown in place and stored in the struct at once (style rule 9) */

static void *dag_grow(lua_State *L, void **p, size_t *cap, size_t need, size_t size) {
  size_t ncap;
  void *np;
  if (need <= *cap)
    return *p;
  ncap = *cap < 16 ? 16 : *cap;
  while (ncap < need)
    ncap = ncap + ncap / 2 + 1;
  if (ncap > SIZE_MAX / size || (np = realloc(*p, ncap * size)) == NULL) {
    luaL_error(L, "dag: not enough memory");
    return NULL;
  }
  *p = np;
  *cap = ncap;
  return np;
}

#define GROW(L, g, field, capfield, need) \
  dag_grow((L), (void **)&(g)->field, &(g)->capfield, (need), sizeof *(g)->field)

static void dag_free(dag *g) {
  free(g->nodes); free(g->names); free(g->slots); free(g->dep_off); free(g->deps);
  free(g->pnames); free(g->rdep_off); free(g->rdeps); free(g->order);
  free(g->tmp); free(g->heap);
  memset(g, 0, sizeof *g);
}

static void dag_free_scratch(dag *g) {
  free(g->tmp); g->tmp = NULL; g->tmp_cap = 0;
  free(g->order); g->order = NULL; g->order_cap = 0;
  g->npend = 0;
  free(g->pnames); g->pnames = NULL; g->pnames_cap = 0; g->pnames_len = 0;
}

/* }}} */
/* {{{ interned ids */

static uint32_t dag_hash(const char *s, size_t len) {
  uint32_t h = 2166136261u;
  size_t i;
  for (i = 0; i < len; i++)
    h = (h ^ (unsigned char)s[i]) * 16777619u;
  h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
  return h;
}

static const char *dag_name(const dag *g, uint32_t v) { return g->names + g->nodes[v].name; }

/* Index of the node called s, or DAG_EMPTY. A slot keeps the id's hash beside the node index,
 * so a probe only reads the node and its name when the full hash matches. */
static uint32_t dag_find(const dag *g, const char *s, size_t len, uint32_t h) {
  size_t mask = g->slots_cap - 1, i;
  if (g->slots_cap == 0)
    return DAG_EMPTY;
  for (i = h & mask;; i = (i + 1) & mask) {
    uint64_t slot = g->slots[i];
    uint32_t v = (uint32_t)slot;
    if (slot == DAG_FREE)
      return DAG_EMPTY;
    if ((uint32_t)(slot >> 32) == h && g->nodes[v].name_len == len &&
        memcmp(dag_name(g, v), s, len) == 0)
      return v;
  }
}

static void dag_slot_put(uint64_t *slots, size_t cap, uint32_t h, uint32_t v) {
  size_t mask = cap - 1, i;
  for (i = h & mask; slots[i] != DAG_FREE; i = (i + 1) & mask)
    ;
  slots[i] = (uint64_t)h << 32 | v;
}

/* Makes a table with room for `want` nodes at load <= 1/2 and fills it with the nodes
 * [0, g->n): moved from the old table when it grows, hashed again after a truncation. */
static void dag_rehash(lua_State *L, dag *g, size_t want, int grow) {
  size_t cap = 16, i;
  uint64_t *slots;
  while (cap < want * 2)
    cap *= 2;
  slots = malloc(cap * sizeof *slots);
  if (slots == NULL)
    luaL_error(L, "dag: not enough memory");
  memset(slots, 0xff, cap * sizeof *slots);
  if (grow) {
    for (i = 0; i < g->slots_cap; i++)
      if (g->slots[i] != DAG_FREE)
        dag_slot_put(slots, cap, (uint32_t)(g->slots[i] >> 32), (uint32_t)g->slots[i]);
  } else {
    for (i = 0; i < g->n; i++)
      dag_slot_put(slots, cap, dag_hash(dag_name(g, (uint32_t)i), g->nodes[i].name_len), (uint32_t)i);
  }
  free(g->slots);  /* nothing can fail between the malloc and this */
  g->slots = slots;
  g->slots_cap = cap;
}

/* }}} */
/* {{{ arguments */

static dag *dag_check(lua_State *L, int arg) {
  dag *g = luaL_checkudata(L, arg, DAG_META);
  if (g->dep_off == NULL)
    luaL_argerror(L, arg, "dag is closed");
  return g;
}

/* Rejects keys of the option table at `arg` that are not in `known` (NULL-terminated). */
static void dag_checkoptions(lua_State *L, int arg, const char *const known[]) {
  lua_pushnil(L);
  while (lua_next(L, arg) != 0) {
    int i, ok = 0;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING)
      for (i = 0; known[i] != NULL && !ok; i++)
        ok = strcmp(lua_tostring(L, -1), known[i]) == 0;
    if (!ok) {
      const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1);
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s'", key));
    }
  }
}

/* The node named by argument `arg`: an id string or a 1-based index. Raises if unknown. */
static uint32_t dag_checktask(lua_State *L, dag *g, int arg) {
  if (lua_type(L, arg) == LUA_TNUMBER) {
    lua_Integer i;
    if (!lua_isinteger(L, arg))
      luaL_argerror(L, arg, "task index must be an integer");
    i = lua_tointeger(L, arg);
    if (i < 1 || (lua_Unsigned)i > g->n)
      luaL_argerror(L, arg, lua_pushfstring(L, "no task with index %I", i));
    return (uint32_t)(i - 1);
  } else {
    size_t len;
    const char *s;
    uint32_t v;
    if (lua_type(L, arg) != LUA_TSTRING)
      luaL_typeerror(L, arg, "task id or index");
    s = lua_tolstring(L, arg, &len);
    v = dag_find(g, s, len, dag_hash(s, len));
    if (v == DAG_EMPTY)
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown task '%s'", s));
    return v;
  }
}

static void dag_checkvalid(lua_State *L, dag *g, const char *op) {
  if (g->nvalid != g->n)
    luaL_error(L, "dag %s: %d task(s) added since the last validate()", op, (int)(g->n - g->nvalid));
}

/* The ids as Lua strings, in the graph's user value (index -> id): pushing one is a table
 * read instead of interning a new string. Returns the stack index of that table. */
static int dag_ids(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  return lua_gettop(L);
}

static void dag_push_id(lua_State *L, int ids, uint32_t v) {
  lua_rawgeti(L, ids, (lua_Integer)v + 1);
}

/* Turns the stack's top [message, ids] into nil, message, kind, ids: the channel for a recipe
 * mistake found by the graph, with the ids of the tasks to blame. */
static int dag_fail(lua_State *L, const char *kind) {
  lua_pushnil(L);
  lua_rotate(L, -3, 1);
  lua_pushstring(L, kind);
  lua_rotate(L, -2, 1);
  return 4;
}

/* Pushes a list of the ids of nodes path[0..n). */
static void dag_push_ids(lua_State *L, int ids, const uint32_t *path, size_t n) {
  size_t i;
  lua_createtable(L, n > INT_MAX ? INT_MAX : (int)n, 0);
  for (i = 0; i < n; i++) {
    dag_push_id(L, ids, path[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

/* }}} */
/* {{{ the ready heap, ordered by priority (high first), rank (high first), declaration order */

static int dag_before(const dag_entry *a, const dag_entry *b) {
  if (a->priority != b->priority)
    return a->priority > b->priority;
  if (a->rank != b->rank)
    return a->rank > b->rank;
  return a->node < b->node;
}

static void dag_sift_down(dag *g, size_t i) {
  dag_entry *h = g->heap, e = h[i];
  size_t n = g->heap_n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n)
      break;
    if (c + 1 < n && dag_before(&h[c + 1], &h[c]))
      c++;
    if (!dag_before(&h[c], &e))
      break;
    h[i] = h[c];
    i = c;
  }
  h[i] = e;
}

static void dag_push_ready(lua_State *L, dag *g, uint32_t v) {
  dag_entry e, *h;
  size_t i;
  GROW(L, g, heap, heap_cap, g->heap_n + 1);
  h = g->heap;
  e.rank = g->nodes[v].rank;
  e.priority = g->nodes[v].priority;
  e.node = v;
  for (i = g->heap_n++; i > 0; ) {
    size_t p = (i - 1) / 2;
    if (!dag_before(&e, &h[p]))
      break;
    h[i] = h[p];
    i = p;
  }
  h[i] = e;
  g->count[g->nodes[v].state]--;
  g->nodes[v].state = ST_READY;
  g->count[ST_READY]++;
}

static uint32_t dag_pop_ready(dag *g) {
  uint32_t v = g->heap[0].node;
  g->heap[0] = g->heap[--g->heap_n];
  if (g->heap_n > 0)
    dag_sift_down(g, 0);
  return v;
}

/* }}} */
/* {{{ validate */

static void dag_set_state(dag *g, uint32_t v, int st) {
  g->count[g->nodes[v].state]--;
  g->nodes[v].state = (uint8_t)st;
  g->count[st]++;
}

/* Forgets nodes [keep, n): a dynamic batch that failed validation leaves the graph as it was. */
static void dag_truncate(lua_State *L, dag *g, int ids, size_t keep) {
  size_t v;
  for (v = keep; v < g->n; v++) {
    g->count[g->nodes[v].state]--;
    lua_pushnil(L);
    lua_rawseti(L, ids, (lua_Integer)v + 1);
  }
  g->n = keep;
  g->names_len = keep ? g->nodes[keep - 1].name + g->nodes[keep - 1].name_len + 1 : 0;
  dag_rehash(L, g, keep, 0);
  dag_free_scratch(g);
}

/* Fills rdep_off/rdeps (dependents CSR), phase and rank for all nodes, and, unless `sorted`
 * says that index order is already topological, order[] by Kahn's algorithm. Returns the
 * number of nodes ordered: less than n means a cycle among the unordered ones, whose
 * remaining in-degree is left in tmp. */
static size_t dag_analyse(lua_State *L, dag *g, int sorted) {
  size_t n = g->n, ne = g->dep_off[n], v, head = 0, tail = 0;
  uint32_t *cnt, *off, *rd, *ord, e, nphases = 0;
  GROW(L, g, rdep_off, rdep_off_cap, n + 1);
  GROW(L, g, rdeps, rdeps_cap, ne ? ne : 1);
  off = g->rdep_off; rd = g->rdeps;

  /* dependents CSR: count, prefix sum, fill (nodes keep declaration order) */
  memset(off, 0, (n + 1) * sizeof *off);
  for (e = 0; e < ne; e++)
    off[g->deps[e] + 1]++;
  for (v = 0; v < n; v++)
    off[v + 1] += off[v];
  for (v = 0; v < n; v++) {
    for (e = g->dep_off[v]; e < g->dep_off[v + 1]; e++)
      rd[off[g->deps[e]]++] = (uint32_t)v;
  }
  for (v = n; v > 0; v--)
    off[v] = off[v - 1];
  off[0] = 0;

  if (sorted) {
    /* the common case (dependencies declared first, or given as indices): two sweeps with
     * good locality, no queue */
    for (v = 0; v < n; v++) {
      uint32_t p = 0;
      for (e = g->dep_off[v]; e < g->dep_off[v + 1]; e++)
        if (g->nodes[g->deps[e]].phase + 1 > p)
          p = g->nodes[g->deps[e]].phase + 1;
      g->nodes[v].phase = p;
      if (p + 1 > nphases)
        nphases = p + 1;
    }
    g->nphases = nphases;
    for (v = n; v > 0; v--) {
      double best = 0;
      for (e = off[v - 1]; e < off[v]; e++)
        if (g->nodes[rd[e]].rank > best)
          best = g->nodes[rd[e]].rank;
      g->nodes[v - 1].rank = g->nodes[v - 1].weight + best;
    }
    return n;
  }

  GROW(L, g, order, order_cap, n ? n : 1);
  GROW(L, g, tmp, tmp_cap, n ? n : 1);
  cnt = g->tmp; ord = g->order;

  /* Kahn, roots in declaration order; a node's phase is one more than its latest dependency */
  for (v = 0; v < n; v++) {
    cnt[v] = g->dep_off[v + 1] - g->dep_off[v];
    g->nodes[v].phase = 0;
    if (cnt[v] == 0)
      ord[tail++] = (uint32_t)v;
  }
  while (head < tail) {
    uint32_t u = ord[head++], p = g->nodes[u].phase + 1;
    if (p > nphases)
      nphases = p;
    for (e = off[u]; e < off[u + 1]; e++) {
      uint32_t w = rd[e];
      if (g->nodes[w].phase < p)
        g->nodes[w].phase = p;
      if (--cnt[w] == 0)
        ord[tail++] = w;
    }
  }
  if (tail < n)
    return tail;
  g->nphases = nphases;

  /* upward rank, in reverse topological order */
  for (v = n; v > 0; v--) {
    uint32_t u = ord[v - 1];
    double best = 0;
    for (e = off[u]; e < off[u + 1]; e++)
      if (g->nodes[rd[e]].rank > best)
        best = g->nodes[rd[e]].rank;
    g->nodes[u].rank = g->nodes[u].weight + best;
  }
  return n;
}

/* Pushes "dependency cycle: a -> b -> a" and the list of the path's ids. The unordered nodes
 * all have an unordered dependency, so following those must come back to one on the walk. */
static void dag_push_cycle(lua_State *L, dag *g, int ids, size_t ordered) {
  uint32_t *cnt = g->tmp, *path = g->order + ordered, v, start, len = 0, i, low, clen;
  luaL_Buffer b;
  for (v = 0; cnt[v] == 0; v++)
    ;
  for (;;) {
    uint32_t e, next = DAG_EMPTY;
    cnt[v] = 0x80000000u | len;   /* on the walk, at position len */
    path[len++] = v;
    for (e = g->dep_off[v]; e < g->dep_off[v + 1] && next == DAG_EMPTY; e++)
      if (cnt[g->deps[e]] != 0)
        next = g->deps[e];
    v = next;
    if (cnt[v] & 0x80000000u)
      break;
  }
  start = cnt[v] & 0x7fffffffu;
  clen = len - start;
  /* rotate so the cycle starts at its first-declared task: the same cycle, the same text */
  low = start;
  for (i = start; i < len; i++)
    if (path[i] < path[low])
      low = i;
  for (i = 0; i <= clen; i++)            /* the rotated cycle, closed, after the walk */
    path[len + i] = path[start + (low - start + i) % clen];
  path += len;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "dependency cycle: ");
  for (i = 0; i <= clen; i++) {
    if (i > 0)
      luaL_addstring(&b, " -> ");
    luaL_addlstring(&b, dag_name(g, path[i]), g->nodes[path[i]].name_len);
  }
  luaL_pushresult(&b);
  dag_push_ids(L, ids, path, clen + 1);
}

/* ok, err, kind, ids = g:validate() */
static int dag_validate(lua_State *L) {
  dag *g = dag_check(L, 1);
  size_t v0 = g->nvalid, v, i, ordered;
  int ids, sorted;
  coral_checknargs(L, 1);
  ids = dag_ids(L);
  if (v0 == g->n) {
    lua_pushboolean(L, 1);
    return 1;
  }
  /* resolve the dependencies that were declared before their task */
  for (v = v0; v < g->n; v++) {
    uint32_t e;
    for (e = g->dep_off[v]; e < g->dep_off[v + 1]; e++) {
      uint32_t d = g->deps[e];
      if (d & DAG_UNRESOLVED) {
        const char *s = g->pnames + (d & ~DAG_UNRESOLVED);
        size_t slen = strlen(s);
        uint32_t w = dag_find(g, s, slen, dag_hash(s, slen));
        if (w == DAG_EMPTY) {
          lua_pushfstring(L, "task '%s' depends on unknown task '%s'", dag_name(g, (uint32_t)v), s);
          lua_createtable(L, 2, 0);
          dag_push_id(L, ids, (uint32_t)v);
          lua_rawseti(L, -2, 1);
          lua_pushlstring(L, s, slen);
          lua_rawseti(L, -2, 2);
          dag_truncate(L, g, ids, v0);
          dag_analyse(L, g, g->sorted);
          return dag_fail(L, "unknown");
        }
        g->deps[e] = w;
      }
    }
  }
  sorted = g->sorted && g->npend == 0;
  ordered = dag_analyse(L, g, sorted);
  if (ordered < g->n) {
    /* the path needs room after the walk in order[]: at most twice the unordered nodes */
    GROW(L, g, order, order_cap, ordered + 2 * (g->n - ordered) + 1);
    dag_push_cycle(L, g, ids, ordered);
    dag_truncate(L, g, ids, v0);
    dag_analyse(L, g, g->sorted);
    return dag_fail(L, "cycle");
  }

  /* new tasks: skipped behind a failure, ready, or waiting (in topological order, so a
   * skip spreads through the new batch too) */
  for (i = sorted ? v0 : 0; i < g->n; i++) {
    uint32_t u = sorted ? (uint32_t)i : g->order[i], e, skip = 0, missing = 0;
    if (u < v0)
      continue;
    for (e = g->dep_off[u]; e < g->dep_off[u + 1]; e++) {
      const dag_node *d = &g->nodes[g->deps[e]];
      if (d->state == ST_SKIPPED || (d->state == ST_FAILED && !d->released))
        skip = 1;
      else if (d->state != ST_DONE && d->state != ST_FAILED)
        missing++;
    }
    g->nodes[u].missing = missing;
    if (skip)
      dag_set_state(g, u, ST_SKIPPED);
    else if (missing == 0)
      dag_push_ready(L, g, u);
  }
  /* ranks of old tasks may have grown: refresh the keys of the queued ones */
  if (v0 > 0 && g->heap_n > 0) {
    for (i = 0; i < g->heap_n; i++)
      g->heap[i].rank = g->nodes[g->heap[i].node].rank;
    for (i = g->heap_n / 2; i > 0; i--)
      dag_sift_down(g, i - 1);
  }
  g->nvalid = g->n;
  g->sorted = sorted;
  dag_free_scratch(g);
  lua_pushboolean(L, 1);
  return 1;
}

/* }}} */
/* {{{ building */

/* Appends dependency entry `d` for the node being added (not committed until dep_off moves). */
static void dag_put_dep(lua_State *L, dag *g, size_t at, uint32_t d) {
  GROW(L, g, deps, deps_cap, at + 1);
  g->deps[at] = d;
}

static double dag_optweight(lua_State *L, int arg, int t) {
  double w;
  if (lua_getfield(L, t, "weight") == LUA_TNIL) {
    lua_pop(L, 1);
    return 1.0;
  }
  if (lua_type(L, -1) != LUA_TNUMBER)
    luaL_argerror(L, arg, lua_pushfstring(L, "weight must be a number, got %s", luaL_typename(L, -1)));
  w = (double)lua_tonumber(L, -1);
  if (!(w >= 0) || !isfinite(w))
    luaL_argerror(L, arg, "weight must be a finite number >= 0");
  lua_pop(L, 1);
  return w;
}

static int32_t dag_optpriority(lua_State *L, int arg, int t) {
  lua_Integer p;
  if (lua_getfield(L, t, "priority") == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_isinteger(L, -1))
    luaL_argerror(L, arg, lua_pushfstring(L, "priority must be an integer, got %s",
                                          lua_type(L, -1) == LUA_TNUMBER ? "a float" : luaL_typename(L, -1)));
  p = lua_tointeger(L, -1);
  if (p < INT32_MIN || p > INT32_MAX)
    luaL_argerror(L, arg, "priority out of range");
  lua_pop(L, 1);
  return (int32_t)p;
}

/* index, err, kind, ids = g:add(id [, deps [, opts]])
 * deps: list of task ids (declared before or after) or 1-based indices of declared tasks.
 * opts: { weight = seconds (default 1), priority = integer (default 0) }. */
static int dag_add(lua_State *L) {
  static const char *const known[] = { "weight", "priority", NULL };
  dag *g = dag_check(L, 1);
  size_t len, ndeps = 0, at, npend, pnames_len, k;
  const char *id = (luaL_checktype(L, 2, LUA_TSTRING), lua_tolstring(L, 2, &len));
  uint32_t h = dag_hash(id, len), v;
  double weight = 1.0;
  int32_t priority = 0;
  dag_node *node;

  coral_checknargs(L, 4);
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    ndeps = (size_t)luaL_len(L, 3);
  }
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    dag_checkoptions(L, 4, known);
    weight = dag_optweight(L, 4, 4);
    priority = dag_optpriority(L, 4, 4);
  }
  if (len == 0)
    luaL_argerror(L, 2, "task id must not be empty");
  if (memchr(id, '\0', len) != NULL)
    luaL_argerror(L, 2, "task id must not contain a zero byte");
  if (g->n >= DAG_MAX_NODES || g->names_len + len + 1 > UINT32_MAX)
    return luaL_error(L, "dag add: too many tasks");
  if (dag_find(g, id, len, h) != DAG_EMPTY) {
    lua_pushfstring(L, "duplicate task '%s'", id);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 1);
    return dag_fail(L, "duplicate");
  }

  /* dependencies go after the committed ones; an error midway leaves them uncommitted */
  at = g->dep_off[g->n];
  npend = g->npend;
  pnames_len = g->pnames_len;
  if ((uint64_t)at + ndeps > UINT32_MAX)
    return luaL_error(L, "dag add: too many dependencies");
  for (k = 1; k <= ndeps; k++) {
    int t = lua_rawgeti(L, 3, (lua_Integer)k);
    if (t == LUA_TNUMBER && lua_isinteger(L, -1)) {
      lua_Integer i = lua_tointeger(L, -1);
      if (i < 1 || (lua_Unsigned)i > g->n)
        luaL_argerror(L, 3, lua_pushfstring(L, "dependency #%d: no task with index %I", (int)k, i));
      dag_put_dep(L, g, at++, (uint32_t)(i - 1));
    } else if (t == LUA_TSTRING) {
      size_t dlen;
      const char *d = lua_tolstring(L, -1, &dlen);
      uint32_t w;
      if (dlen == len && memcmp(d, id, len) == 0) {
        lua_pushfstring(L, "task '%s' depends on itself", id);
        lua_createtable(L, 1, 0);
        lua_pushvalue(L, 2);
        lua_rawseti(L, -2, 1);
        return dag_fail(L, "self");
      }
      w = dag_find(g, d, dlen, dag_hash(d, dlen));
      if (w == DAG_EMPTY) {
        /* declared later (or never): keep the name until validate() */
        if (memchr(d, '\0', dlen) != NULL)
          luaL_argerror(L, 3, lua_pushfstring(L, "dependency #%d: task id must not contain a zero byte",
                                              (int)k));
        if (pnames_len + dlen + 1 > DAG_UNRESOLVED)
          return luaL_error(L, "dag add: too many forward dependencies");
        GROW(L, g, pnames, pnames_cap, pnames_len + dlen + 1);
        memcpy(g->pnames + pnames_len, d, dlen + 1);
        w = DAG_UNRESOLVED | (uint32_t)pnames_len;
        pnames_len += dlen + 1;
        npend++;
      }
      dag_put_dep(L, g, at++, w);
    } else {
      luaL_argerror(L, 3, lua_pushfstring(L, "dependency #%d must be a task id or index, got %s",
                                          (int)k, t == LUA_TNUMBER ? "a float" : luaL_typename(L, -1)));
    }
    lua_pop(L, 1);
  }

  /* the id string, kept for handing out (a stray entry past n is overwritten by the next add) */
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, (lua_Integer)g->n + 1);
  lua_pop(L, 1);

  /* commit: node, name, offsets, then the hash slot */
  GROW(L, g, nodes, nodes_cap, g->n + 1);
  GROW(L, g, names, names_cap, g->names_len + len + 1);
  GROW(L, g, dep_off, dep_off_cap, g->n + 2);
  if ((g->n + 1) * 2 > g->slots_cap)
    dag_rehash(L, g, g->slots_cap ? g->slots_cap : 8, 1);  /* doubles */
  v = (uint32_t)g->n;
  node = &g->nodes[v];
  memset(node, 0, sizeof *node);
  node->weight = weight;
  node->priority = priority;
  node->name = (uint32_t)g->names_len;
  node->name_len = (uint32_t)len;
  node->state = ST_PENDING;
  memcpy(g->names + g->names_len, id, len + 1);
  g->names_len += len + 1;
  g->dep_off[v + 1] = (uint32_t)at;
  g->npend = npend;
  g->pnames_len = pnames_len;
  g->n++;
  g->count[ST_PENDING]++;
  dag_slot_put(g->slots, g->slots_cap, h, v);
  lua_pushinteger(L, (lua_Integer)v + 1);
  return 1;
}

/* }}} */
/* {{{ queries */

/* phases = g:phases(): list of lists of ids, each in declaration order */
static int dag_phases(lua_State *L) {
  dag *g = dag_check(L, 1);
  size_t v;
  uint32_t p;
  int ids;
  coral_checknargs(L, 1);
  dag_checkvalid(L, g, "phases");
  ids = dag_ids(L);
  GROW(L, g, tmp, tmp_cap, (size_t)g->nphases + 1);
  memset(g->tmp, 0, ((size_t)g->nphases + 1) * sizeof *g->tmp);
  for (v = 0; v < g->n; v++)
    g->tmp[g->nodes[v].phase]++;
  lua_createtable(L, (int)g->nphases, 0);
  for (p = 0; p < g->nphases; p++) {
    lua_createtable(L, (int)g->tmp[p], 0);
    lua_rawseti(L, -2, (lua_Integer)p + 1);
    g->tmp[p] = 0;
  }
  for (v = 0; v < g->n; v++) {
    p = g->nodes[v].phase;
    lua_rawgeti(L, -1, (lua_Integer)p + 1);
    dag_push_id(L, ids, (uint32_t)v);
    lua_rawseti(L, -2, (lua_Integer)++g->tmp[p]);
    lua_pop(L, 1);
  }
  free(g->tmp); g->tmp = NULL; g->tmp_cap = 0;
  return 1;
}

/* path, length = g:critical_path(): the chain of tasks with the largest total weight */
static int dag_critical_path(lua_State *L) {
  dag *g = dag_check(L, 1);
  uint32_t v, best = DAG_EMPTY;
  int k = 0;
  double length = 0;
  int ids;
  coral_checknargs(L, 1);
  dag_checkvalid(L, g, "critical_path");
  ids = dag_ids(L);
  /* a task without dependencies has the largest rank (weights are >= 0): start at one, so the
   * path is whole even when zero weights make ranks tie */
  for (v = 0; v < g->n; v++)
    if (g->dep_off[v + 1] == g->dep_off[v] &&
        (best == DAG_EMPTY || g->nodes[v].rank > g->nodes[best].rank))
      best = v;
  lua_newtable(L);
  if (best != DAG_EMPTY)
    length = g->nodes[best].rank;
  /* follow the dependent with the largest rank (the first declared of equals) */
  for (v = best; v != DAG_EMPTY; ) {
    uint32_t e, next = DAG_EMPTY;
    dag_push_id(L, ids, v);
    lua_rawseti(L, -2, ++k);
    for (e = g->rdep_off[v]; e < g->rdep_off[v + 1]; e++) {
      uint32_t w = g->rdeps[e];
      if (next == DAG_EMPTY || g->nodes[w].rank > g->nodes[next].rank ||
          (g->nodes[w].rank == g->nodes[next].rank && w < next))
        next = w;
    }
    v = next;
  }
  lua_pushnumber(L, length);
  return 2;
}

/* seconds = g:rank(task): the task's weight plus the longest chain of dependents after it */
static int dag_rank(lua_State *L) {
  dag *g = dag_check(L, 1);
  uint32_t v = dag_checktask(L, g, 2);
  coral_checknargs(L, 2);
  dag_checkvalid(L, g, "rank");
  lua_pushnumber(L, g->nodes[v].rank);
  return 1;
}

/* phase = g:phase(task): 1-based index of the task's phase */
static int dag_phase(lua_State *L) {
  dag *g = dag_check(L, 1);
  uint32_t v = dag_checktask(L, g, 2);
  coral_checknargs(L, 2);
  dag_checkvalid(L, g, "phase");
  lua_pushinteger(L, (lua_Integer)g->nodes[v].phase + 1);
  return 1;
}

/* state = g:state(task): "pending", "ready", "running", "done", "failed" or "skipped" */
static int dag_state(lua_State *L) {
  dag *g = dag_check(L, 1);
  uint32_t v = dag_checktask(L, g, 2);
  coral_checknargs(L, 2);
  lua_pushstring(L, dag_state_names[g->nodes[v].state]);
  return 1;
}

/* counts = g:counts(): { pending=, ready=, running=, done=, failed=, skipped=, total= } */
static int dag_counts(lua_State *L) {
  dag *g = dag_check(L, 1);
  int i;
  coral_checknargs(L, 1);
  lua_createtable(L, 0, ST_COUNT + 1);
  for (i = 0; i < ST_COUNT; i++) {
    lua_pushinteger(L, (lua_Integer)g->count[i]);
    lua_setfield(L, -2, dag_state_names[i]);
  }
  lua_pushinteger(L, (lua_Integer)g->n);
  lua_setfield(L, -2, "total");
  return 1;
}

/* id = g:id(index) */
static int dag_id(lua_State *L) {
  dag *g = dag_check(L, 1);
  uint32_t v;
  luaL_checkinteger(L, 2);
  v = dag_checktask(L, g, 2);
  coral_checknargs(L, 2);
  dag_push_id(L, dag_ids(L), v);
  return 1;
}

/* index = g:index(id): the task's 1-based declaration index, or nil */
static int dag_index(lua_State *L) {
  dag *g = dag_check(L, 1);
  size_t len;
  const char *s = (luaL_checktype(L, 2, LUA_TSTRING), lua_tolstring(L, 2, &len));
  uint32_t v;
  coral_checknargs(L, 2);
  v = dag_find(g, s, len, dag_hash(s, len));
  if (v == DAG_EMPTY)
    lua_pushnil(L);
  else
    lua_pushinteger(L, (lua_Integer)v + 1);
  return 1;
}

/* ids = g:deps(task): the task's dependencies as declared */
static int dag_deps(lua_State *L) {
  dag *g = dag_check(L, 1);
  uint32_t v = dag_checktask(L, g, 2), e;
  int k = 0, ids;
  coral_checknargs(L, 2);
  ids = dag_ids(L);
  lua_createtable(L, (int)(g->dep_off[v + 1] - g->dep_off[v]), 0);
  for (e = g->dep_off[v]; e < g->dep_off[v + 1]; e++) {
    uint32_t d = g->deps[e];
    if (d & DAG_UNRESOLVED) {
      lua_pushstring(L, g->pnames + (d & ~DAG_UNRESOLVED));
    } else {
      dag_push_id(L, ids, d);
    }
    lua_rawseti(L, -2, ++k);
  }
  return 1;
}

/* ids = g:dependents(task): the tasks that depend on it, in declaration order */
static int dag_dependents(lua_State *L) {
  dag *g = dag_check(L, 1);
  uint32_t v = dag_checktask(L, g, 2), e;
  int k = 0, ids;
  coral_checknargs(L, 2);
  dag_checkvalid(L, g, "dependents");
  ids = dag_ids(L);
  lua_createtable(L, (int)(g->rdep_off[v + 1] - g->rdep_off[v]), 0);
  for (e = g->rdep_off[v]; e < g->rdep_off[v + 1]; e++) {
    dag_push_id(L, ids, g->rdeps[e]);
    lua_rawseti(L, -2, ++k);
  }
  return 1;
}

/* }}} */
/* {{{ scheduling */

/* ids = g:ready([n [, "index"]]): up to n (default all) runnable tasks, best first; they
 * become running. With "index", their 1-based indices instead of their ids. */
static int dag_ready(lua_State *L) {
  static const char *const as[] = { "id", "index", NULL };
  dag *g = dag_check(L, 1);
  lua_Integer want = luaL_optinteger(L, 2, (lua_Integer)g->heap_n);
  int index = luaL_checkoption(L, 3, "id", as);
  size_t n, i;
  int ids;
  coral_checknargs(L, 3);
  luaL_argcheck(L, want >= 0, 2, "count must be >= 0");
  dag_checkvalid(L, g, "ready");
  ids = dag_ids(L);
  n = (lua_Unsigned)want < g->heap_n ? (size_t)want : g->heap_n;
  if (n > INT_MAX)
    n = INT_MAX;
  lua_createtable(L, (int)n, 0);
  for (i = 0; i < n; i++) {
    uint32_t v = dag_pop_ready(g);
    dag_set_state(g, v, ST_RUNNING);
    if (index)
      lua_pushinteger(L, (lua_Integer)v + 1);
    else
      dag_push_id(L, ids, v);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* ids = g:peek([n]): the next n tasks ready() would hand out, in that order, left queued. The
 * heap's best is its root; each next best is a child of one already taken, so the candidates
 * are the children of those taken (a frontier of at most n + 1 slots, scanned: n is a handful
 * of workers, the heap may be large). */
#define DAG_PEEK_MAX 64
static int dag_peek(lua_State *L) {
  dag *g = dag_check(L, 1);
  lua_Integer want = luaL_optinteger(L, 2, 1);
  size_t frontier[DAG_PEEK_MAX + 1], nf = 0, n, i;
  int ids;
  coral_checknargs(L, 2);
  luaL_argcheck(L, want >= 0 && want <= DAG_PEEK_MAX, 2, "count must be 0 to 64");
  dag_checkvalid(L, g, "peek");
  ids = dag_ids(L);
  n = (size_t)want < g->heap_n ? (size_t)want : g->heap_n;
  lua_createtable(L, (int)n, 0);
  if (n > 0)
    frontier[nf++] = 0;
  for (i = 0; i < n; i++) {
    size_t best = 0, k, slot;
    for (k = 1; k < nf; k++)
      if (dag_before(&g->heap[frontier[k]], &g->heap[frontier[best]]))
        best = k;
    slot = frontier[best];
    frontier[best] = frontier[--nf];
    dag_push_id(L, ids, g->heap[slot].node);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
    for (k = 2 * slot + 1; k <= 2 * slot + 2 && k < g->heap_n; k++)
      frontier[nf++] = k;
  }
  return 1;
}

static int dag_cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* skipped = g:done(task, ok [, { release = true }])
 * ok: dependents whose last dependency this was become ready. Failed: every pending task that
 * depends on it, directly or not, is skipped and returned as a list in declaration order;
 * with release = true the dependents are released as if it had succeeded (returns nil). */
static int dag_done(lua_State *L) {
  static const char *const known[] = { "release", NULL };
  dag *g = dag_check(L, 1);
  uint32_t v = dag_checktask(L, g, 2), e;
  int ok, release = 0;
  coral_checknargs(L, 4);
  luaL_checktype(L, 3, LUA_TBOOLEAN);
  ok = lua_toboolean(L, 3);
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    dag_checkoptions(L, 4, known);
    lua_getfield(L, 4, "release");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
      luaL_argerror(L, 4, lua_pushfstring(L, "release must be a boolean, got %s", luaL_typename(L, -1)));
    release = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  dag_checkvalid(L, g, "done");
  if (g->nodes[v].state != ST_RUNNING)
    return luaL_error(L, "dag done: task '%s' is %s, not running", dag_name(g, v),
                      dag_state_names[g->nodes[v].state]);
  /* make room first: nothing below may fail halfway through a state change */
  if (!ok && !release)
    GROW(L, g, tmp, tmp_cap, g->n);
  else
    GROW(L, g, heap, heap_cap, g->heap_n + (g->rdep_off[v + 1] - g->rdep_off[v]));
  dag_set_state(g, v, ok ? ST_DONE : ST_FAILED);
  if (ok || release) {
    g->nodes[v].released = !ok;
    for (e = g->rdep_off[v]; e < g->rdep_off[v + 1]; e++) {
      uint32_t w = g->rdeps[e];
      if (--g->nodes[w].missing == 0 && g->nodes[w].state == ST_PENDING)
        dag_push_ready(L, g, w);
    }
    return 0;
  } else {
    /* breadth-first over dependents; a task enters the queue once, when it turns skipped,
     * so the queue ends up holding exactly the skipped tasks after v */
    uint32_t *queue = g->tmp;
    size_t head = 0, tail = 0;
    queue[tail++] = v;
    while (head < tail) {
      uint32_t u = queue[head++];
      for (e = g->rdep_off[u]; e < g->rdep_off[u + 1]; e++) {
        uint32_t w = g->rdeps[e];
        if (g->nodes[w].state == ST_PENDING) {
          dag_set_state(g, w, ST_SKIPPED);
          queue[tail++] = w;
        }
      }
    }
    qsort(queue + 1, tail - 1, sizeof *queue, dag_cmp_u32);
    dag_push_ids(L, dag_ids(L), queue + 1, tail - 1);
    return 1;
  }
}


/* Whether a dependency keeps node w skipped: it failed (not released) or was skipped. */
static uint32_t dag_blocker(const dag *g, uint32_t w) {
  uint32_t e;
  for (e = g->dep_off[w]; e < g->dep_off[w + 1]; e++) {
    const dag_node *d = &g->nodes[g->deps[e]];
    if ((d->state == ST_FAILED && !d->released) || d->state == ST_SKIPPED)
      return g->deps[e];
  }
  return DAG_EMPTY;
}

/* Orders nodes by phase, then declaration: a node after all its dependencies (qsort_r: the
 * graph is the argument, no global). */
static int dag_cmp_phase(const void *a, const void *b, void *arg) {
  const dag *g = arg;
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  uint32_t px = g->nodes[x].phase, py = g->nodes[y].phase;
  if (px != py)
    return (px > py) - (px < py);
  return (x > y) - (x < y);
}

/* ids = g:reset(task)
 * A task that failed (its dependents not released) or was skipped runs again: it is ready
 * (or pending, while a dependency is not done), and so is every task skipped behind it that
 * nothing else keeps skipped. Returns those ids, the task first, then in declaration order.
 * For a live-control retry: the runner's policy decides which task to reset. */
static int dag_reset(lua_State *L) {
  dag *g = dag_check(L, 1);
  uint32_t v = dag_checktask(L, g, 2), e, b;
  uint32_t *queue;
  size_t head = 0, tail = 0, i, kept = 0;
  coral_checknargs(L, 2);
  dag_checkvalid(L, g, "reset");
  if (g->nodes[v].state == ST_FAILED && g->nodes[v].released)
    return luaL_error(L, "dag reset: task '%s' failed and its dependents were released", dag_name(g, v));
  if (g->nodes[v].state != ST_FAILED && g->nodes[v].state != ST_SKIPPED)
    return luaL_error(L, "dag reset: task '%s' is %s, not failed or skipped", dag_name(g, v),
                      dag_state_names[g->nodes[v].state]);
  if (g->nodes[v].state == ST_SKIPPED && (b = dag_blocker(g, v)) != DAG_EMPTY)
    return luaL_error(L, "dag reset: task '%s' is behind %s task '%s'", dag_name(g, v),
                      dag_state_names[g->nodes[b].state], dag_name(g, b));
  /* make room first: nothing below may fail halfway through a state change */
  GROW(L, g, tmp, tmp_cap, g->n);
  GROW(L, g, heap, heap_cap, g->heap_n + g->n);
  queue = g->tmp;
  /* v and the skipped tasks behind it, each once: a task found is pending from then on */
  queue[tail++] = v;
  dag_set_state(g, v, ST_PENDING);
  while (head < tail) {
    uint32_t u = queue[head++];
    for (e = g->rdep_off[u]; e < g->rdep_off[u + 1]; e++) {
      uint32_t w = g->rdeps[e];
      if (g->nodes[w].state == ST_SKIPPED) {
        dag_set_state(g, w, ST_PENDING);
        queue[tail++] = w;
      }
    }
  }
  if (g->nodes[v].missing == 0)
    dag_push_ready(L, g, v);
  /* the rest in topological order, each decided after its dependencies: a task that another
   * failure (or skip) still blocks stays skipped */
  qsort_r(queue + 1, tail - 1, sizeof *queue, dag_cmp_phase, g);
  for (i = 1; i < tail; i++) {
    uint32_t w = queue[i];
    if (dag_blocker(g, w) != DAG_EMPTY) {
      dag_set_state(g, w, ST_SKIPPED);
      continue;
    }
    if (g->nodes[w].missing == 0)
      dag_push_ready(L, g, w);
    queue[1 + kept++] = w;
  }
  qsort(queue + 1, kept, sizeof *queue, dag_cmp_u32);
  dag_push_ids(L, dag_ids(L), queue, kept + 1);
  return 1;
}

/* }}} */
/* {{{ the userdata */

/* g = dag.new() */
static int dag_new(lua_State *L) {
  dag *g;
  coral_checknargs(L, 0);
  g = lua_newuserdatauv(L, sizeof *g, 1);
  memset(g, 0, sizeof *g);
  luaL_setmetatable(L, DAG_META);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  GROW(L, g, dep_off, dep_off_cap, 1);  /* marks the graph open */
  g->sorted = 1;
  g->dep_off[0] = 0;
  return 1;
}

/* g:close(), also __gc and __close: frees the graph; idempotent */
static int dag_gc(lua_State *L) {
  dag *g = luaL_checkudata(L, 1, DAG_META);
  dag_free(g);
  return 0;
}

/* n = #g: number of tasks */
static int dag_len(lua_State *L) {
  dag *g = dag_check(L, 1);
  lua_pushinteger(L, (lua_Integer)g->n);
  return 1;
}

/* s = tostring(g): "coral.dag (N tasks)" */
static int dag_tostring(lua_State *L) {
  dag *g = luaL_checkudata(L, 1, DAG_META);
  if (g->dep_off == NULL)
    lua_pushliteral(L, "coral.dag (closed)");
  else
    lua_pushfstring(L, "coral.dag (%d tasks)", (int)g->n);
  return 1;
}

/* }}} */

static const luaL_Reg dag_functions[] = {
  { "new", dag_new },
  { NULL, NULL }
};

static const luaL_Reg dag_methods[] = {
  { "add", dag_add },
  { "validate", dag_validate },
  { "phases", dag_phases },
  { "critical_path", dag_critical_path },
  { "rank", dag_rank },
  { "phase", dag_phase },
  { "ready", dag_ready },
  { "peek", dag_peek },
  { "done", dag_done },
  { "reset", dag_reset },
  { "state", dag_state },
  { "counts", dag_counts },
  { "id", dag_id },
  { "index", dag_index },
  { "deps", dag_deps },
  { "dependents", dag_dependents },
  { "close", dag_gc },
  { NULL, NULL }
};

static const luaL_Reg dag_metamethods[] = {
  { "__index", NULL },  /* set to the method table */
  { "__gc", dag_gc },
  { "__close", dag_gc },
  { "__len", dag_len },
  { "__tostring", dag_tostring },
  { NULL, NULL }
};

int coral_dag_open(lua_State *L) {
  luaL_newmetatable(L, DAG_META);
  luaL_setfuncs(L, dag_metamethods, 0);
  luaL_newlibtable(L, dag_methods);
  luaL_setfuncs(L, dag_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, dag_functions);
  return 1;
}
