/*
 * What the host's C files share: the module openers and the host services they use.
 *
 * One C file per primitive, each exporting one opener (coral_<x>_open), gathered by core.c
 * into package.preload. C is mechanism; policy lives in lua/coral/.
 */
#ifndef CORAL_H
#define CORAL_H

#include <string.h>

#include <lua.h>
#include <uv.h>

/* Every uv handle that coral's C code owns points handle->data at a struct whose first
 * member is this tag. luv's own handles start with a small registry reference instead, so
 * the host's walk over the loop (uv.walk, shutdown) can tell the two apart. */
#define CORAL_HANDLE_TAG 0x43524c48u

/* Module openers: "coral.host" (core.c), "coral.readline" (repl.c), "coral.proc" (spawn.c),
 * "coral.dag" (dag.c), "coral.coord" (coord.c), "coral.jsonw" (jsonw.c), "coral.yamlw" (yamlw.c). */
int coral_host_open(lua_State *L);
int coral_readline_open(lua_State *L);
int coral_spawn_open(lua_State *L);
int coral_dag_open(lua_State *L);
int coral_coord_open(lua_State *L);
int coral_jsonw_open(lua_State *L);

/* A finite number as coral.jsonw writes it (jsonw.c), at buf[0..CORAL_JSON_NUMBER): returns
 * its length. coral.proc's standby writes a journal record's time with it. */
#define CORAL_JSON_NUMBER 40
size_t coral_json_number(double x, char *buf);
int coral_yamlw_open(lua_State *L);

/* Set up a fresh state: standard libraries, luv on `loop`, cjson, coral's C modules and the
 * searcher for the Lua files compiled into the binary. `lua_root` (may be NULL) is a directory
 * whose lua/ and recipes/ take precedence over the embedded copies (the --dev mode). */
void coral_open_state(lua_State *L, uv_loop_t *loop, const char *lua_root);

/* Call the function below `nargs` arguments on the stack from an event-loop callback. An
 * error does not unwind through libuv: it is kept, the loop is stopped, and uv.run() raises
 * it in the code that ran the loop. Returns the number of results or a negative status. */
int coral_callback(lua_State *L, int nargs, int nresults, int flags);

/* Message handler for lua_pcall: adds a traceback to string errors. */
int coral_traceback(lua_State *L);

/* Stop everything the primitives started (children killed and reaped, their handles closed),
 * give SIGINT, SIGTERM and SIGHUP their default action back if this state caught them, close
 * every other handle of the loop, and run it until nothing is left. Called before lua_close
 * and by os.exit, so no child outlives the host. */
void coral_shutdown(lua_State *L);

/* The signal (SIGINT, SIGTERM, SIGHUP) that interrupted the host, or 0 (core.c). */
int coral_interrupted(void);

/* The signal the host caught that has not been raised in Lua yet, or 0 (core.c). The hook
 * raises "interrupted by SIG..." at the next Lua instruction; C code that waits without
 * running Lua (coord's lock waits) checks this to give up at once instead. Unlike
 * coral_interrupted() it goes back to 0 once raised: Lua code that caught the error (the
 * REPL) can wait again. */
int coral_interrupt_pending(void);

/* "SIGINT", "SIGTERM" or "SIGHUP" (core.c). */
const char *coral_signal_name(int signo);

/* Raises "bad argument #<max + 1> to 'f' (no more than <max> arguments expected, got <n>)"
 * when the function was called with more than `max` values (util.c). `max` counts stack
 * slots, the object of a method call included; the message counts as luaL_argerror does,
 * without it: "no arguments expected, got 1", "no more than 1 argument expected, got 2".
 * Returns the number of values. */
int coral_checknargs(lua_State *L, int max);

/* The name ("ENOEXEC") and the text ("exec format error") of the positive errno `e`, written
 * to buf: libuv's where libuv knows the error, glibc's otherwise, so that no failure reads
 * "Unknown system error" (util.c). Return buf. */
const char *coral_errname(int e, char *buf, size_t size);
const char *coral_strerror(int e, char *buf, size_t size);

/* A text being built in a full userdata at stack index `slot`, which a bigger one replaces as
 * it grows (util.c): an error anywhere leaves garbage for the collector, nothing to free by
 * hand. coral.jsonw and coral.yamlw write their texts so. */
typedef struct coral_text {
  lua_State *L;
  int slot;
  char *p;
  size_t len, cap;
} coral_text;

/* Room for `more` bytes: a userdata twice as big (or as big as needed) at t->slot. */
void coral_text_grow(coral_text *t, size_t more);

/* Starts a text in the buffer the last call of the running C function kept as its upvalue 1
 * (coral_text_closure), pushed as a new stack slot and taken out of the upvalue while this
 * call writes in it (a nested call gets a buffer of its own). */
void coral_text_begin(coral_text *t, lua_State *L);

/* Pushes the text as a string, and keeps its buffer for the next call as upvalue 1 of the
 * running C function when it is at most `keep` bytes (a big one is not held for the host's
 * life). */
void coral_text_push(coral_text *t, size_t keep);

/* Pushes `fn` as a closure whose upvalue 1 is a first buffer for coral_text_begin. */
void coral_text_closure(lua_State *L, lua_CFunction fn);

static inline void coral_text_reserve(coral_text *t, size_t more) {
  if (t->len + more > t->cap)
    coral_text_grow(t, more);
}

static inline void coral_text_put(coral_text *t, const char *s, size_t n) {
  coral_text_reserve(t, n);
  memcpy(t->p + t->len, s, n);
  t->len += n;
}

static inline void coral_text_putc(coral_text *t, char c) {
  coral_text_reserve(t, 1);
  t->p[t->len++] = c;
}

/* Kill and reap every child that spawn.c still supervises (spawn.c). */
void coral_spawn_shutdown(lua_State *L);

#endif
