/*
 * spawn.c: "coral.proc", the primitive that starts child processes and supervises them on the
 * host's libuv loop, many at once and without threads.
 *
 * Children are started by clone(CLONE_VM|CLONE_VFORK) and exec, as glibc's posix_spawnp does (no
 * page tables copied, unlike uv_spawn's fork in libuv 1.44; exec errors reported
 * synchronously), but with the child's setup prebuilt: its descriptors placed with dup2 from a
 * ready list, no per-action validation (glibc checks each file action's fd with getrlimit, six
 * calls a task) and only the signal dispositions that matter reset (glibc asks about all 64
 * in the child, over a hundred calls while the parent waits). See "the child" below. Each
 * child leads its own process group, so a kill, a timeout or a close reaches its
 * grandchildren too. One SIGCHLD handle serves every child; it reaps with wait4 on
 * our own pids only, so the children of luv's uv.spawn stay libuv's.
 *
 * Ownership. A Lua userdata (a "box", metatable "coral.proc") points at a malloc'd
 * proc_state. The state outlives the box when the box is closed or collected while the child
 * runs: the group is killed, and the state stays on the live list until wait4 has reaped the
 * child and every uv handle of it has finished closing; then it is freed. A proc with a
 * callback keeps a registry reference to its own box until its exit is delivered, so the loop
 * owns it like a luv handle; a proc without callbacks belongs to whoever holds the box.
 *
 * What must stay true: every pid is reaped exactly once (the live list holds exactly the
 * unreaped ones); every fd the host keeps is close-on-exec, and children get only 0, 1 and 2
 * (closefrom(3) in the child); a group is never signalled after its leader is reaped and its
 * pipes are closed (its id could have been reused).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <luv/luv.h>

#include "coral.h"


#define PROC_MT "coral.proc"
#define PROC_SUP_MT "coral.proc.supervisor"
#define PROC_OUTPUT_MT "coral.proc.output"   /* a child's output file opened ahead (proc.open_output) */
#define PROC_READ_SIZE 65536            /* one read from a child's pipe */
#define PROC_LINE_LIMIT (1u << 20)      /* a longer line is delivered in pieces of this size */
#define PROC_DEFAULT_GRACE_MS 2000      /* from TERM to KILL after a timeout */
#define PROC_NO_CAP UINT64_MAX
#define PROC_CHILD_NULL (-2)            /* child_fd: the child opens /dev/null itself */
#define PROC_SCAN_MAX 4                 /* up to this many live children, reap by asking each */
#define PROC_CHILD_STACK (64 * 1024)    /* the child's stack between clone and exec */
#define PROC_PATH_PROGRAMS 32           /* programs whose place on PATH is remembered */
#define PROC_PATH_DIRS 64               /* at most this many PATH entries before that place */
#define PROC_PATH_SETTLED_NS 2000000000LL  /* a dir changed more recently is not trusted (2 s) */

/* Code that runs in the child between clone and exec, on a stack ASan does not know: not
 * instrumented, so that it leaves no poisoned shadow behind for the next child. */
#if defined(__GNUC__) || defined(__clang__)
#define CORAL_CHILD_CODE __attribute__((no_sanitize_address))
#else
#define CORAL_CHILD_CODE
#endif

/* Registry key of the supervisor's userdata (the address is unique, the value per state). */
static const char PROC_SUP_KEY = 's';

typedef struct proc_sup proc_sup;
typedef struct proc_state proc_state;

/* stdout or stderr of a child, when C reads it through a pipe. */
typedef struct proc_stream {
  unsigned tag;             /* CORAL_HANDLE_TAG: pipe.data points here */
  proc_state *proc;
  uv_pipe_t pipe;
  int open;                 /* pipe initialized and uv_close not called yet */
  int piped;                /* C reads it (on_data, cap or idle_timeout): it can be paused */
  int reading;              /* end of file not seen yet */
  int paused;               /* p:pause_stdout(): not read until p:resume_stdout() */
  int rfd;                  /* read end before uv owns it, else -1 */
  int file;                 /* where C writes what it reads, or -1 */
  int own_file;             /* file is ours to close (not the host's own 1 or 2) */
  int write_errno;          /* first error writing file */
  int lazy;                 /* its file is made at the first byte C reads */
  char *lazy_path;          /* that file's path until then, else NULL */
  int lazy_flags, lazy_nofollow;
  uint64_t written;         /* bytes written to file */
  int on_data;              /* registry ref of the callback, or LUA_NOREF */
  int lines;                /* deliver lines instead of chunks */
  uint64_t cap, passed, dropped;
  char *line;               /* partial line (lines mode), at most PROC_LINE_LIMIT bytes */
  size_t line_len, line_size;
} proc_stream;

/* The write end of a child's stdin (stdin = true, or a string too big for the pipe). */
typedef struct proc_stdin {
  unsigned tag;             /* CORAL_HANDLE_TAG: pipe.data points here */
  proc_state *proc;
  uv_pipe_t pipe;
  int fd;                   /* write end before uv owns it, else -1 */
  int open;                 /* pipe initialized and uv_close not called yet */
  int shutting;             /* uv_shutdown queued: close after the pending writes */
  int user_closed;          /* p:close_stdin() was called */
  int pending;              /* uv_write requests not completed */
} proc_stdin;

/* ref: the string being written; cb: p:write's on_written, or LUA_NOREF */
typedef struct proc_write_req { uv_write_t req; proc_state *proc; int ref, cb; } proc_write_req;
typedef struct proc_shutdown_req { uv_shutdown_t req; proc_state *proc; } proc_shutdown_req;

enum { IN_NULL, IN_DATA, IN_FILE, IN_PIPE };

struct proc_state {
  unsigned tag;             /* CORAL_HANDLE_TAG: timer.data points here */
  proc_sup *sup;
  proc_state *live_prev, *live_next;  /* in sup->live while not reaped */
  proc_state *all_prev, *all_next;    /* in sup->all until freed */
  proc_state *done_next;              /* reaped in this SIGCHLD round */
  pid_t pid;                /* 0 until spawned */
  int reaped;               /* wait4 returned it (or it never started) */
  int delivered;            /* exit handed to on_exit / wait */
  int detached;             /* the box is gone (closed or collected) */
  int keeps_loop;           /* counted in sup->nkeep */
  int pinned;               /* a C frame uses it across a Lua call: do not free */
  int closes;               /* uv_close calls whose callback has not run */
  int status_known, status;
  struct rusage ru;
  uint64_t start_ns, end_ns;
  int in_mode;
  proc_stdin in;
  proc_stream out, err;
  int child_fd[3];          /* what the child gets as 0, 1, 2 (ours to close after spawning) */
  int size_fd[3];           /* [1], [2]: the file the child got as stdout, stderr, kept open until
                             * the exit is delivered, to report its size; else -1 */
  int64_t size[3];          /* those sizes (fstat when the exit is delivered), -1 unknown */
  uv_timer_t timer;
  int timer_open;
  int on_reaped;            /* registry ref or LUA_NOREF: called once the child is reaped */
  uint64_t deadline, idle_ms, grace_ms, last_output;  /* loop milliseconds; 0 = none */
  uint64_t timeout_ms;      /* as given, for the exit information */
  int kill_phase;           /* 0 running, 1 TERM sent, 2 KILL sent */
  const char *fired;        /* "timeout" or "idle" */
  int on_exit, self_ref;    /* registry refs or LUA_NOREF */
  int standby;              /* option standby: a clean exit starts the standby */
};

/* A PATH directory as it was when a program was found after it: a program put there since
 * would come first, and changes its mtime. */
typedef struct proc_dir_stamp {
  dev_t dev;
  ino_t ino;
  struct timespec mtime;
  int missing;              /* it did not exist */
} proc_dir_stamp;

/* Where the PATH search found a program (see "the PATH search" below). */
typedef struct proc_path_program {
  char *name;               /* argv[0], without a slash; NULL: a free slot */
  char *file;               /* the directory it was found in, "/", name */
  size_t ndirs;             /* the PATH entries before that directory */
  proc_dir_stamp *dirs;     /* and their state then */
  unsigned used;
} proc_path_program;

struct proc_sup {
  unsigned tag;             /* CORAL_HANDLE_TAG: sig.data points here */
  lua_State *L;             /* main thread; NULL once the state is closing */
  uv_loop_t *loop;
  uv_signal_t sig;          /* SIGCHLD, started before the first child so none is missed */
  uv_check_t reap;          /* the round a SIGCHLD asked for, run once the poll is over */
  int sig_open;             /* both handles initialized and uv_close not called yet */
  int refs;                 /* the box, the signal and check handles, each proc_state */
  int shut;                 /* coral_spawn_shutdown ran */
  int nlive;                /* children not reaped */
  int nkeep;                /* live children with callbacks: they keep the loop running */
  int nwaiting;             /* p:wait() calls running the loop */
  int norphans;             /* closed or collected, killed, not reaped yet */
  int depth;                /* our Lua callbacks running */
  char *child_stack;        /* mmap'd once (PROC_CHILD_STACK, a guard page below), or NULL */
  proc_state *live, *all;
  char **scratch;           /* argv and envp of the spawn in progress */
  size_t scratch_size;
  char *envbuf;             /* the "NAME=value" strings of its env option, one after another */
  size_t envbuf_size;
  size_t *envkeys;          /* three numbers per name of the env option (proc_build_argv_env) */
  size_t envkeys_size;
  pid_t *known;             /* scratch of proc_scan_adopted: the pids coral.proc and luv own */
  pid_t *adopted;           /* ... and the adopted children found still running */
  size_t known_size, adopted_size, nadopted;
  unsigned scans;           /* proc_scan_adopted calls, so a caller sees that one intervened */
  pid_t self;               /* getpid() when the supervisor was made: its main thread's id (a wrong
                             * one finds no file, and then the full scan looks) */
  char *path_env;           /* the PATH the programs below were found on */
  proc_path_program programs[PROC_PATH_PROGRAMS];
  unsigned path_uses;       /* a clock for the least recently used program */
  int batch;                /* proc.host_batch(true) made the host SCHED_BATCH: children go
                             * back to SCHED_OTHER */
  int standby_spawn;        /* proc.standby: proc.spawn's options, registry ref or LUA_NOREF */
  int standby_started;      /* ... its on_start, and proc.spawn itself (a closure of ours) */
  int spawn_fn;
  int standby_fd;           /* where its record goes, before the start */
  char *standby_record;     /* the record up to its time (malloc'd), and its length */
  size_t standby_record_len;
  int buf_busy;
  char buf[PROC_READ_SIZE];      /* reads go here unless a callback runs a nested loop */
};

typedef struct proc_sup_box { proc_sup *sup; } proc_sup_box;
typedef struct proc_box { proc_state *s; lua_Integer pid; } proc_box;

/* {{{ supervisor and state lifetime */

static void proc_path_forget(proc_path_program *pp);
static void proc_standby_clear(proc_sup *sup);

static void proc_sup_unref(proc_sup *sup) {
  size_t i;
  if (--sup->refs > 0)
    return;
  for (i = 0; i < PROC_PATH_PROGRAMS; i++)
    proc_path_forget(&sup->programs[i]);
  free(sup->path_env);
  free(sup->scratch);
  free(sup->envbuf);
  free(sup->envkeys);
  free(sup->known);
  free(sup->adopted);
  free(sup);
}

/* The SIGCHLD handle keeps the loop running only while someone waits for a child: a child
 * with callbacks, a p:wait(), or a killed orphan that must not stay a zombie (libuv does not
 * even poll a loop that nothing keeps alive). A running child that only a box holds, without
 * callbacks, must not hold the host. */
static void proc_sup_update_ref(proc_sup *sup) {
  if (!sup->sig_open)
    return;
  if (sup->nkeep > 0 || sup->nwaiting > 0 || sup->norphans > 0)
    uv_ref((uv_handle_t *)&sup->sig);
  else
    uv_unref((uv_handle_t *)&sup->sig);
}

static void proc_unkeep(proc_state *s) {
  if (s->keeps_loop) {
    s->keeps_loop = 0;
    s->sup->nkeep--;
    proc_sup_update_ref(s->sup);
  }
}

static void proc_close_fd(int *fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

static void proc_close_child_fds(proc_state *s) {
  int i;
  for (i = 0; i < 3; i++)
    proc_close_fd(&s->child_fd[i]);
}

/* The sizes of the files the child wrote itself, for the exit information: an fstat of the
 * descriptor coral opened them with, so the caller (an output cap) need not stat them by
 * path. Then the descriptors are closed. */
static void proc_take_sizes(proc_state *s) {
  struct stat st;
  int i;
  for (i = 1; i < 3; i++) {
    if (s->size_fd[i] >= 0 && fstat(s->size_fd[i], &st) == 0)
      s->size[i] = (int64_t)st.st_size;
    proc_close_fd(&s->size_fd[i]);
  }
  /* a lazy stream's file holds what C wrote to it (none: not made) */
  if (s->out.lazy) s->size[1] = (int64_t)s->out.written;
  if (s->err.lazy) s->size[2] = (int64_t)s->err.written;
}

static proc_state *proc_new(proc_sup *sup) {
  proc_state *s = calloc(1, sizeof *s);
  if (s == NULL)
    return NULL;
  s->tag = CORAL_HANDLE_TAG;
  s->sup = sup;
  s->reaped = 1;  /* nothing to reap until a child is started */
  s->on_exit = s->self_ref = s->on_reaped = LUA_NOREF;
  s->in.tag = s->out.tag = s->err.tag = CORAL_HANDLE_TAG;
  s->in.proc = s->out.proc = s->err.proc = s;
  s->in.fd = s->out.rfd = s->err.rfd = -1;
  s->out.file = s->err.file = -1;
  s->out.on_data = s->err.on_data = LUA_NOREF;
  s->out.cap = s->err.cap = PROC_NO_CAP;
  s->child_fd[0] = s->child_fd[1] = s->child_fd[2] = -1;
  s->size_fd[0] = s->size_fd[1] = s->size_fd[2] = -1;
  s->size[0] = s->size[1] = s->size[2] = -1;
  s->all_next = sup->all;
  if (sup->all != NULL)
    sup->all->all_prev = s;
  sup->all = s;
  sup->refs++;
  return s;
}

/* Frees the state once nothing can reach it any more: no box, child reaped, handles closed. */
static void proc_release(proc_state *s) {
  proc_sup *sup = s->sup;
  if (!s->detached || !s->reaped || s->closes > 0 || s->pinned > 0)
    return;
  proc_close_child_fds(s);
  proc_close_fd(&s->size_fd[1]);   /* an exit never delivered (the host shut down) */
  proc_close_fd(&s->size_fd[2]);
  proc_close_fd(&s->in.fd);
  proc_close_fd(&s->out.rfd);
  proc_close_fd(&s->err.rfd);
  if (s->out.own_file) proc_close_fd(&s->out.file);
  if (s->err.own_file) proc_close_fd(&s->err.file);
  free(s->out.line);
  free(s->err.line);
  free(s->out.lazy_path);
  free(s->err.lazy_path);
  if (s->all_prev != NULL) s->all_prev->all_next = s->all_next;
  else sup->all = s->all_next;
  if (s->all_next != NULL) s->all_next->all_prev = s->all_prev;
  free(s);
  proc_sup_unref(sup);
}

static void proc_unref(proc_sup *sup, int *ref) {
  if (*ref != LUA_NOREF && *ref != LUA_REFNIL && sup->L != NULL)
    luaL_unref(sup->L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
}

/* Drops every Lua reference the state holds; its own box last. */
static void proc_release_lua(proc_state *s) {
  proc_unref(s->sup, &s->on_exit);
  proc_unref(s->sup, &s->on_reaped);
  proc_unref(s->sup, &s->out.on_data);
  proc_unref(s->sup, &s->err.on_data);
  proc_unref(s->sup, &s->self_ref);
}

static void proc_on_handle_closed(proc_state *s) {
  s->closes--;
  proc_release(s);
}

static void proc_stream_on_closed(uv_handle_t *h) {
  proc_on_handle_closed(((proc_stream *)h->data)->proc);
}

static void proc_stdin_on_closed(uv_handle_t *h) {
  proc_on_handle_closed(((proc_stdin *)h->data)->proc);
}

static void proc_timer_on_closed(uv_handle_t *h) {
  proc_on_handle_closed((proc_state *)h->data);
}

static void proc_stream_close(proc_stream *st) {
  st->reading = 0;
  if (st->open) {
    st->open = 0;
    st->proc->closes++;
    uv_close((uv_handle_t *)&st->pipe, proc_stream_on_closed);
  }
  if (st->own_file)
    proc_close_fd(&st->file);
  st->file = -1;
}

static void proc_stdin_close_now(proc_state *s) {
  if (s->in.open) {
    s->in.open = 0;
    s->closes++;
    uv_close((uv_handle_t *)&s->in.pipe, proc_stdin_on_closed);
  }
}

static void proc_timer_close(proc_state *s) {
  if (s->timer_open) {
    s->timer_open = 0;
    s->closes++;
    uv_close((uv_handle_t *)&s->timer, proc_timer_on_closed);
  }
}

static void proc_close_handles(proc_state *s) {
  proc_stream_close(&s->out);
  proc_stream_close(&s->err);
  proc_stdin_close_now(s);
  proc_timer_close(s);
}

/* The group may still hold processes of ours: the leader is not reaped, or something in the
 * group still holds its pipes. After that the id may belong to someone else. */
static int proc_may_signal(const proc_state *s) {
  return s->pid > 0 && (!s->reaped || s->out.reading || s->err.reading);
}

/* The box is gone (p:close, __gc, __close): kill the group, forget the callbacks, and let the
 * loop reap the child and free the state. */
static void proc_detach(proc_state *s) {
  if (s->detached)
    return;
  s->detached = 1;
  if (!s->delivered && proc_may_signal(s))
    kill(-s->pid, SIGKILL);
  proc_unkeep(s);
  if (!s->reaped) {
    s->sup->norphans++;
    proc_sup_update_ref(s->sup);
  }
  proc_close_handles(s);
  proc_release_lua(s);
  proc_release(s);
}

/* }}} */
/* {{{ exit information */

static void proc_set_number(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static void proc_set_integer(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static void proc_set_errno(lua_State *L, const char *k, int e) {
  if (e != 0) {
    char name[64], text[128];
    lua_pushfstring(L, "%s: %s", coral_errname(e, name, sizeof name), coral_strerror(e, text, sizeof text));
    lua_setfield(L, -2, k);
  }
}

static void proc_push_info(lua_State *L, const proc_state *s) {
  double utime, stime;
  lua_createtable(L, 0, 15);
  proc_set_integer(L, "pid", s->pid);
  if (s->status_known && WIFEXITED(s->status)) {
    proc_set_integer(L, "code", WEXITSTATUS(s->status));
  } else if (s->status_known && WIFSIGNALED(s->status)) {
    int sig = WTERMSIG(s->status);
    const char *abbrev = sigabbrev_np(sig);
    proc_set_integer(L, "code", 128 + sig);  /* as a shell reports it */
    proc_set_integer(L, "signal", sig);
    if (abbrev != NULL) {
      lua_pushfstring(L, "SIG%s", abbrev);
      lua_setfield(L, -2, "signame");
    }
    if (WCOREDUMP(s->status)) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "core");
    }
  }
  if (s->fired != NULL) {
    lua_pushstring(L, s->fired);
    lua_setfield(L, -2, "timed_out");
  }
  if (s->timeout_ms > 0)  /* the limits in force, so a message can say which was exceeded */
    proc_set_number(L, "timeout", (double)s->timeout_ms / 1000);
  if (s->idle_ms > 0)
    proc_set_number(L, "idle_timeout", (double)s->idle_ms / 1000);
  utime = (double)s->ru.ru_utime.tv_sec + (double)s->ru.ru_utime.tv_usec / 1e6;
  stime = (double)s->ru.ru_stime.tv_sec + (double)s->ru.ru_stime.tv_usec / 1e6;
  proc_set_number(L, "duration", (double)(s->end_ns - s->start_ns) / 1e9);
  proc_set_number(L, "utime", utime);
  proc_set_number(L, "stime", stime);
  proc_set_number(L, "cpu_seconds", utime + stime);
  proc_set_integer(L, "max_rss_kb", (lua_Integer)s->ru.ru_maxrss);  /* Linux counts in KiB */
  proc_set_integer(L, "stdout_dropped", (lua_Integer)s->out.dropped);
  proc_set_integer(L, "stderr_dropped", (lua_Integer)s->err.dropped);
  proc_set_errno(L, "stdout_error", s->out.write_errno);
  proc_set_errno(L, "stderr_error", s->err.write_errno);
  if (s->size[1] >= 0)
    proc_set_integer(L, "stdout_size", (lua_Integer)s->size[1]);
  if (s->size[2] >= 0)
    proc_set_integer(L, "stderr_size", (lua_Integer)s->size[2]);
}

/* Hands the exit to on_exit once the child is reaped and its output drained. */
static void proc_check_done(proc_state *s) {
  proc_sup *sup = s->sup;
  lua_State *L = sup->L;
  if (s->delivered || s->detached || !s->reaped || s->out.reading || s->err.reading)
    return;
  s->delivered = 1;
  proc_take_sizes(s);
  s->pinned++;
  proc_timer_close(s);
  proc_stdin_close_now(s);
  if (L != NULL && s->on_exit != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->on_exit);
    proc_push_info(L, s);
    sup->depth++;
    coral_callback(L, 1, 0, 0);
    sup->depth--;
  }
  proc_release_lua(s);
  s->pinned--;
  proc_release(s);
}

/* }}} */
/* {{{ adopted processes */

/* coral is a child subreaper (prctl PR_SET_CHILD_SUBREAPER, set when the supervisor is made):
 * a process whose parent dies is handed to coral, not to init, however it left its task's
 * process group (setsid, setpgid, a double fork). These are coral's "adopted" children: its
 * children that neither coral.proc nor luv started. coral reaps them when they exit (nobody
 * else will) and lists the running ones for the policy that kills them (coral.exec.reaper);
 * those in coral's own process group are left alone: that is where io.popen's, os.execute's
 * and luv's children run, which their own waitpid reaps. */

/* Makes room for n pids in *a (of *size). Returns 0 or ENOMEM. */
static int proc_pids_reserve(pid_t **a, size_t *size, size_t n) {
  pid_t *p;
  if (n <= *size)
    return 0;
  n = n < 64 ? 64 : n * 2;
  p = realloc(*a, n * sizeof *p);
  if (p == NULL)
    return ENOMEM;
  *a = p;
  *size = n;
  return 0;
}

static int proc_pid_cmp(const void *a, const void *b) {
  pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
  return (x > y) - (x < y);
}

typedef struct proc_walk { proc_sup *sup; size_t n; int err; } proc_walk;

/* uv_walk: the children of luv's uv.spawn that libuv has not reaped yet are libuv's. */
static void proc_walk_uv_child(uv_handle_t *h, void *arg) {
  proc_walk *w = arg;
  if (h->type != UV_PROCESS || !uv_is_active(h) || w->err != 0)
    return;
  w->err = proc_pids_reserve(&w->sup->known, &w->sup->known_size, w->n + 1);
  if (w->err == 0)
    w->sup->known[w->n++] = ((uv_process_t *)h)->pid;
}

/* State letter, parent and process group of `pid`, from /proc/<pid>/stat. 0 if it is gone. */
static int proc_stat(pid_t pid, char *state, pid_t *ppid, pid_t *pgrp) {
  char path[64], buf[512];
  const char *p;
  long pp, pg;
  ssize_t n;
  int fd;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
    return 0;
  do
    n = read(fd, buf, sizeof buf - 1);
  while (n < 0 && errno == EINTR);
  close(fd);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  /* "pid (comm) S ppid pgrp ...": comm may hold spaces and parentheses; the last ')' ends it */
  if ((p = strrchr(buf, ')')) == NULL || sscanf(p + 1, " %c %ld %ld", state, &pp, &pg) != 3)
    return 0;
  *ppid = (pid_t)pp;
  *pgrp = (pid_t)pg;
  return 1;
}

/* Adds the pids listed in the file (numbers separated by spaces) to sup->adopted. */
static int proc_read_pids(proc_sup *sup, const char *path, size_t *n) {
  char buf[4096];
  long pid = -1;
  ssize_t got, i;
  int fd, e = 0;
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
    return errno;
  for (;;) {
    got = read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      break;
    for (i = 0; i < got && e == 0; i++) {  /* a number may go on in the next read */
      if (buf[i] >= '0' && buf[i] <= '9') {
        pid = (pid < 0 ? 0 : pid * 10) + (buf[i] - '0');
      } else if (pid >= 0) {
        if ((e = proc_pids_reserve(&sup->adopted, &sup->adopted_size, *n + 1)) == 0)
          sup->adopted[(*n)++] = (pid_t)pid;
        pid = -1;
      }
    }
  }
  if (pid >= 0 && e == 0 && (e = proc_pids_reserve(&sup->adopted, &sup->adopted_size, *n + 1)) == 0)
    sup->adopted[(*n)++] = (pid_t)pid;
  close(fd);
  return e;
}

/* Every child of coral into sup->adopted: /proc/self/task/<tid>/children, or, on a kernel
 * without that file, every process whose parent is coral. */
static int proc_list_children(proc_sup *sup, size_t *n) {
  char path[320];
  struct dirent *d;
  DIR *dir;
  int e = 0, fallback = 0;
  *n = 0;
  if ((dir = opendir("/proc/self/task")) == NULL)
    return errno;
  while (e == 0 && (d = readdir(dir)) != NULL) {
    if (d->d_name[0] < '0' || d->d_name[0] > '9')
      continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/children", d->d_name);
    e = proc_read_pids(sup, path, n);
    if (e == ENOENT && *n == 0) {  /* no such file at all (CONFIG_PROC_CHILDREN off) */
      fallback = 1;
      e = 0;
      break;
    }
    if (e == ENOENT || e == ESRCH)  /* a thread that ended meanwhile */
      e = 0;
  }
  closedir(dir);
  if (!fallback || e != 0)
    return e;
  if ((dir = opendir("/proc")) == NULL)
    return errno;
  while (e == 0 && (d = readdir(dir)) != NULL) {
    pid_t pid = (pid_t)atoi(d->d_name), ppid, pgrp;
    char state;
    if (pid > 0 && proc_stat(pid, &state, &ppid, &pgrp) && ppid == getpid() &&
        (e = proc_pids_reserve(&sup->adopted, &sup->adopted_size, *n + 1)) == 0)
      sup->adopted[(*n)++] = pid;
  }
  closedir(dir);
  return e;
}

/* The usual case, told in one read: every child of coral's main thread is one coral.proc
 * started (known[0 .. nlive), sorted). An orphan is handed to the subreaper's first live
 * thread, the main one, so an adopted process is always listed there; a child of another
 * thread is not adopted. Returns 0 when nothing else is there, 1 when the full scan must look
 * (a stranger, luv's or a popen's child, or no such file on this kernel). */
static int proc_only_known_children(proc_sup *sup, size_t nlive) {
  char path[64];
  size_t i, n = 0;
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)sup->self);
  if (proc_read_pids(sup, path, &n) != 0)
    return 1;
  for (i = 0; i < n; i++)
    if (nlive == 0 || bsearch(&sup->adopted[i], sup->known, nlive, sizeof *sup->known, proc_pid_cmp) == NULL)
      return 1;
  return 0;
}

/* Reaps the adopted children that have exited and leaves the pids of those still running in
 * sup->adopted[0 .. nadopted). No Lua is called. Returns 0 or an errno. */
static int proc_scan_adopted(proc_sup *sup) {
  proc_walk w = { sup, 0, 0 };
  proc_state *s;
  pid_t self, self_pgrp;
  size_t i, n = 0, found = 0, kept = 0, nlive;
  int e;
  sup->scans++;
  sup->nadopted = 0;
  for (s = sup->live; s != NULL; s = s->live_next) {
    if ((e = proc_pids_reserve(&sup->known, &sup->known_size, w.n + 1)) != 0)
      return e;
    sup->known[w.n++] = s->pid;
  }
  nlive = w.n;
  if (w.n > 1)
    qsort(sup->known, w.n, sizeof *sup->known, proc_pid_cmp);
  /* Called when each task ends: four system calls instead of a directory scan and a read per
   * thread, when (nearly always) the task left nothing behind. */
  if (!proc_only_known_children(sup, nlive))
    return 0;
  self = getpid();
  self_pgrp = getpgrp();
  if ((e = proc_list_children(sup, &n)) != 0)
    return e;
  /* Candidates: not coral.proc's, outside coral's group; a zombie is kept as -pid. */
  for (i = 0; i < n; i++) {
    pid_t pid = sup->adopted[i], ppid, pgrp;
    char state;
    if (nlive > 0 && bsearch(&pid, sup->known, nlive, sizeof *sup->known, proc_pid_cmp) != NULL)
      continue;
    if (!proc_stat(pid, &state, &ppid, &pgrp) || ppid != self || pgrp == self_pgrp)
      continue;
    sup->adopted[found++] = state == 'Z' || state == 'X' ? -pid : pid;
  }
  /* Only then luv's children (one that setsid'd, detached = true, is outside coral's group
   * too): walking the loop's handles costs more than all the rest when there is no candidate */
  if (found > 0) {
    w.n = 0;
    uv_walk(sup->loop, proc_walk_uv_child, &w);
    if (w.err != 0)
      return w.err;
    if (w.n > 1)
      qsort(sup->known, w.n, sizeof *sup->known, proc_pid_cmp);
  }
  for (i = 0; i < found; i++) {
    pid_t pid = sup->adopted[i] < 0 ? -sup->adopted[i] : sup->adopted[i];
    if (w.n > 0 && bsearch(&pid, sup->known, w.n, sizeof *sup->known, proc_pid_cmp) != NULL)
      continue;
    if (sup->adopted[i] < 0) {
      int status;
      while (waitpid(pid, &status, WNOHANG) < 0 && errno == EINTR)
        ;
      continue;
    }
    sup->adopted[kept++] = pid;
  }
  sup->nadopted = kept;
  return 0;
}

/* After a SIGCHLD round: a zombie child that is not ours is an adopted one (or luv's, or a
 * popen's, which proc_scan_adopted leaves alone). One peek says whether to look at all. */
static void proc_reap_adopted(proc_sup *sup) {
  siginfo_t si;
  proc_state *s;
  memset(&si, 0, sizeof si);
  if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0)
    return;
  for (s = sup->live; s != NULL; s = s->live_next)
    if (s->pid == si.si_pid)
      return;  /* ours, exited after this round looked: its SIGCHLD brings us back */
  proc_scan_adopted(sup);
}

/* At the host's exit nothing it adopted outlives it: KILL to each, wait for each (KILL
 * cannot be refused), and again for what their deaths handed to coral, a bounded number of
 * rounds (a process that forks faster than it is killed is not chased for ever). */
static void proc_kill_adopted(proc_sup *sup) {
  int round;
  size_t i;
  for (round = 0; round < 32; round++) {
    if (proc_scan_adopted(sup) != 0 || sup->nadopted == 0)
      return;
    for (i = 0; i < sup->nadopted; i++)
      kill(sup->adopted[i], SIGKILL);
    for (i = 0; i < sup->nadopted; i++)
      while (waitpid(sup->adopted[i], NULL, 0) < 0 && errno == EINTR)
        ;
  }
}

/* }}} */
/* {{{ reaping */

/* on_reaped(pid): the child itself has exited and is reaped, its output may not be drained
 * yet. Called once, before on_exit: what the child left running outside its group (and that
 * may hold its pipes, so that on_exit would wait for it) can be dealt with here. */
static void proc_call_reaped(proc_state *s) {
  proc_sup *sup = s->sup;
  lua_State *L = sup->L;
  if (s->on_reaped == LUA_NOREF || s->detached || L == NULL)
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->on_reaped);
  proc_unref(sup, &s->on_reaped);
  lua_pushinteger(L, s->pid);
  sup->depth++;
  coral_callback(L, 1, 0, 0);
  sup->depth--;
}

/* wait4 without blocking (or blocking, at shutdown). Returns 1 if the child is reaped now.
 * When the leader has exited, what is left of its process group (a background job, a daemon
 * that did not setsid) is killed before the leader is reaped: the unreaped zombie still holds
 * the group's id, so the signal cannot reach a process that reused it, and nothing the task
 * started runs on unseen after the task has ended. */
static int proc_reap(proc_state *s, int options) {
  proc_sup *sup = s->sup;
  int status;
  struct rusage ru;
  pid_t r;
  if (options & WNOHANG) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)s->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0)
      return 0;   /* still running */
  }
  kill(-s->pid, SIGKILL);   /* the leader is a zombie (or gone): only its group's others get it */
  do
    r = wait4(s->pid, &status, options, &ru);
  while (r < 0 && errno == EINTR);
  if (r == 0)
    return 0;
  if (r == s->pid) {
    s->status_known = 1;
    s->status = status;
    s->ru = ru;
  }  /* else ECHILD: someone reaped it with waitpid(-1); its status is lost */
  s->end_ns = uv_hrtime();
  s->reaped = 1;
  if (s->live_prev != NULL) s->live_prev->live_next = s->live_next;
  else sup->live = s->live_next;
  if (s->live_next != NULL) s->live_next->live_prev = s->live_prev;
  s->live_prev = s->live_next = NULL;
  sup->nlive--;
  proc_unkeep(s);
  if (s->detached) {
    sup->norphans--;
    proc_sup_update_ref(sup);
  }
  return 1;
}

/* A reaping round: with many children, peek at the next zombie (WNOWAIT leaves it in place)
 * and reap it if it is ours, which costs two syscalls per child however many run. A zombie that
 * is not ours (a luv child, a popen) hides the ones behind it, so then every live child is
 * asked instead. Signals coalesce, so each round reaps all it can; a child that exits after the
 * last peek raises SIGCHLD again. */
static int proc_clean_exit(proc_state *s);
static void proc_standby_fire(proc_sup *sup);

static void proc_sup_on_reap(uv_check_t *h) {
  proc_sup *sup = h->data;
  proc_state *done = NULL, **tail = &done, *s, *next;
  int peek = sup->nlive > PROC_SCAN_MAX;
  uv_check_stop(h);
  /* With few children, asking each costs fewer syscalls than peeking. */
  for (s = peek ? NULL : sup->live; s != NULL; s = next) {
    next = s->live_next;
    if (proc_reap(s, WNOHANG)) {
      s->pinned++;
      *tail = s;
      tail = &s->done_next;
    }
  }
  while (peek && sup->live != NULL) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0)
      break;
    for (s = sup->live; s != NULL && s->pid != si.si_pid; s = s->live_next)
      ;
    if (s == NULL) {
      for (s = sup->live; s != NULL; s = next) {
        next = s->live_next;
        if (proc_reap(s, WNOHANG)) {
          s->pinned++;
          *tail = s;
          tail = &s->done_next;
        }
      }
      break;
    }
    if (!proc_reap(s, WNOHANG))
      break;
    s->pinned++;
    *tail = s;
    tail = &s->done_next;
  }
  /* The standby starts at the first clean exit, before Lua hears of any of these. */
  if (sup->standby_spawn != LUA_NOREF && sup->L != NULL)
    for (s = done; s != NULL; s = s->done_next)
      if (proc_clean_exit(s)) {
        proc_standby_fire(sup);
        break;
      }
  /* Delivering runs Lua, which may close or start other procs: the reaped ones are pinned. */
  for (s = done; s != NULL; s = next) {
    next = s->done_next;
    s->done_next = NULL;
    proc_call_reaped(s);
    proc_check_done(s);
    s->pinned--;
    proc_release(s);
  }
  proc_reap_adopted(sup);
}

/* SIGCHLD: the round runs after the poll, not here. libuv reads its signal pipe again for as
 * long as each read fills its buffer (32 signals), so a round run here, whose deliveries start
 * children that exit at once, kept the loop in one poll for a whole run of short tasks: no
 * timer fired (a task's 1 s timeout after 2.9 s), no handle finished closing (every ended
 * process's state was kept to the end: 1.5 KB a task) and no other descriptor was read. */
static void proc_sup_on_sigchld(uv_signal_t *h, int signum) {
  proc_sup *sup = h->data;
  (void)signum;
  uv_check_start(&sup->reap, proc_sup_on_reap);
}

/* }}} */
/* {{{ output of a child */

static void proc_write_all(proc_stream *st, const char *p, size_t n) {
  while (n > 0 && st->write_errno == 0) {
    ssize_t w = write(st->file, p, n);
    if (w >= 0) {
      p += w;
      n -= (size_t)w;
      st->written += (uint64_t)w;
    } else if (errno == EAGAIN) {  /* the host's own stdout may be non-blocking */
      struct pollfd pfd = { st->file, POLLOUT, 0 };
      poll(&pfd, 1, -1);
    } else if (errno != EINTR) {
      st->write_errno = errno;
    }
  }
}

static int proc_stream_active(const proc_stream *st) {
  return !st->proc->detached && st->on_data != LUA_NOREF && st->proc->sup->L != NULL;
}

/* Calls on_data with the string on top of the stack. */
static void proc_stream_call(proc_stream *st) {
  lua_State *L = st->proc->sup->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->on_data);
  lua_insert(L, -2);
  st->proc->sup->depth++;
  coral_callback(L, 1, 0, 0);
  st->proc->sup->depth--;
}

static void proc_stream_deliver(proc_stream *st, const char *p, size_t n) {
  lua_pushlstring(st->proc->sup->L, p, n);
  proc_stream_call(st);
}

static void proc_stream_flush_line(proc_stream *st) {
  lua_pushlstring(st->proc->sup->L, st->line, st->line_len);
  st->line_len = 0;  /* before the call: a nested loop may add to it */
  proc_stream_call(st);
}

/* Keeps a partial line; a line that reaches PROC_LINE_LIMIT is delivered in pieces. */
static void proc_stream_keep(proc_stream *st, const char *p, size_t n) {
  while (n > 0 && proc_stream_active(st)) {
    size_t room, take;
    if (st->line_size < PROC_LINE_LIMIT && st->line_len + n > st->line_size) {
      size_t size = st->line_size ? st->line_size : 256;
      char *line;
      while (size < st->line_len + n && size < PROC_LINE_LIMIT)
        size *= 2;
      if (size > PROC_LINE_LIMIT)
        size = PROC_LINE_LIMIT;
      line = realloc(st->line, size);
      if (line == NULL) {
        st->dropped += n;
        return;
      }
      st->line = line;
      st->line_size = size;
    }
    room = st->line_size - st->line_len;
    take = n < room ? n : room;
    memcpy(st->line + st->line_len, p, take);
    st->line_len += take;
    p += take;
    n -= take;
    if (st->line_len == PROC_LINE_LIMIT)
      proc_stream_flush_line(st);
  }
}

static int proc_open_file(const char *path, int flags);
static int proc_open_own_file(const char *path, int flags);

/* A lazy stream's file, made when the first byte to write comes: as the spawn would have
 * opened it (nofollow's refusals included). A failure is the stream's write error. */
static void proc_stream_make_file(proc_stream *st) {
  int f = st->lazy_nofollow ? proc_open_own_file(st->lazy_path, st->lazy_flags)
                            : proc_open_file(st->lazy_path, st->lazy_flags);
  free(st->lazy_path);
  st->lazy_path = NULL;
  if (f < 0)
    st->write_errno = errno;
  else
    st->file = f;
}

/* What C read from the pipe: counted against the cap, written to the file, delivered. */
static void proc_stream_take(proc_stream *st, const char *p, size_t n) {
  uint64_t room = st->cap == PROC_NO_CAP ? n : (st->passed >= st->cap ? 0 : st->cap - st->passed);
  size_t take = (uint64_t)n < room ? n : (size_t)room;
  const char *end = p + take;
  st->dropped += n - take;
  st->passed += take;
  if (take == 0)
    return;
  if (st->lazy_path != NULL)
    proc_stream_make_file(st);
  if (st->file >= 0)
    proc_write_all(st, p, take);
  if (!proc_stream_active(st))
    return;
  if (!st->lines) {
    proc_stream_deliver(st, p, take);
    return;
  }
  while (p < end && proc_stream_active(st)) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL) {
      proc_stream_keep(st, p, (size_t)(end - p));
      break;
    }
    if (st->line_len > 0) {
      proc_stream_keep(st, p, (size_t)(nl - p));
      if (proc_stream_active(st))
        proc_stream_flush_line(st);
    } else {
      proc_stream_deliver(st, p, (size_t)(nl - p));
    }
    p = nl + 1;
  }
}

static void proc_stream_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  proc_sup *sup = ((proc_stream *)h->data)->proc->sup;
  (void)suggested;
  if (!sup->buf_busy) {
    sup->buf_busy = 1;
    *buf = uv_buf_init(sup->buf, sizeof sup->buf);
  } else {  /* a callback is running a nested loop while the shared buffer is in use */
    char *p = malloc(PROC_READ_SIZE);
    *buf = uv_buf_init(p, p != NULL ? PROC_READ_SIZE : 0);
  }
}

static void proc_stream_finish(proc_stream *st) {
  proc_state *s = st->proc;
  if (!st->reading)
    return;
  s->pinned++;
  if (st->line_len > 0 && proc_stream_active(st))
    proc_stream_flush_line(st);
  proc_stream_close(st);
  proc_check_done(s);
  s->pinned--;
  proc_release(s);
}

static void proc_stream_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf) {
  proc_stream *st = h->data;
  proc_sup *sup = st->proc->sup;
  int shared = buf->base == sup->buf;
  if (n > 0) {
    st->proc->last_output = uv_now(sup->loop);
    proc_stream_take(st, buf->base, (size_t)n);
  } else if (n < 0 && n != UV_ENOBUFS) {
    proc_stream_finish(st);
  }
  if (shared)
    sup->buf_busy = 0;
  else
    free(buf->base);
}

/* }}} */
/* {{{ stdin of a child */

/* A queued write is done: written, or failed (EPIPE: the child stopped reading, which is its
 * right; ECANCELED: stdin was closed first). p:write's on_written hears which, unless the proc
 * was closed (its callbacks are dropped) or the host shuts down. */
static void proc_stdin_on_written(uv_write_t *req, int status) {
  proc_write_req *w = (proc_write_req *)req;
  proc_state *s = w->proc;
  proc_sup *sup = s->sup;
  lua_State *L = sup->L;
  s->in.pending--;
  proc_unref(sup, &w->ref);
  if (w->cb != LUA_NOREF && L != NULL && !s->detached && !sup->shut) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->cb);
    proc_unref(sup, &w->cb);
    free(w);
    if (status == 0)
      lua_pushnil(L);
    else
      lua_pushstring(L, uv_err_name(status));
    s->pinned++;  /* the callback may close the proc */
    sup->depth++;
    coral_callback(L, 1, 0, 0);
    sup->depth--;
    s->pinned--;
    proc_release(s);
    return;
  }
  proc_unref(sup, &w->cb);
  free(w);
}

static void proc_stdin_on_shutdown(uv_shutdown_t *req, int status) {
  proc_state *s = ((proc_shutdown_req *)req)->proc;
  (void)status;
  free(req);
  proc_stdin_close_now(s);
}

/* Closes stdin after the writes queued so far. */
static void proc_stdin_finish(proc_state *s) {
  proc_shutdown_req *req;
  if (!s->in.open || s->in.shutting)
    return;
  if (s->in.pending == 0 || (req = malloc(sizeof *req)) == NULL) {
    proc_stdin_close_now(s);
    return;
  }
  req->proc = s;
  if (uv_shutdown(&req->req, (uv_stream_t *)&s->in.pipe, proc_stdin_on_shutdown) != 0) {
    free(req);
    proc_stdin_close_now(s);
    return;
  }
  s->in.shutting = 1;
}

/* Writes what the pipe takes now and queues the rest, holding the string at `idx`. With a
 * callback at `cb_idx` (0: none) everything goes through uv_write, so the callback always
 * comes from the loop, never from inside p:write. Returns 0 or a negative libuv error. */
static int proc_stdin_send(lua_State *L, proc_state *s, const char *p, size_t n, int idx, int cb_idx) {
  uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
  proc_write_req *w;
  int r = 0;
  if (cb_idx == 0) {
    r = uv_try_write((uv_stream_t *)&s->in.pipe, &b, 1);
    if (r == UV_EAGAIN)
      r = 0;
    if (r < 0)
      return r;
    if ((size_t)r == n)
      return 0;
  }
  w = malloc(sizeof *w);
  if (w == NULL)
    return UV_ENOMEM;
  w->proc = s;
  lua_pushvalue(L, idx);
  w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  w->cb = LUA_NOREF;
  if (cb_idx != 0) {
    lua_pushvalue(L, cb_idx);
    w->cb = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  b = uv_buf_init((char *)p + r, (unsigned)(n - (size_t)r));
  r = uv_write(&w->req, (uv_stream_t *)&s->in.pipe, &b, 1, proc_stdin_on_written);
  if (r < 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, w->ref);
    if (w->cb != LUA_NOREF)
      luaL_unref(L, LUA_REGISTRYINDEX, w->cb);
    free(w);
    return r;
  }
  s->in.pending++;
  return 0;
}

/* }}} */
/* {{{ timeouts */

/* While coral does not read its stdout (p:pause_stdout), a child waits for coral: it is not
 * idle, so only the wall-clock deadline counts. UINT64_MAX: nothing due. */
static uint64_t proc_next_due(const proc_state *s) {
  uint64_t due = s->deadline ? s->deadline : UINT64_MAX;
  if (s->idle_ms && !s->out.paused && s->last_output + s->idle_ms < due)
    due = s->last_output + s->idle_ms;
  return due;
}

/* Output waiting in a stream's pipe that coral has not read yet. libuv runs due timers before
 * it polls for input: a coral that was not scheduled for longer than the idle timeout (a loaded
 * machine) would otherwise take its own lateness for the child's silence. */
static int proc_stream_unread(proc_stream *st) {
  uv_os_fd_t fd;
  int n = 0;
  if (!st->open || !st->reading || st->paused || uv_fileno((uv_handle_t *)&st->pipe, &fd) != 0)
    return 0;
  return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/* One timer per child for both timeouts: reading output only records the time, and the timer
 * re-arms itself when it finds the child was not idle after all. */
static void proc_on_timer(uv_timer_t *t) {
  proc_state *s = t->data;
  uint64_t now = uv_now(t->loop);
  if (s->kill_phase == 0) {
    uint64_t due = proc_next_due(s);
    if (due == UINT64_MAX)  /* paused, no deadline: p:resume_stdout arms it again */
      return;
    if (now >= due && !(s->deadline && now >= s->deadline) &&
        (proc_stream_unread(&s->out) || proc_stream_unread(&s->err))) {
      s->last_output = now;  /* it did print: coral has yet to read it */
      due = proc_next_due(s);
    }
    if (now < due) {
      uv_timer_start(t, proc_on_timer, due - now, 0);
      return;
    }
    s->fired = s->deadline && now >= s->deadline ? "timeout" : "idle";
    s->kill_phase = 1;
    if (proc_may_signal(s))
      kill(-s->pid, SIGTERM);
    uv_timer_start(t, proc_on_timer, s->grace_ms, 0);
  } else if (s->kill_phase == 1) {
    s->kill_phase = 2;
    if (proc_may_signal(s))
      kill(-s->pid, SIGKILL);
  }
}

/* }}} */
/* {{{ options of proc.spawn */

/* Stack slots of proc.spawn: the options table, one slot per option, then scratch. */
enum {
  OPT_FIRST = 2,
  OPT_ARGV = OPT_FIRST, OPT_CMD, OPT_SHELL, OPT_ENV, OPT_CLEAR_ENV, OPT_CWD, OPT_STDIN,
  OPT_STDOUT, OPT_STDERR, OPT_TIMEOUT, OPT_IDLE_TIMEOUT, OPT_KILL_GRACE, OPT_ON_EXIT, OPT_ON_REAPED,
  OPT_STANDBY, SLOT_OUT_FILE, SLOT_OUT_FN, SLOT_ERR_FILE, SLOT_ERR_FN, SLOT_IN_FILE, SLOT_IN_DATA,
  SLOT_ANCHOR, SLOT_BOX,
  SLOT_LAST = SLOT_BOX
};
static const char *const proc_spawn_options[] = {
  "argv", "cmd", "shell", "env", "clear_env", "cwd", "stdin", "stdout", "stderr", "timeout",
  "idle_timeout", "kill_grace", "on_exit", "on_reaped", "standby", NULL
};

enum { DEST_INHERIT, DEST_NULL, DEST_FILE, DEST_MERGE, DEST_NONE };

typedef struct proc_stream_opts {
  int dest;
  const char *file;
  int append, lines, has_fn;
  int nofollow;             /* the file must be a regular file or absent: not a link, a FIFO... */
  int *opened;              /* the fd of a proc.open_output file, taken by the spawn; or NULL */
  int lazy;                 /* the file is made when the first byte comes, not before the start */
  lua_Integer cap;          /* < 0: no cap */
} proc_stream_opts;

typedef struct proc_spawn_opts {
  int shell, clear_env, has_env;
  const char *cwd, *in_file, *in_data;
  size_t in_len;
  int in_mode;
  proc_stream_opts out, err;
  uint64_t timeout_ms, idle_ms, grace_ms;
  int standby;              /* its clean exit starts the standby (proc.standby) */
} proc_spawn_opts;

/* Raises "bad argument #1 to 'spawn' (<message>)" at the recipe's line. */
static int proc_opt_error(lua_State *L, const char *fmt, ...) {
  va_list ap;
  const char *msg;
  va_start(ap, fmt);
  msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return luaL_argerror(L, 1, msg);
}

static void proc_opt_check(lua_State *L, int slot, int type) {
  if (lua_type(L, slot) != type && !lua_isnil(L, slot))
    proc_opt_error(L, "option '%s': %s expected, got %s", proc_spawn_options[slot - OPT_FIRST],
                   lua_typename(L, type), luaL_typename(L, slot));
}

static uint64_t proc_opt_seconds(lua_State *L, int slot, int zero_ok) {
  double v;
  proc_opt_check(L, slot, LUA_TNUMBER);
  if (lua_isnil(L, slot))
    return 0;
  v = lua_tonumber(L, slot);
  if (!(v > 0 || (zero_ok && v == 0)) || v > 1e9)
    proc_opt_error(L, "option '%s': %s", proc_spawn_options[slot - OPT_FIRST],
                   zero_ok ? "seconds >= 0 expected" : "seconds > 0 expected");
  v *= 1000;
  return v < 1 ? (zero_ok && v == 0 ? 0 : 1) : (uint64_t)(v + 0.5);
}

static void proc_parse_stream(lua_State *L, int slot, proc_stream_opts *o, int file_slot, int fn_slot) {
  const char *name = proc_spawn_options[slot - OPT_FIRST];
  memset(o, 0, sizeof *o);
  o->cap = -1;
  switch (lua_type(L, slot)) {
  case LUA_TNIL:
    o->dest = DEST_INHERIT;
    return;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, slot))
      proc_opt_error(L, "option '%s': true is not a destination (give a path, a function, a table, "
                   "or false to discard)", name);
    o->dest = DEST_NULL;
    return;
  case LUA_TSTRING:
    o->file = lua_tostring(L, slot);
    o->dest = slot == OPT_STDERR && strcmp(o->file, "stdout") == 0 ? DEST_MERGE : DEST_FILE;
    lua_pushvalue(L, slot);
    lua_replace(L, file_slot);
    return;
  case LUA_TFUNCTION:
    o->dest = DEST_NONE;
    o->has_fn = 1;
    lua_pushvalue(L, slot);
    lua_replace(L, fn_slot);
    return;
  case LUA_TTABLE:
    break;
  default:
    proc_opt_error(L, "option '%s': path, function, table or false expected, got %s", name,
                   luaL_typename(L, slot));
  }
  lua_pushnil(L);
  while (lua_next(L, slot)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    int t = lua_type(L, -1);
    if (strcmp(k, "file") == 0 && t == LUA_TSTRING) {
      o->file = lua_tostring(L, -1);
      lua_replace(L, file_slot);
      continue;
    } else if (strcmp(k, "on_data") == 0 && t == LUA_TFUNCTION) {
      o->has_fn = 1;
      lua_replace(L, fn_slot);
      continue;
    } else if (strcmp(k, "append") == 0 && t == LUA_TBOOLEAN) {
      o->append = lua_toboolean(L, -1);
    } else if (strcmp(k, "lines") == 0 && t == LUA_TBOOLEAN) {
      o->lines = lua_toboolean(L, -1);
    } else if (strcmp(k, "nofollow") == 0 && t == LUA_TBOOLEAN) {
      o->nofollow = lua_toboolean(L, -1);
    } else if (strcmp(k, "lazy") == 0 && t == LUA_TBOOLEAN) {
      o->lazy = lua_toboolean(L, -1);
    } else if (strcmp(k, "opened") == 0 && luaL_testudata(L, -1, PROC_OUTPUT_MT) != NULL) {
      /* the options table keeps it alive until the spawn has taken its fd */
      o->opened = (int *)lua_touserdata(L, -1);
      if (*o->opened < 0)
        proc_opt_error(L, "option '%s': the opened file was closed or given to a process already", name);
    } else if (strcmp(k, "cap") == 0 && lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0) {
      o->cap = lua_tointeger(L, -1);
    } else if (strcmp(k, "file") == 0 || strcmp(k, "on_data") == 0 ||
               strcmp(k, "append") == 0 || strcmp(k, "lines") == 0 || strcmp(k, "cap") == 0 ||
               strcmp(k, "nofollow") == 0 || strcmp(k, "opened") == 0 || strcmp(k, "lazy") == 0) {
      const char *want = k[0] == 'f' ? "a string" : strcmp(k, "on_data") == 0 ? "a function" :
                         k[0] == 'c' ? "an integer >= 0" : strcmp(k, "opened") == 0 ? "a file of proc.open_output" :
                         "a boolean";
      luaL_argerror(L, 1, lua_pushfstring(L, "option '%s': '%s' must be %s, got %s", name, k,
                                          want, luaL_typename(L, -1)));
    } else {
      proc_opt_error(L, "option '%s': unknown key '%s'", name, k);
    }
    lua_pop(L, 1);
  }
  if (o->lines && !o->has_fn)
    proc_opt_error(L, "option '%s': lines needs on_data", name);
  if (o->opened != NULL && (o->file == NULL || o->append))
    proc_opt_error(L, "option '%s': opened goes with the file it opened, and not with append", name);
  if (o->lazy && (o->file == NULL || o->opened != NULL))
    proc_opt_error(L, "option '%s': lazy goes with file, and not with opened", name);
  /* Neither file nor on_data: the stream stays the host's (with a cap, C copies it there). */
  o->dest = o->file != NULL ? DEST_FILE : o->has_fn ? DEST_NONE : DEST_INHERIT;
}

static void proc_parse_env(lua_State *L) {
  lua_pushnil(L);
  while (lua_next(L, OPT_ENV)) {
    const char *k;
    int t = lua_type(L, -1);
    if (lua_type(L, -2) != LUA_TSTRING)
      proc_opt_error(L, "option 'env': names must be strings, got %s", luaL_typename(L, -2));
    k = lua_tostring(L, -2);
    if (k[0] == '\0' || strchr(k, '=') != NULL)
      proc_opt_error(L, "option 'env': bad variable name '%s'", k);
    if (t != LUA_TSTRING && t != LUA_TNUMBER && !(t == LUA_TBOOLEAN && !lua_toboolean(L, -1)))
      proc_opt_error(L, "option 'env': value of '%s' must be a string or false (to remove it), got %s",
                     k, t == LUA_TBOOLEAN ? "true" : luaL_typename(L, -1));
    lua_pop(L, 1);
  }
}

/* Checks every option before anything is acquired: a mistake in a recipe raises here, with the
 * caller's file:line (luaL_argerror from the C function the recipe called). */
static void proc_parse_spawn(lua_State *L, proc_spawn_opts *o) {
  memset(o, 0, sizeof *o);
  luaL_checktype(L, 1, LUA_TTABLE);
  coral_checknargs(L, 1);
  lua_settop(L, SLOT_LAST);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    int i;
    if (lua_type(L, -2) != LUA_TSTRING)
      proc_opt_error(L, "option names must be strings, got %s", luaL_typename(L, -2));
    for (i = 0; proc_spawn_options[i] != NULL; i++)
      if (strcmp(proc_spawn_options[i], lua_tostring(L, -2)) == 0)
        break;
    if (proc_spawn_options[i] == NULL)
      proc_opt_error(L, "unknown option '%s'", lua_tostring(L, -2));
    lua_replace(L, OPT_FIRST + i);
  }

  proc_opt_check(L, OPT_SHELL, LUA_TBOOLEAN);
  o->shell = lua_toboolean(L, OPT_SHELL);
  if (o->shell) {
    if (!lua_isnil(L, OPT_ARGV))
      proc_opt_error(L, "option 'argv' cannot be used with shell = true (give the command line as cmd)",
                     NULL, NULL);
    if (lua_type(L, OPT_CMD) != LUA_TSTRING)
      proc_opt_error(L, "shell = true needs cmd, a command line for /bin/sh -c");
  } else {
    lua_Integer i, n;
    if (!lua_isnil(L, OPT_CMD))
      proc_opt_error(L, "option 'cmd' needs shell = true (or give argv, a list, to run without a shell)",
                     NULL, NULL);
    if (lua_isnil(L, OPT_ARGV))
      proc_opt_error(L, "option 'argv' (program and arguments) or cmd with shell = true is required",
                     NULL, NULL);
    proc_opt_check(L, OPT_ARGV, LUA_TTABLE);
    n = (lua_Integer)lua_rawlen(L, OPT_ARGV);
    if (n == 0)
      proc_opt_error(L, "option 'argv' is empty");
    for (i = 1; i <= n; i++) {
      int t = lua_rawgeti(L, OPT_ARGV, i);
      if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_argerror(L, 1, lua_pushfstring(L, "option 'argv': item %I must be a string, got %s",
                                            i, luaL_typename(L, -1)));
      lua_pop(L, 1);
    }
  }
  proc_opt_check(L, OPT_ENV, LUA_TTABLE);
  if (!lua_isnil(L, OPT_ENV)) {
    o->has_env = 1;
    proc_parse_env(L);
  }
  proc_opt_check(L, OPT_CLEAR_ENV, LUA_TBOOLEAN);
  o->clear_env = lua_toboolean(L, OPT_CLEAR_ENV);
  proc_opt_check(L, OPT_CWD, LUA_TSTRING);
  o->cwd = lua_tostring(L, OPT_CWD);

  switch (lua_type(L, OPT_STDIN)) {
  case LUA_TNIL:
    o->in_mode = IN_NULL;
    break;
  case LUA_TBOOLEAN:
    o->in_mode = lua_toboolean(L, OPT_STDIN) ? IN_PIPE : IN_NULL;
    break;
  case LUA_TSTRING:
    lua_pushvalue(L, OPT_STDIN);
    lua_replace(L, SLOT_IN_DATA);
    o->in_data = lua_tolstring(L, OPT_STDIN, &o->in_len);
    o->in_mode = strcmp(o->in_data, "pipe") == 0 ? IN_PIPE : IN_DATA;
    break;
  case LUA_TTABLE:
    lua_pushnil(L);
    while (lua_next(L, OPT_STDIN)) {
      const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
      if (strcmp(k, "file") != 0 && strcmp(k, "data") != 0)
        proc_opt_error(L, "option 'stdin': unknown key '%s'", k);
      if (lua_type(L, -1) != LUA_TSTRING)
        proc_opt_error(L, "option 'stdin': '%s' must be a string, got %s", k, luaL_typename(L, -1));
      if (k[0] == 'f') {
        o->in_file = lua_tostring(L, -1);
        lua_replace(L, SLOT_IN_FILE);
      } else {
        o->in_data = lua_tolstring(L, -1, &o->in_len);
        lua_replace(L, SLOT_IN_DATA);
      }
    }
    if ((o->in_file == NULL) == (o->in_data == NULL))
      proc_opt_error(L, "option 'stdin': a table needs file or data (one of them)");
    o->in_mode = o->in_file != NULL ? IN_FILE : IN_DATA;
    break;
  default:
    proc_opt_error(L, "option 'stdin': string, \"pipe\", {file = path}, {data = s}, true or false "
                 "expected, got %s",
              luaL_typename(L, OPT_STDIN));
  }
  proc_parse_stream(L, OPT_STDOUT, &o->out, SLOT_OUT_FILE, SLOT_OUT_FN);
  proc_parse_stream(L, OPT_STDERR, &o->err, SLOT_ERR_FILE, SLOT_ERR_FN);
  o->timeout_ms = proc_opt_seconds(L, OPT_TIMEOUT, 0);
  o->idle_ms = proc_opt_seconds(L, OPT_IDLE_TIMEOUT, 0);
  o->grace_ms = lua_isnil(L, OPT_KILL_GRACE) ? PROC_DEFAULT_GRACE_MS : proc_opt_seconds(L, OPT_KILL_GRACE, 1);
  proc_opt_check(L, OPT_ON_EXIT, LUA_TFUNCTION);
  proc_opt_check(L, OPT_ON_REAPED, LUA_TFUNCTION);
  proc_opt_check(L, OPT_STANDBY, LUA_TBOOLEAN);
  o->standby = lua_toboolean(L, OPT_STANDBY);
}

/* }}} */
/* {{{ proc.spawn */

static proc_sup *proc_get_sup(lua_State *L) {
  return ((proc_sup_box *)lua_touserdata(L, lua_upvalueindex(1)))->sup;
}

/* Returns nil, "<what>: <ENAME>: <text>", "<ENAME>" for the positive errno `e`; every errno
 * has its name, also those libuv does not know (ENOEXEC). */
static int proc_push_failure(lua_State *L, int e, const char *what) {
  char name[64], text[128];
  coral_errname(e, name, sizeof name);
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s: %s", what, name, coral_strerror(e, text, sizeof text));
  lua_pushstring(L, name);
  return 3;
}

/* A string the spawn needs until the child has exec'd, made from a number or by us. */
static const char *proc_anchor(lua_State *L, int *n) {
  const char *p = lua_tostring(L, -1);
  if (lua_isnil(L, SLOT_ANCHOR)) {
    lua_newtable(L);
    lua_replace(L, SLOT_ANCHOR);
  }
  lua_rawseti(L, SLOT_ANCHOR, ++*n);
  return p;
}

/* Fills sup->scratch with argv then envp (NULL-terminated each); sets *envp. */
/* Makes room in sup->envbuf for `bytes` and in sup->envkeys for `keys` names. 0 or ENOMEM. */
static int proc_env_reserve(proc_sup *sup, size_t bytes, size_t keys) {
  if (bytes > sup->envbuf_size) {
    char *p = realloc(sup->envbuf, bytes * 2);
    if (p == NULL)
      return ENOMEM;
    sup->envbuf = p;
    sup->envbuf_size = bytes * 2;
  }
  if (3 * keys > sup->envkeys_size) {
    size_t *p = realloc(sup->envkeys, 3 * keys * 2 * sizeof *p);
    if (p == NULL)
      return ENOMEM;
    sup->envkeys = p;
    sup->envkeys_size = 3 * keys * 2;
  }
  return 0;
}

static char **proc_build_argv_env(lua_State *L, proc_sup *sup, const proc_spawn_opts *o, char ***envp) {
  size_t argc = o->shell ? 3 : lua_rawlen(L, OPT_ARGV), nenv = 0, need, i, k, nkeys, used;
  int anchored = 0;
  char **e;
  *envp = environ;
  if (o->has_env || o->clear_env) {
    if (!o->clear_env)
      for (e = environ; *e != NULL; e++)
        nenv++;
    if (o->has_env) {
      lua_pushnil(L);
      while (lua_next(L, OPT_ENV)) {
        nenv++;
        lua_pop(L, 1);
      }
    }
  }
  need = argc + 1 + nenv + 1;
  if (need > sup->scratch_size) {
    char **p = realloc(sup->scratch, need * 2 * sizeof *p);
    if (p == NULL)
      luaL_error(L, "spawn: not enough memory");
    sup->scratch = p;
    sup->scratch_size = need * 2;
  }
  if (o->shell) {
    sup->scratch[0] = (char *)"/bin/sh";
    sup->scratch[1] = (char *)"-c";
    sup->scratch[2] = (char *)lua_tostring(L, OPT_CMD);
  } else {
    for (i = 0; i < argc; i++) {
      /* Strings stay alive in argv, which is on the stack; a number's text needs an anchor. */
      if (lua_rawgeti(L, OPT_ARGV, (lua_Integer)i + 1) == LUA_TSTRING) {
        sup->scratch[i] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1);
      } else {
        lua_tostring(L, -1);
        sup->scratch[i] = (char *)proc_anchor(L, &anchored);
      }
    }
  }
  sup->scratch[argc] = NULL;
  if (!o->has_env && !o->clear_env)
    return sup->scratch;

  /* The env option's "NAME=value" strings, made in envbuf (the host's, grown as needed: no Lua
   * string per variable), then environ without the names the option gives. envkeys has three
   * numbers per name: where its string starts in envbuf, the name's length, whether it is
   * passed on (false removes the name only). Pointers into envbuf are taken once it is made. */
  k = argc + 1;
  nkeys = 0;
  used = 0;
  if (o->has_env) {
    lua_pushnil(L);
    while (lua_next(L, OPT_ENV)) {
      size_t klen, vlen = 0;
      const char *key = lua_tolstring(L, -2, &klen), *val = NULL;
      int pass = lua_type(L, -1) != LUA_TBOOLEAN;
      if (pass)
        val = lua_tolstring(L, -1, &vlen);   /* a number's text: on the stack, not in the table */
      if (proc_env_reserve(sup, used + klen + vlen + 2, nkeys + 1) != 0)
        luaL_error(L, "spawn: not enough memory");
      memcpy(sup->envbuf + used, key, klen);
      sup->envbuf[used + klen] = '=';
      memcpy(sup->envbuf + used + klen + 1, val != NULL ? val : "", vlen);
      sup->envbuf[used + klen + 1 + vlen] = '\0';
      sup->envkeys[3 * nkeys] = used;
      sup->envkeys[3 * nkeys + 1] = klen;
      sup->envkeys[3 * nkeys + 2] = (size_t)pass;
      nkeys++;
      used += klen + vlen + 2;
      lua_pop(L, 1);
    }
  }
  if (!o->clear_env) {
    for (e = environ; *e != NULL; e++) {
      const char *eq = strchr(*e, '=');
      int keep = 1;
      for (i = 0; i < nkeys && keep && eq != NULL; i++)
        if (sup->envkeys[3 * i + 1] == (size_t)(eq - *e) &&
            memcmp(sup->envbuf + sup->envkeys[3 * i], *e, (size_t)(eq - *e)) == 0)
          keep = 0;   /* overridden or removed by env */
      if (keep)
        sup->scratch[k++] = *e;
    }
  }
  for (i = 0; i < nkeys; i++)
    if (sup->envkeys[3 * i + 2])
      sup->scratch[k++] = sup->envbuf + sup->envkeys[3 * i];
  sup->scratch[k] = NULL;
  *envp = sup->scratch + argc + 1;
  return sup->scratch;
}

static int proc_open_file(const char *path, int flags) {
  int fd;
  do
    fd = open(path, flags | O_CLOEXEC, 0666);
  while (fd < 0 && errno == EINTR);
  return fd;
}

/* A file of the host's own (nofollow): refused, in the open itself, when it is a symbolic link
 * (ELOOP), anything but a regular file (a directory: EISDIR; a FIFO, a socket, a device:
 * ENXIO) or a file with another name too (a hard link: EMLINK). A check by path before the open
 * could be raced: a link put in its place between the two would be followed. O_NONBLOCK, so
 * that a FIFO put there cannot hold the host in open(2) (it changes nothing for a regular
 * file); truncated only once it is known to be the host's own. Returns the descriptor, or -1
 * with errno. */
static int proc_open_own_file(const char *path, int flags) {
  struct stat st;
  int fd, e = 0;
  /* Nearly always new (an attempt's first open): made here, so it is a regular file of one name. */
  if ((flags & O_CREAT) && (fd = proc_open_file(path, flags | O_EXCL | O_NOFOLLOW)) >= 0)
    return fd;
  if (!(flags & O_CREAT) || errno == EEXIST)
    fd = proc_open_file(path, (flags & ~O_TRUNC) | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0)
    return -1;
  if (fstat(fd, &st) != 0)
    e = errno;
  else if (!S_ISREG(st.st_mode))
    e = ENXIO;
  else if (st.st_nlink > 1)
    e = EMLINK;
  else if ((flags & O_TRUNC) && st.st_size > 0 && ftruncate(fd, 0) != 0)
    e = errno;
  if (e != 0) {
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

/* Decides where a stream goes. C reads it through a pipe when it must see the bytes: a
 * callback, a cap, or an idle timeout; then the file (or the host's own fd) is written by C.
 * Otherwise the child gets the file itself. Returns 0 or the errno of the failed open. */
static int proc_stream_acquire(proc_state *s, proc_stream *st, const proc_stream_opts *o, int idle,
                               int fd) {
  int pipe_fds[2];
  int to_c = o->has_fn || o->cap >= 0 || (idle && o->dest != DEST_MERGE) || o->lazy;
  int flags = O_WRONLY | O_CREAT | (o->append ? O_APPEND : O_TRUNC);   /* a file's open */
  st->cap = o->cap >= 0 ? (uint64_t)o->cap : PROC_NO_CAP;
  st->lines = o->lines;
  if (o->dest == DEST_FILE && o->lazy) {
    /* made by C at the first byte it reads (proc_stream_make_file), as it would be made now */
    if ((st->lazy_path = strdup(o->file)) == NULL)
      return ENOMEM;
    st->lazy = 1;
    st->lazy_flags = flags;
    st->lazy_nofollow = o->nofollow;
    st->own_file = 1;
  } else if (o->dest == DEST_FILE) {
    int f;
    if (o->opened != NULL) {   /* opened ahead: now this child's */
      f = *o->opened;
      if (f < 0)
        return EBADF;            /* the same file given for stdout and stderr: taken by the first */
      *o->opened = -1;
    } else {
      f = o->nofollow ? proc_open_own_file(o->file, flags) : proc_open_file(o->file, flags);
      if (f < 0)
        return errno;
    }
    if (to_c) {
      st->file = f;
      st->own_file = 1;
    } else {
      s->child_fd[fd] = f;
    }
  } else if (o->dest == DEST_NULL && !to_c) {
    s->child_fd[fd] = PROC_CHILD_NULL;
  } else if (o->dest == DEST_INHERIT && to_c) {
    st->file = fd;  /* copy to the host's own stdout or stderr */
  }
  if (to_c) {
    if (pipe2(pipe_fds, O_CLOEXEC) != 0)
      return errno;
    st->piped = 1;
    st->rfd = pipe_fds[0];
    s->child_fd[fd] = pipe_fds[1];
  }
  return 0;
}

/* {{{ the child */

/* What the child does between clone and exec, prepared by the parent: nothing here allocates,
 * and the child writes only c->err. */
typedef struct proc_child {
  char *const *argv, *const *envp;
  const char *path;         /* PATH to search for argv[0] (no slash in it), else NULL */
  const char *file;         /* where the search found argv[0] before, tried first; or NULL */
  volatile int found;       /* the PATH entry whose execve the child tried last (-1: file) */
  volatile int denied;      /* an entry before it refused (EACCES): the search is not remembered */
  const char *cwd;          /* or NULL */
  int fd[3];                /* what it gets as 0, 1, 2: -1 the host's, PROC_CHILD_NULL /dev/null */
  int merge_err;            /* stderr goes where stdout goes */
  int normal_policy;        /* back to SCHED_OTHER (the host is SCHED_BATCH: proc.host_batch) */
  volatile int err;         /* the errno of the step that failed, written by the child */
} proc_child;

/* The dispositions a child gets back to their defaults: what the host changed (it ignores
 * SIGPIPE, catches INT, TERM and HUP, luv watches CHLD), what job control and a terminal send
 * to the host's process group, and the usual signals of scripts (posix_spawn's SETSIGDEF). */
static const int proc_child_defaults[] = {
  SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU, SIGALRM, SIGUSR1,
  SIGUSR2, SIGXFSZ, SIGXCPU, SIGWINCH, SIGCONT
};

/* execvpe without its /bin/sh fallback on ENOEXEC (posix_spawnp has none either) and without
 * malloc: each PATH entry in turn, EACCES remembered, a hard error stops the search. */
CORAL_CHILD_CODE static void proc_child_exec(proc_child *c) {
  const char *file = c->argv[0], *p = c->path;
  char buf[4096];
  size_t flen = strlen(file) + 1;
  int eacces = 0, entry;
  if (p == NULL) {
    execve(file, c->argv, c->envp);
    return;
  }
  if (c->file != NULL) {
    c->found = -1;
    execve(c->file, c->argv, c->envp);   /* gone from there (or refused): the search goes on */
  }
  for (entry = 0;; entry++) {
    const char *end = strchrnul(p, ':');
    size_t dlen = (size_t)(end - p);
    if (dlen + 1 + flen <= sizeof buf) {
      memcpy(buf, p, dlen);
      if (dlen > 0)
        buf[dlen++] = '/';    /* an empty entry is the working directory */
      memcpy(buf + dlen, file, flen);
      c->found = entry;
      execve(buf, c->argv, c->envp);
      switch (errno) {
      case EACCES: eacces = 1; c->denied = 1; break;
      case ENOENT: case ESTALE: case ENOTDIR: case ENODEV: case ETIMEDOUT: break;
      default: return;
      }
    }
    if (*end == '\0')
      break;
    p = end + 1;
  }
  if (eacces)
    errno = EACCES;
}

/* The child, on its own stack, sharing the host's memory while the host waits (CLONE_VFORK)
 * until it execs or exits. Every signal is blocked when it starts (the host blocked them
 * around clone): a handler of the host must not run here, on the host's memory. So the
 * dispositions are reset first, those of signals already pending too (the only ones that could
 * reach it before exec: its pid is known to nobody yet, and its group is its own once
 * setpgid returns), and only then is the mask emptied. */
CORAL_CHILD_CODE static int proc_child_main(void *arg) {
  proc_child *c = arg;
  struct sigaction dfl, old;
  sigset_t set;
  size_t i;
  int sig, fd;
  if (setpgid(0, 0) != 0)
    goto fail;
  if (c->normal_policy) {
    /* from SCHED_BATCH, which it inherited, an unprivileged switch the kernel allows: the
     * program runs as under any other runner */
    struct sched_param normal;
    memset(&normal, 0, sizeof normal);
    if (sched_setscheduler(0, SCHED_OTHER, &normal) != 0)
      goto fail;
  }
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (i = 0; i < sizeof proc_child_defaults / sizeof proc_child_defaults[0]; i++)
    sigaction(proc_child_defaults[i], &dfl, NULL);
  if (sigpending(&set) == 0)
    for (sig = 1; sig < NSIG; sig++)
      if (sigismember(&set, sig) == 1 && sigaction(sig, NULL, &old) == 0 &&
          old.sa_handler != SIG_IGN && old.sa_handler != SIG_DFL)
        sigaction(sig, &dfl, NULL);
  for (i = 0; i < 3; i++) {
    if (i == 2 && c->merge_err) {
      if (dup2(1, 2) < 0)
        goto fail;
    } else if (c->fd[i] == PROC_CHILD_NULL) {
      /* opened here: one kept open by the host would spare an open and a close, but it is a
       * descriptor held for the host's life, which the specs rightly count as a leak */
      if ((fd = open("/dev/null", i == 0 ? O_RDONLY : O_WRONLY)) < 0)
        goto fail;
      if (fd != (int)i) {
        if (dup2(fd, (int)i) < 0)
          goto fail;
        close(fd);
      }
    } else if (c->fd[i] >= 0 && dup2(c->fd[i], (int)i) < 0) {
      goto fail;
    }
  }
  if (c->cwd != NULL && chdir(c->cwd) != 0)
    goto fail;
  /* Only 0, 1 and 2 reach the program, even fds that Lua's io.open left inheritable. */
  closefrom(3);
  sigemptyset(&set);
  sigprocmask(SIG_SETMASK, &set, NULL);
  proc_child_exec(c);
fail:
  c->err = errno != 0 ? errno : ECHILD;
  _exit(127);
}

/* Starts the child c describes; returns 0 and its pid, or the errno of the step that failed
 * (then no child is left: one that failed is reaped here). */
static int proc_child_start(proc_sup *sup, proc_child *c, pid_t *pid) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  sigset_t all, old;
  pid_t p;
  int e;
  if (sup->child_stack == NULL) {
    /* once per host: a guard page below the stack, which grows down on Linux's targets */
    char *m = mmap(NULL, PROC_CHILD_STACK + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (m == MAP_FAILED)
      return errno;
    mprotect(m, page, PROT_NONE);
    sup->child_stack = m;
  }
  c->err = 0;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  p = clone(proc_child_main, sup->child_stack + page + PROC_CHILD_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, c);
  e = p < 0 ? errno : 0;
  sigprocmask(SIG_SETMASK, &old, NULL);
  if (e != 0)
    return e;
  if (c->err != 0) {
    while (waitpid(p, NULL, 0) < 0 && errno == EINTR)
      ;
    return c->err;
  }
  *pid = p;
  return 0;
}

/* }}} */

/* {{{ the PATH search, remembered */

/* A program named without a slash is looked for in each PATH directory in turn, by an execve
 * in the child while the host waits for it (vfork). On this machine /usr/bin is PATH's tenth
 * entry, and the nine execve calls that fail before it cost the host 35-40 us a task, against
 * ~160 us for the whole spawn of /usr/bin/true. So the host remembers where the search found a
 * program, and the child tries there first (and searches as before when that fails).
 * A program put since in a directory before that one must still win, as it would in a shell
 * that had not seen it: each directory before it is checked against what it was then (a stat
 * in the host, before the child starts: a new or removed entry changes its mtime). Not
 * remembered: a search that met a refusal on the way (EACCES: a chmod +x there changes no
 * directory), one through an empty or relative entry (it depends on the task's cwd), and one
 * through a directory changed in the last two seconds (a change within the same tick of the
 * file system's clock would leave its mtime as it was). */

static void proc_path_forget(proc_path_program *pp) {
  free(pp->name);
  free(pp->file);
  free(pp->dirs);
  memset(pp, 0, sizeof *pp);
}

/* The state of PATH entry `dir` (len bytes, no NUL). Returns 0, or -1 when it cannot be
 * known (a relative entry, a stat error other than a missing directory). */
static int proc_dir_stamp_of(const char *dir, size_t len, proc_dir_stamp *st) {
  char buf[4096];
  struct stat sb;
  if (len == 0 || dir[0] != '/' || len >= sizeof buf)
    return -1;
  memcpy(buf, dir, len);
  buf[len] = '\0';
  memset(st, 0, sizeof *st);
  if (stat(buf, &sb) != 0) {
    if (errno != ENOENT && errno != ENOTDIR)
      return -1;
    st->missing = 1;
    return 0;
  }
  st->dev = sb.st_dev;
  st->ino = sb.st_ino;
  st->mtime = sb.st_mtim;
  return 0;
}

static int proc_dir_stamp_same(const proc_dir_stamp *a, const proc_dir_stamp *b) {
  if (a->missing || b->missing)
    return a->missing == b->missing;
  return a->dev == b->dev && a->ino == b->ino && a->mtime.tv_sec == b->mtime.tv_sec &&
         a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* The remembered program `name` on PATH `path`, or NULL. A PATH other than the one the
 * programs were found on makes them all forgotten. */
static proc_path_program *proc_path_find(proc_sup *sup, const char *path, const char *name) {
  size_t i;
  if (sup->path_env == NULL || strcmp(sup->path_env, path) != 0) {
    for (i = 0; i < PROC_PATH_PROGRAMS; i++)
      proc_path_forget(&sup->programs[i]);
    free(sup->path_env);
    sup->path_env = strdup(path);   /* NULL (no memory): nothing is remembered */
    return NULL;
  }
  for (i = 0; i < PROC_PATH_PROGRAMS; i++)
    if (sup->programs[i].name != NULL && strcmp(sup->programs[i].name, name) == 0)
      return &sup->programs[i];
  return NULL;
}

/* Whether PATH `path` names the entry at `entry` (len bytes) before it too. */
static int proc_path_named_before(const char *path, const char *entry, size_t len) {
  const char *p = path;
  while (p < entry) {
    const char *end = strchrnul(p, ':');
    if ((size_t)(end - p) == len && memcmp(p, entry, len) == 0)
      return 1;
    p = end + 1;
  }
  return 0;
}

/* Where the search found `name` before, if every PATH directory before it is as it was then;
 * NULL otherwise (then the child searches). A directory PATH names twice is looked at once. */
static proc_path_program *proc_path_lookup(proc_sup *sup, const char *path, const char *name) {
  proc_path_program *pp = proc_path_find(sup, path, name);
  const char *p = path;
  size_t i;
  if (pp == NULL)
    return NULL;
  for (i = 0; i < pp->ndirs; i++) {
    const char *end = strchrnul(p, ':');
    size_t len = (size_t)(end - p);
    proc_dir_stamp now;
    if (*end == '\0' || (!proc_path_named_before(path, p, len) &&
                          (proc_dir_stamp_of(p, len, &now) != 0 || !proc_dir_stamp_same(&now, &pp->dirs[i])))) {
      proc_path_forget(pp);
      return NULL;
    }
    p = end + 1;
  }
  pp->used = ++sup->path_uses;
  return pp;
}

/* The child found `name` at PATH entry `found` (its execve there succeeded): remembered, with
 * the state of the entries before it, unless one of them cannot be trusted (see above). */
static void proc_path_remember(proc_sup *sup, const char *path, const char *name, int found) {
  proc_path_program *slot = NULL;
  proc_dir_stamp *dirs;
  struct timespec now;
  const char *p = path, *end;
  char *file = NULL, *copy = NULL;
  size_t i, dlen, nlen = strlen(name);
  if (found < 0 || found > PROC_PATH_DIRS || sup->path_env == NULL || strcmp(sup->path_env, path) != 0)
    return;
  dirs = calloc(found > 0 ? (size_t)found : 1, sizeof *dirs);
  if (dirs == NULL)
    return;
  clock_gettime(CLOCK_REALTIME, &now);
  for (i = 0;; i++) {
    end = strchrnul(p, ':');
    if (end == p || p[0] != '/')
      goto out;
    if (i == (size_t)found)
      break;
    if (proc_dir_stamp_of(p, (size_t)(end - p), &dirs[i]) != 0)
      goto out;
    if (!dirs[i].missing &&
        (long long)(now.tv_sec - dirs[i].mtime.tv_sec) * 1000000000LL + (now.tv_nsec - dirs[i].mtime.tv_nsec) <
          PROC_PATH_SETTLED_NS)
      goto out;
    if (*end == '\0')
      goto out;
    p = end + 1;
  }
  dlen = (size_t)(end - p);
  file = malloc(dlen + 1 + nlen + 1);
  copy = strdup(name);
  if (file == NULL || copy == NULL)
    goto out;
  memcpy(file, p, dlen);
  file[dlen] = '/';
  memcpy(file + dlen + 1, name, nlen + 1);
  /* its own slot again, else a free one, else the least recently used */
  for (i = 0; i < PROC_PATH_PROGRAMS && slot == NULL; i++)
    if (sup->programs[i].name != NULL && strcmp(sup->programs[i].name, name) == 0)
      slot = &sup->programs[i];
  for (i = 0; i < PROC_PATH_PROGRAMS && slot == NULL; i++)
    if (sup->programs[i].name == NULL)
      slot = &sup->programs[i];
  if (slot == NULL) {
    slot = &sup->programs[0];
    for (i = 1; i < PROC_PATH_PROGRAMS; i++)
      if (sup->programs[i].used < slot->used)
        slot = &sup->programs[i];
  }
  proc_path_forget(slot);
  slot->name = copy;
  slot->file = file;
  slot->ndirs = (size_t)found;
  slot->dirs = dirs;
  slot->used = ++sup->path_uses;
  return;
out:
  free(file);
  free(copy);
  free(dirs);
}

/* }}} */

/* Why did the start fail: the working directory, or the program? */
static int proc_cwd_error(const char *cwd) {
  struct stat st;
  if (stat(cwd, &st) != 0)
    return errno;
  if (!S_ISDIR(st.st_mode))
    return ENOTDIR;
  if (access(cwd, X_OK) != 0)
    return errno;
  return 0;
}

static void proc_stream_start(proc_state *s, proc_stream *st) {
  uv_loop_t *loop = s->sup->loop;
  if (st->rfd < 0)
    return;
  uv_pipe_init(loop, &st->pipe, 0);
  st->pipe.data = st;
  st->open = 1;
  if (uv_pipe_open(&st->pipe, st->rfd) != 0) {
    proc_close_fd(&st->rfd);
    proc_stream_close(st);
    return;
  }
  st->rfd = -1;
  st->reading = 1;
  uv_read_start((uv_stream_t *)&st->pipe, proc_stream_alloc, proc_stream_read);
}

static int proc_take_ref(lua_State *L, int slot) {
  if (lua_isnil(L, slot))
    return LUA_NOREF;
  lua_pushvalue(L, slot);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* p, err, code = proc.spawn(opts)
 * Starts a child; see docs/proc.md for the options. A recipe mistake raises; an operational
 * failure (no such program, permission, bad cwd or redirection) returns nil, message, code. */
static int proc_spawn(lua_State *L) {
  proc_sup *sup = proc_get_sup(L);
  proc_spawn_opts o;
  proc_box *box;
  proc_state *s;
  char **argv, **envp;
  const char *what = NULL, *path = NULL;
  pid_t pid = 0;
  int e = 0, idle;

  proc_parse_spawn(L, &o);
  if (sup->shut)
    return luaL_error(L, "spawn: the host is shutting down");
  idle = o.idle_ms > 0;

  /* Create closed, then acquire: from here on whatever is opened belongs to s, which the box
   * owns, so an error midway leaves something __gc cleans. */
  box = lua_newuserdatauv(L, sizeof *box, 0);
  box->s = NULL;
  box->pid = 0;
  luaL_setmetatable(L, PROC_MT);
  lua_replace(L, SLOT_BOX);
  s = proc_new(sup);
  if (s == NULL)
    return luaL_error(L, "spawn: not enough memory");
  box->s = s;
  argv = proc_build_argv_env(L, sup, &o, &envp);

  s->in_mode = o.in_mode;
  if (o.in_mode == IN_NULL) {
    s->child_fd[0] = PROC_CHILD_NULL;
  } else if (o.in_mode == IN_FILE) {
    s->child_fd[0] = proc_open_file(o.in_file, O_RDONLY);
    if (s->child_fd[0] < 0) {
      e = errno;
      what = "stdin";
      path = o.in_file;
    }
  } else {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
      e = errno;
      what = "stdin";
      path = "pipe";
    } else {
      s->child_fd[0] = p[0];
      s->in.fd = p[1];
    }
  }
  if (e == 0 && (e = proc_stream_acquire(s, &s->out, &o.out, idle, 1)) != 0) {
    what = "stdout";
    path = o.out.file != NULL ? o.out.file : "pipe";
  }
  if (e == 0 && (e = proc_stream_acquire(s, &s->err, &o.err, idle, 2)) != 0) {
    what = "stderr";
    path = o.err.file != NULL ? o.err.file : "pipe";
  }

  /* A string for stdin goes into the pipe now, before the child runs: the usual small one
   * fits, and then no handle is needed. The write end is non-blocking; what does not fit is
   * written by the loop. */
  if (e == 0 && o.in_mode == IN_DATA && o.in_len > 0) {
    fcntl(s->in.fd, F_SETFL, O_NONBLOCK);
    while (o.in_len > 0) {
      ssize_t w = write(s->in.fd, o.in_data, o.in_len);
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0)
        break;
      o.in_data += w;
      o.in_len -= (size_t)w;
    }
  }
  if (e == 0 && o.in_mode == IN_DATA && o.in_len == 0)
    proc_close_fd(&s->in.fd);

  if (e == 0) {
    proc_child c;
    proc_path_program *known;
    c.argv = argv;
    c.envp = envp;
    c.path = c.file = NULL;
    c.found = -1;
    c.denied = 0;
    if (strchr(argv[0], '/') == NULL && (c.path = getenv("PATH")) == NULL)
      c.path = "/bin:/usr/bin";   /* posix_spawnp's default */
    known = c.path != NULL ? proc_path_lookup(sup, c.path, argv[0]) : NULL;
    if (known != NULL)
      c.file = known->file;
    c.cwd = o.cwd;
    memcpy(c.fd, s->child_fd, sizeof c.fd);
    c.merge_err = o.err.dest == DEST_MERGE;
    c.normal_policy = sup->batch;
    s->start_ns = uv_hrtime();
    e = proc_child_start(sup, &c, &pid);
    /* not where it was (the search found it elsewhere, or nowhere): forgotten; found by the
     * search: remembered for the next child */
    if (known != NULL && (e != 0 || c.found >= 0))
      proc_path_forget(known);
    if (e == 0 && c.path != NULL && c.found >= 0 && !c.denied)
      proc_path_remember(sup, c.path, argv[0], c.found);
    /* a file the child writes itself is kept open until its exit, which reports its size */
    if (e == 0 && o.out.dest == DEST_FILE && !s->out.piped) {
      s->size_fd[1] = s->child_fd[1];
      s->child_fd[1] = -1;
    }
    if (e == 0 && o.err.dest == DEST_FILE && !s->err.piped) {
      s->size_fd[2] = s->child_fd[2];
      s->child_fd[2] = -1;
    }
    proc_close_child_fds(s);
    if (e != 0 && o.cwd != NULL) {
      int ce = proc_cwd_error(o.cwd);
      if (ce != 0) {
        e = ce;
        what = "cwd";
        path = o.cwd;
      }
    }
  }
  if (e != 0) {
    box->s = NULL;
    proc_detach(s);  /* frees it: nothing was started */
    if (what != NULL)
      return proc_push_failure(L, e, lua_pushfstring(L, "spawn %s: %s %s", argv[0], what, path));
    return proc_push_failure(L, e, lua_pushfstring(L, "spawn %s", argv[0]));
  }

  /* Started. From here on nothing may fail: the child is ours to reap. */
  s->pid = pid;
  box->pid = pid;
  s->reaped = 0;
  s->grace_ms = o.grace_ms;
  s->standby = o.standby;
  s->live_next = sup->live;
  if (sup->live != NULL)
    sup->live->live_prev = s;
  sup->live = s;
  sup->nlive++;

  proc_stream_start(s, &s->out);
  proc_stream_start(s, &s->err);
  if (s->in.fd >= 0) {
    uv_pipe_init(sup->loop, &s->in.pipe, 0);
    s->in.pipe.data = &s->in;
    s->in.open = 1;
    if (uv_pipe_open(&s->in.pipe, s->in.fd) != 0) {
      proc_close_fd(&s->in.fd);
      proc_stdin_close_now(s);
    } else {
      s->in.fd = -1;
      if (o.in_mode == IN_DATA) {
        proc_stdin_send(L, s, o.in_data, o.in_len, SLOT_IN_DATA, 0);
        proc_stdin_finish(s);
      }
    }
  }
  if (o.timeout_ms > 0 || idle) {
    uint64_t now;
    uv_update_time(sup->loop);  /* the cached time may be old if Lua ran long */
    now = uv_now(sup->loop);
    s->deadline = o.timeout_ms > 0 ? now + o.timeout_ms : 0;
    s->timeout_ms = o.timeout_ms;
    s->idle_ms = o.idle_ms;
    s->last_output = now;
    uv_timer_init(sup->loop, &s->timer);
    s->timer.data = s;
    s->timer_open = 1;
    uv_timer_start(&s->timer, proc_on_timer, proc_next_due(s) - now, 0);
  }

  s->on_exit = proc_take_ref(L, OPT_ON_EXIT);
  s->on_reaped = proc_take_ref(L, OPT_ON_REAPED);
  s->out.on_data = proc_take_ref(L, SLOT_OUT_FN);
  s->err.on_data = proc_take_ref(L, SLOT_ERR_FN);
  if (s->on_exit != LUA_NOREF || s->on_reaped != LUA_NOREF || s->out.on_data != LUA_NOREF ||
      s->err.on_data != LUA_NOREF) {
    /* Someone will be called back: the loop owns the proc until its exit is delivered. */
    s->self_ref = proc_take_ref(L, SLOT_BOX);
    s->keeps_loop = 1;
    sup->nkeep++;
    proc_sup_update_ref(sup);
  } else {
    /* Only the holder of the box waits for it: its handles must not hold the loop. */
    if (s->out.open) uv_unref((uv_handle_t *)&s->out.pipe);
    if (s->err.open) uv_unref((uv_handle_t *)&s->err.pipe);
    if (s->in.open) uv_unref((uv_handle_t *)&s->in.pipe);
    if (s->timer_open) uv_unref((uv_handle_t *)&s->timer);
  }
  lua_pushvalue(L, SLOT_BOX);
  return 1;
}

static void proc_push_limit(lua_State *L, rlim_t v) {
  if (v == RLIM_INFINITY)
    lua_pushnumber(L, HUGE_VAL);
  else
    lua_pushinteger(L, (lua_Integer)v);
}

/* n, soft, hard = proc.fds() -- file descriptors open in this process, and its limit on them
 * (RLIMIT_NOFILE, math.huge when unlimited): how much room is left to start children */
static int proc_fds(lua_State *L) {
  struct rlimit rl;
  lua_Integer n = 0;
  DIR *d;
  coral_checknargs(L, 0);
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    rl.rlim_cur = rl.rlim_max = RLIM_INFINITY;
  d = opendir("/proc/self/fd");
  if (d != NULL) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
      if (e->d_name[0] != '.')
        n++;
    closedir(d);
    n--;  /* the directory's own descriptor */
  } else {
    /* no /proc (or not one descriptor left to open it): ask each, up to the limit */
    int fd, top = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 65536 ? 65536 : (int)rl.rlim_cur;
    for (fd = 0; fd < top; fd++)
      if (fcntl(fd, F_GETFD) >= 0)
        n++;
  }
  lua_pushinteger(L, n);
  proc_push_limit(L, rl.rlim_cur);
  proc_push_limit(L, rl.rlim_max);
  return 3;
}

/* pids, err, code = proc.adopted() -- reaps the adopted processes that have exited, and
 * returns the pids of those still running (see "adopted processes" above) */
static int proc_adopted(lua_State *L) {
  proc_sup *sup = proc_get_sup(L);
  unsigned scans;
  size_t i;
  int e;
  coral_checknargs(L, 0);
  for (;;) {
    if ((e = proc_scan_adopted(sup)) != 0)
      return proc_push_failure(L, e, "list the children of coral");
    scans = sup->scans;
    /* may collect garbage, whose finalizers could scan again: then the list is stale */
    lua_createtable(L, (int)sup->nadopted, 0);
    if (scans == sup->scans)
      break;
    lua_pop(L, 1);
  }
  for (i = 0; i < sup->nadopted; i++) {
    lua_pushinteger(L, sup->adopted[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* switched = proc.host_batch(on) -- on: the calling (main) thread's scheduling policy becomes
 * SCHED_BATCH when it is SCHED_OTHER, and every child started from then on goes back to
 * SCHED_OTHER before its exec; off: the thread back to SCHED_OTHER, if on switched it. Returns
 * whether it switched (docs/proc.md, "proc.host_batch"). Why: the kernel lets a thread that
 * wakes take the CPU from the task running there when it has slept more; a vfork'd child wakes
 * its parent in the middle of its execve, and the parent, on the same CPU, then runs its own
 * work first while the child waits to finish its exec. A SCHED_BATCH thread does not preempt
 * when it wakes (the tick still shares the CPU), so the child goes on. */
static int proc_host_batch(lua_State *L) {
  proc_sup *sup = proc_get_sup(L);
  int on = lua_toboolean(L, 1);
  struct sched_param param;
  coral_checknargs(L, 1);
  memset(&param, 0, sizeof param);
  /* already so; or a policy the user chose (chrt: SCHED_IDLE, real time), left as it is, and
   * the children's with it */
  if (on == sup->batch || (on && sched_getscheduler(0) != SCHED_OTHER)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (sched_setscheduler(0, on ? SCHED_BATCH : SCHED_OTHER, &param) != 0)
    return proc_push_failure(L, errno, "set the host's scheduling policy");
  sup->batch = on;
  lua_pushboolean(L, 1);
  return 1;
}

/* {{{ the standby */

/* The standby is the start of one child made ready ahead (its proc.spawn options, held as given),
 * which C makes itself at the first clean exit of a child started with the `standby` option,
 * before any Lua runs: a runner's next task starts the moment a worker is free, not after the
 * Lua of the end that freed it. Its record (a journal line, given up to its time) is written
 * first, then the child is started as proc.spawn would start it, then on_start(p) -- or
 * on_start(nil, err, code) -- is called, before the exit's own callbacks. */

static void proc_standby_clear(proc_sup *sup) {
  proc_unref(sup, &sup->standby_spawn);
  proc_unref(sup, &sup->standby_started);
  free(sup->standby_record);
  sup->standby_record = NULL;
  sup->standby_record_len = 0;
}

/* Exited by itself with status 0: not killed by a signal, nor by coral (a timeout, a terminate,
 * a close). */
static int proc_clean_exit(proc_state *s) {
  return s->standby && s->status_known && WIFEXITED(s->status) && WEXITSTATUS(s->status) == 0 &&
         s->kill_phase == 0 && s->fired == NULL && !s->detached;
}

/* Writes all of buf to fd (an O_APPEND file): whole or not at all, a short write cut back off.
 * Returns 0 or the errno. */
static int proc_append_whole(int fd, const char *buf, size_t len) {
  size_t done = 0;
  while (done < len) {
    ssize_t w = write(fd, buf + done, len - done);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      int e = w < 0 ? errno : ENOSPC;
      struct stat st;
      if (done > 0 && fstat(fd, &st) == 0 && st.st_size >= (off_t)done)
        (void)ftruncate(fd, st.st_size - (off_t)done);
      return e;
    }
    done += (size_t)w;
  }
  return 0;
}

static void proc_standby_fire(proc_sup *sup) {
  lua_State *L = sup->L;
  char num[CORAL_JSON_NUMBER], *record = sup->standby_record;
  size_t len = sup->standby_record_len, n;
  int spawn = sup->standby_spawn, started = sup->standby_started, e;
  struct timeval tv;
  sup->standby_spawn = sup->standby_started = LUA_NOREF;
  sup->standby_record = NULL;
  sup->standby_record_len = 0;
  /* the record first: its head, the time (as the journal's writer puts a time), its end */
  gettimeofday(&tv, NULL);
  n = coral_json_number((double)tv.tv_sec + (double)tv.tv_usec / 1e6, num);
  memcpy(record + len, num, n);
  record[len + n] = '}';
  record[len + n + 1] = '\n';
  e = proc_append_whole(sup->standby_fd, record, len + n + 2);
  free(record);
  lua_rawgeti(L, LUA_REGISTRYINDEX, started);
  if (e != 0) {
    char name[64], text[128];
    coral_errname(e, name, sizeof name);
    lua_pushnil(L);
    lua_pushfstring(L, "standby: write its record: %s: %s", name, coral_strerror(e, text, sizeof text));
    lua_pushstring(L, name);
  } else {
    lua_rawgeti(L, LUA_REGISTRYINDEX, sup->spawn_fn);
    lua_rawgeti(L, LUA_REGISTRYINDEX, spawn);
    if (coral_callback(L, 1, 3, 0) < 0) {   /* its options raised: the error stops the loop */
      lua_pop(L, 1);
      goto out;
    }
  }
  coral_callback(L, 3, 0, 0);
out:
  proc_unref(sup, &spawn);
  proc_unref(sup, &started);
}

/* was = proc.standby(spec) -- spec = { spawn = options, fd = integer, record = string,
 * on_start = function }: the standby, replacing any other; nil: none. Returns whether one
 * was set before. */
static int proc_standby(lua_State *L) {
  proc_sup *sup = proc_get_sup(L);
  int was = sup->standby_spawn != LUA_NOREF;
  const char *record;
  size_t len;
  lua_Integer fd;
  coral_checknargs(L, 1);
  if (lua_isnil(L, 1)) {
    proc_standby_clear(sup);
    lua_pushboolean(L, was);
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    if (strcmp(k, "spawn") != 0 && strcmp(k, "fd") != 0 && strcmp(k, "record") != 0 &&
        strcmp(k, "on_start") != 0)
      return luaL_argerror(L, 1, lua_pushfstring(L, "unknown key '%s'", k));
    lua_pop(L, 1);
  }
  if (lua_getfield(L, 1, "spawn") != LUA_TTABLE)
    return luaL_argerror(L, 1, "'spawn' must be proc.spawn's options (a table)");
  if (lua_getfield(L, 1, "on_start") != LUA_TFUNCTION)
    return luaL_argerror(L, 1, "'on_start' must be a function");
  lua_getfield(L, 1, "fd");
  fd = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : -1;
  if (fd < 0 || fd > INT_MAX)
    return luaL_argerror(L, 1, "'fd' must be an open file's descriptor (an integer >= 0)");
  if (lua_getfield(L, 1, "record") != LUA_TSTRING)
    return luaL_argerror(L, 1, "'record' must be a string (a record up to its time)");
  record = lua_tolstring(L, -1, &len);
  proc_standby_clear(sup);
  /* room for the time and the end, added when it fires */
  sup->standby_record = malloc(len + CORAL_JSON_NUMBER + 2);
  if (sup->standby_record == NULL)
    return luaL_error(L, "standby: not enough memory");
  memcpy(sup->standby_record, record, len);
  sup->standby_record_len = len;
  sup->standby_fd = (int)fd;
  lua_pop(L, 2);
  sup->standby_started = luaL_ref(L, LUA_REGISTRYINDEX);   /* on_start */
  sup->standby_spawn = luaL_ref(L, LUA_REGISTRYINDEX);     /* spawn */
  if (sup->spawn_fn == LUA_NOREF) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushcclosure(L, proc_spawn, 2);
    sup->spawn_fn = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_pushboolean(L, was);
  return 1;
}

/* }}} */

/* n = proc.live() -- children started and not reaped yet (closed ones included) */
static int proc_live(lua_State *L) {
  lua_pushinteger(L, proc_get_sup(L)->nlive);
  return 1;
}

/* }}} */
/* {{{ methods of a proc */

static proc_box *proc_check(lua_State *L, int nargs) {
  proc_box *box = luaL_checkudata(L, 1, PROC_MT);
  if (box->s == NULL)
    luaL_error(L, "attempt to use a closed proc");
  coral_checknargs(L, nargs);
  return box;
}

static int proc_check_signal(lua_State *L, int idx) {
  const char *name;
  int i;
  if (lua_isnoneornil(L, idx))
    return SIGTERM;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, idx);
    luaL_argcheck(L, n >= 0 && n < NSIG, idx, "signal number out of range");
    return (int)n;
  }
  name = luaL_checkstring(L, idx);
  for (i = 1; i < NSIG; i++) {
    const char *abbrev = sigabbrev_np(i);
    if (abbrev != NULL && (strcasecmp(abbrev, name) == 0 ||
        (strncasecmp(name, "SIG", 3) == 0 && strcasecmp(abbrev, name + 3) == 0)))
      return i;
  }
  return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
}

/* ok, err, code = p:kill([signal]) -- signal (name like "TERM"/"SIGTERM", or number; default
 * TERM) to the child's whole process group */
static int proc_kill(lua_State *L) {
  proc_box *box = proc_check(L, 2);
  int sig = proc_check_signal(L, 2);
  proc_state *s = box->s;
  if (!proc_may_signal(s))  /* exited: its id may be someone else's by now */
    return proc_push_failure(L, ESRCH, lua_pushfstring(L, "kill %d", (int)s->pid));
  if (kill(-s->pid, sig) != 0)
    return proc_push_failure(L, errno, lua_pushfstring(L, "kill %d", (int)s->pid));
  lua_pushboolean(L, 1);
  return 1;
}

/* ok, err, code = p:terminate([grace]) -- TERM to the group now and KILL after grace seconds
 * (default: the spawn's kill_grace), as a timeout does; grace 0 sends KILL at once */
static int proc_terminate(lua_State *L) {
  proc_box *box = proc_check(L, 2);
  proc_state *s = box->s;
  uint64_t grace = s->grace_ms;
  if (!lua_isnoneornil(L, 2)) {
    double v = luaL_checknumber(L, 2);
    luaL_argcheck(L, v >= 0 && v <= 1e9, 2, "seconds >= 0 expected");
    grace = (uint64_t)(v * 1000 + 0.5);
  }
  if (!proc_may_signal(s))
    return proc_push_failure(L, ESRCH, lua_pushfstring(L, "terminate %d", (int)s->pid));
  if (grace == 0 || s->kill_phase == 2) {
    s->kill_phase = 2;
    kill(-s->pid, SIGKILL);
  } else {
    if (kill(-s->pid, SIGTERM) != 0)
      return proc_push_failure(L, errno, lua_pushfstring(L, "terminate %d", (int)s->pid));
    s->kill_phase = 1;
    if (!s->timer_open) {
      uv_timer_init(s->sup->loop, &s->timer);
      s->timer.data = s;
      s->timer_open = 1;
      if (!s->keeps_loop && s->self_ref == LUA_NOREF)
        uv_unref((uv_handle_t *)&s->timer);
    }
    uv_timer_start(&s->timer, proc_on_timer, grace, 0);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ok, err, code = p:write(data [, on_written]) -- send data to the child's stdin (spawned with
 * stdin = true); what the pipe does not take now is queued and written by the loop, which then
 * calls on_written(nil) (or on_written("EPIPE"), ...) */
static int proc_write(lua_State *L) {
  proc_box *box = proc_check(L, 3);
  proc_state *s = box->s;
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  int cb = lua_isnoneornil(L, 3) ? 0 : 3;
  int r;
  if (cb != 0)
    luaL_checktype(L, 3, LUA_TFUNCTION);
  if (s->in_mode != IN_PIPE)
    return luaL_error(L, "proc write: stdin is not a pipe (spawn with stdin = true)");
  if (s->in.user_closed)
    return luaL_error(L, "proc write: stdin was closed by close_stdin");
  if (!s->in.open || s->in.shutting)
    return proc_push_failure(L, EPIPE, lua_pushfstring(L, "write to %d", (int)s->pid));
  if ((n > 0 || cb != 0) && (r = proc_stdin_send(L, s, p, n, 2, cb)) < 0)
    return proc_push_failure(L, -r, lua_pushfstring(L, "write to %d", (int)s->pid));
  lua_pushboolean(L, 1);
  return 1;
}

/* p:close_stdin() -- end of input for the child, after the data already written */
static int proc_close_stdin(lua_State *L) {
  proc_box *box = proc_check(L, 1);
  if (box->s->in_mode != IN_PIPE)
    return luaL_error(L, "proc close_stdin: stdin is not a pipe (spawn with stdin = true)");
  box->s->in.user_closed = 1;
  proc_stdin_finish(box->s);
  return 0;
}

/* n = p:write_queue_size() -- bytes given to p:write that the child's stdin has not taken yet
 * (what coral holds for it in memory) */
static int proc_write_queue_size(lua_State *L) {
  proc_box *box = proc_check(L, 1);
  proc_state *s = box->s;
  if (s->in_mode != IN_PIPE)
    return luaL_error(L, "proc write_queue_size: stdin is not a pipe (spawn with stdin = true)");
  lua_pushinteger(L, s->in.open ? (lua_Integer)uv_stream_get_write_queue_size((uv_stream_t *)&s->in.pipe) : 0);
  return 1;
}

static proc_stream *proc_check_piped_stdout(lua_State *L, const char *what) {
  proc_box *box = proc_check(L, 1);
  if (!box->s->out.piped)
    luaL_error(L, "proc %s: coral does not read this stdout (give it an on_data)", what);
  return &box->s->out;
}

/* p:pause_stdout() -- stop reading the child's stdout: the pipe fills and the child blocks in
 * its next write, as behind a slow reader; its idle timeout is suspended meanwhile */
static int proc_pause_stdout(lua_State *L) {
  proc_stream *st = proc_check_piped_stdout(L, "pause_stdout");
  if (st->reading && !st->paused) {
    st->paused = 1;
    uv_read_stop((uv_stream_t *)&st->pipe);
  }
  return 0;
}

/* p:resume_stdout() -- read the child's stdout again; its idle time counts from now */
static int proc_resume_stdout(lua_State *L) {
  proc_stream *st = proc_check_piped_stdout(L, "resume_stdout");
  proc_state *s = st->proc;
  uv_loop_t *loop = s->sup->loop;
  if (!st->paused)
    return 0;
  st->paused = 0;
  if (!st->reading)
    return 0;
  uv_read_start((uv_stream_t *)&st->pipe, proc_stream_alloc, proc_stream_read);
  uv_update_time(loop);
  s->last_output = uv_now(loop);
  if (s->timer_open && s->kill_phase == 0 && proc_next_due(s) != UINT64_MAX)
    uv_timer_start(&s->timer, proc_on_timer, proc_next_due(s) - s->last_output, 0);
  return 0;
}

/* info = p:wait() -- runs the loop until the child has exited and its output is drained; an
 * error raised by a callback meanwhile is raised here, as uv.run() would */
static int proc_wait(lua_State *L) {
  proc_box *box = proc_check(L, 1);
  proc_sup *sup = box->s->sup;
  if (sup->depth > 0)
    return luaL_error(L, "proc wait: cannot run the loop inside a proc callback (use on_exit)");
  while (box->s != NULL && !box->s->delivered) {
    int status;
    sup->nwaiting++;
    proc_sup_update_ref(sup);
    lua_pushvalue(L, lua_upvalueindex(2));  /* the host's uv.run */
    lua_pushliteral(L, "once");
    status = lua_pcall(L, 1, 0, 0);
    sup->nwaiting--;
    proc_sup_update_ref(sup);
    if (status != LUA_OK)
      return lua_error(L);
  }
  if (box->s == NULL)
    return luaL_error(L, "proc wait: the proc was closed while waiting");
  proc_push_info(L, box->s);
  return 1;
}

/* p:close() -- also __gc and __close. Kills the group with KILL if it still runs and forgets
 * the callbacks; the child is reaped in the background. Idempotent. */
static int proc_close(lua_State *L) {
  proc_box *box = luaL_checkudata(L, 1, PROC_MT);
  proc_state *s = box->s;
  if (s != NULL) {
    box->s = NULL;
    proc_detach(s);
  }
  return 0;
}

static int proc_tostring(lua_State *L) {
  proc_box *box = luaL_checkudata(L, 1, PROC_MT);
  const char *state = box->s == NULL ? "closed" : box->s->delivered ? "exited" :
                      box->pid == 0 ? "not started" : "running";
  lua_pushfstring(L, "coral.proc (pid %d, %s)", (int)box->pid, state);
  return 1;
}

/* p.pid, and the methods */
static int proc_index(lua_State *L) {
  const char *k = lua_tostring(L, 2);
  if (k != NULL && strcmp(k, "pid") == 0) {
    lua_pushinteger(L, ((proc_box *)luaL_checkudata(L, 1, PROC_MT))->pid);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

/* }}} */
/* {{{ shutdown */

static void proc_sup_on_closed(uv_handle_t *h) {
  proc_sup_unref(h->data);
}

/* Kills every group that may still run, reaps every child (KILL cannot be refused, so the
 * blocking wait4 is short), and closes every handle without calling back into Lua. */
static void proc_sup_shutdown(proc_sup *sup) {
  proc_state *s, *next;
  if (sup->shut)
    return;
  sup->shut = 1;
  for (s = sup->all; s != NULL; s = s->all_next)
    if (!s->delivered && proc_may_signal(s))
      kill(-s->pid, SIGKILL);
  while (sup->live != NULL)
    proc_reap(sup->live, 0);
  proc_kill_adopted(sup);
  for (s = sup->all; s != NULL; s = next) {
    next = s->all_next;
    s->pinned++;
    s->delivered = 1;  /* p:wait() now returns what wait4 said; on_exit is not called */
    proc_close_handles(s);
    proc_release_lua(s);
    s->pinned--;
    proc_release(s);
  }
  if (sup->sig_open) {
    sup->sig_open = 0;
    uv_close((uv_handle_t *)&sup->sig, proc_sup_on_closed);
    uv_close((uv_handle_t *)&sup->reap, proc_sup_on_closed);
  }
}

void coral_spawn_shutdown(lua_State *L) {
  proc_sup_box *b;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &PROC_SUP_KEY);
  b = lua_touserdata(L, -1);
  if (b != NULL && b->sup != NULL)
    proc_sup_shutdown(b->sup);
  lua_pop(L, 1);
}

static int proc_sup_gc(lua_State *L) {
  proc_sup_box *b = lua_touserdata(L, 1);
  proc_sup *sup = b->sup;
  if (sup == NULL)
    return 0;
  b->sup = NULL;
  proc_sup_shutdown(sup);
  proc_standby_clear(sup);
  sup->L = NULL;
  if (sup->child_stack != NULL)
    munmap(sup->child_stack, PROC_CHILD_STACK + (size_t)sysconf(_SC_PAGESIZE));
  proc_sup_unref(sup);
  return 0;
}

/* }}} */
/* {{{ opener */

static proc_sup *proc_sup_new(lua_State *L) {
  proc_sup_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  proc_sup *sup;
  int fd;
  b->sup = NULL;
  luaL_newmetatable(L, PROC_SUP_MT);
  lua_pushcfunction(L, proc_sup_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);

  /* Our pipes must never land on 0, 1 or 2: a host started with one closed gets /dev/null. */
  for (fd = 0; fd < 3; fd++)
    if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
      open("/dev/null", O_RDWR);

  sup = calloc(1, sizeof *sup);
  if (sup == NULL)
    luaL_error(L, "coral.proc: not enough memory");
  sup->tag = CORAL_HANDLE_TAG;
  sup->refs = 1;
  sup->standby_spawn = sup->standby_started = sup->spawn_fn = LUA_NOREF;
  b->sup = sup;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  sup->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  sup->loop = luv_loop(L);
  sup->self = getpid();

  /* Orphaned descendants (a daemon that double-forked, a setsid'd job whose parent exited) come
   * to coral instead of init, so that it can kill and reap them: see "adopted processes". A
   * kernel before 3.4 refuses; then they escape as before, and `coral resume` still finds
   * them by their environment. */
  (void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

  /* Started now, before any child exists, so no exit can come before we watch. */
  uv_signal_init(sup->loop, &sup->sig);
  sup->sig.data = sup;
  uv_signal_start(&sup->sig, proc_sup_on_sigchld, SIGCHLD);
  uv_unref((uv_handle_t *)&sup->sig);
  uv_check_init(sup->loop, &sup->reap);  /* never keeps the loop: the signal handle does */
  sup->reap.data = sup;
  uv_unref((uv_handle_t *)&sup->reap);
  sup->sig_open = 1;
  sup->refs += 2;
  return sup;
}

/* {{{ output files opened ahead */

/* proc.open_output(path): the file a child will write its output to, opened now as the
 * `nofollow` stream option opens it (made new with O_EXCL, or else a regular file of one name,
 * truncated), so that the spawn that takes it (stream option `opened`) need not. A runner opens
 * the files of the task next in line while its workers are busy: an open that creates a file
 * costs tens of microseconds, more in a crowded directory, which would otherwise come between
 * one task's end and the next task's start. Returns the file, or nil, a message and the errno
 * name. The descriptor is close-on-exec; it is closed by f:close(), at collection, or in the
 * child's spawn, which owns it from then on. */
static int proc_open_output(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int *fd;
  coral_checknargs(L, 1);
  fd = lua_newuserdatauv(L, sizeof *fd, 0);
  *fd = -1;
  luaL_setmetatable(L, PROC_OUTPUT_MT);
  *fd = proc_open_own_file(path, O_WRONLY | O_CREAT | O_TRUNC);
  if (*fd < 0)
    return proc_push_failure(L, errno, lua_pushfstring(L, "open %s", path));
  return 1;
}

static int proc_output_close(lua_State *L) {
  int *fd = luaL_checkudata(L, 1, PROC_OUTPUT_MT);
  proc_close_fd(fd);
  return 0;
}

static int proc_output_tostring(lua_State *L) {
  int *fd = luaL_checkudata(L, 1, PROC_OUTPUT_MT);
  if (*fd < 0)
    lua_pushliteral(L, "coral.proc.output (closed)");
  else
    lua_pushfstring(L, "coral.proc.output (fd %d)", *fd);
  return 1;
}

static const luaL_Reg proc_output_metamethods[] = {
  { "__gc", proc_output_close },
  { "__close", proc_output_close },
  { "__tostring", proc_output_tostring },
  { NULL, NULL }
};

/* }}} */

static const luaL_Reg proc_functions[] = {
  { "spawn", proc_spawn },
  { "open_output", proc_open_output },
  { "live", proc_live },
  { "host_batch", proc_host_batch },
  { "standby", proc_standby },
  { "fds", proc_fds },
  { "adopted", proc_adopted },
  { NULL, NULL }
};

static const luaL_Reg proc_methods[] = {
  { "kill", proc_kill },
  { "terminate", proc_terminate },
  { "write", proc_write },
  { "close_stdin", proc_close_stdin },
  { "write_queue_size", proc_write_queue_size },
  { "pause_stdout", proc_pause_stdout },
  { "resume_stdout", proc_resume_stdout },
  { "wait", proc_wait },
  { "close", proc_close },
  { NULL, NULL }
};

static const luaL_Reg proc_metamethods[] = {
  { "__gc", proc_close },
  { "__close", proc_close },
  { "__tostring", proc_tostring },
  { NULL, NULL }
};

int coral_spawn_open(lua_State *L) {
  /* One supervisor per state, even if the module is loaded again. */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PROC_SUP_KEY) == LUA_TNIL) {
    lua_pop(L, 1);
    proc_sup_new(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PROC_SUP_KEY);
  }
  /* upvalues of every function: the supervisor, and the host's uv.run (for p:wait) */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "luv");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "run");
  lua_remove(L, -2);

  if (luaL_newmetatable(L, PROC_MT)) {
    luaL_setfuncs(L, proc_metamethods, 0);
    lua_createtable(L, 0, 9);
    lua_pushvalue(L, -4);
    lua_pushvalue(L, -4);
    luaL_setfuncs(L, proc_methods, 2);
    lua_pushcclosure(L, proc_index, 1);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, PROC_OUTPUT_MT)) {
    luaL_setfuncs(L, proc_output_metamethods, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, proc_output_close);
    lua_setfield(L, -2, "close");
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);

  luaL_newlibtable(L, proc_functions);
  lua_pushvalue(L, -3);
  lua_pushvalue(L, -3);
  luaL_setfuncs(L, proc_functions, 2);
  return 1;
}

/* }}} */
