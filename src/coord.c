/*
 * coord.c: module "coral.coord", file-locked writes to the files that agents and coral share
 * (scratchpad.md, activity_tracker.md, .coral/project_state.yaml).
 *
 *   coord.append(path, text [, opts])   one record, whole or not at all
 *   coord.update(path, fn [, opts])     read-modify-write, replaced by rename
 *   coord.read(path [, opts])           the whole file under a shared lock
 *   coord.lock(path [, opts])           a "coral.lock" handle for longer critical sections
 *
 * What must stay true:
 * - Every operation on `path` locks a sidecar file, never `path` itself: update replaces
 *   path's inode by rename, so a lock on the old inode would exclude nobody. The sidecar is
 *   `<path>.lock`, or opts.lock (coral keeps its sidecars under .coral/locks/, out of the
 *   user's tree). It is never removed (removing a lock file races with its next user); if
 *   somebody removes it anyway, acquiring notices the inode changed and starts over.
 * - Links are never followed at the last component: path, its lock file and update's temp
 *   file are opened from their directory's fd with O_NOFOLLOW, so a symlink planted where a
 *   coordination file belongs is refused (ELOOP, "... is a symbolic link") instead of being
 *   written through, and a dangling one cannot make create-or-open loop. With opts.root,
 *   every directory below root is opened the same way (openat, O_NOFOLLOW|O_DIRECTORY) from
 *   its parent's fd: a `.coral` that is a link, or a file, is refused, and a link swapped in
 *   between two calls is not followed either. root itself is the caller's choice and is
 *   opened as named.
 * - Locks are fcntl locks: open file description locks (F_OFD_SETLK) where the kernel has
 *   them, classic process locks (F_SETLK) otherwise. Both work on NFS. Lock waits poll with
 *   F_OFD_SETLK and short randomised exponential sleeps up to a deadline: a blocking
 *   F_SETLKW has no timeout, and interrupting it needs a signal (process-wide, and the host's
 *   libuv loop owns signals) or a helper thread that cannot be cancelled cleanly.
 * - Every loop ends: the lock wait at its deadline, the others (create-or-open racing with a
 *   remover, a lock file replaced under us, temp names taken, EINTR) after a fixed number of
 *   rounds. Each gives up as soon as the host has caught SIGINT, SIGTERM or SIGHUP (the
 *   signal also cuts a sleep short), before taking the lock and writing anything: Ctrl-C on
 *   `coral note` blocked by another holder must end it now, not once the lock is free.
 * - A lock taken by this Lua state (coord.lock, or update while its function runs) is found
 *   again by the lock file's device and inode, so append/update/read of the same path inside
 *   it reuse it instead of waiting for themselves until the timeout.
 * - Every fd is O_CLOEXEC. Every resource lives in a userdata that is closed by __close, so
 *   an error raised midway (a failing update function, out of memory) releases it: the lock
 *   and its directory ("coral.lock") and the scratch state of one call ("coral.coord.op":
 *   fds, temp file).
 * - Modes are applied exactly (fchmod), not through the umask of whichever agent happened
 *   to create a file: coordination files must stay readable by every agent.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "coral.h"

#define COORD_LOCK_MT "coral.lock"
#define COORD_OP_MT "coral.coord.op"
#define COORD_LOCK_SUFFIX ".lock"
#define COORD_DEFAULT_TIMEOUT 30.0     /* seconds */
#define COORD_FILE_MODE 0644
#define COORD_DIR_MODE 0755
#define COORD_OWNER_SIZE 64            /* "pid host" at the start of the lock file */
#define COORD_MIN_SLEEP 20e-6          /* first poll interval while the lock is busy, s */
#define COORD_MAX_SLEEP 2e-3           /* longest poll interval, s */
#define COORD_READ_CHUNK 65536
/* Rounds of the loops that are not lock waits (create-or-open, a replaced lock file, temp
 * names, EINTR). Each round that repeats needs another process to act in between (create,
 * remove, replace a file), so a legitimate race ends within two or three; a hundred means
 * something keeps doing it on purpose. */
#define COORD_MAX_ROUNDS 100

/* Registry key of this state's table of held locks: "dev:ino" of the lock file -> handle
 * (weak values: a handle nobody references is released by __gc). */
static const char COORD_HELD_KEY = 'h';

/* {{{ errors */

/* An operational failure: which call failed, on what, and why. Filled in C, without the Lua
 * API, so it can be built while C resources are still open. */
typedef struct coord_err {
  char code[32];                  /* "ENOSPC", "ETIMEDOUT", "EDEADLK", ... */
  char msg[PATH_MAX + 256];       /* "write: ENOSPC: no space left on device" */
} coord_err;

static int coord_fail(coord_err *e, int err, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

/* Records "<what>: <ENAME>: <text>" and returns -1. */
static int coord_fail(coord_err *e, int err, const char *fmt, ...) {
  char text[128];
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  if (n < 0)
    n = 0;
  if ((size_t)n >= sizeof e->msg)
    n = (int)sizeof e->msg - 1;
  uv_err_name_r(-err, e->code, sizeof e->code);
  uv_strerror_r(-err, text, sizeof text);
  snprintf(e->msg + n, sizeof e->msg - (size_t)n, ": %s: %s", e->code, text);
  return -1;
}

/* nil, "<op> <path>: <msg>", code */
static int coord_pusherr(lua_State *L, const char *op, const char *path, const coord_err *e) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s %s: %s", op, path, e->msg);
  lua_pushstring(L, e->code);
  return 3;
}

/* }}} */
/* {{{ arguments and options */

typedef struct coord_opts {
  double timeout;         /* seconds; HUGE_VAL waits forever, 0 tries once */
  int mode;               /* of a file (and its lock file) this call creates */
  int mode_set;
  int dir_mode;           /* of directories created by mkdir */
  int mkdir;              /* create missing parent directories */
  int sync;               /* append: fdatasync before returning */
  int shared;             /* lock: a shared (read) lock */
  const char *header;     /* append: written first when the file is new or empty */
  size_t header_len;
  const char *root;       /* below it no link is followed; NULL: only the last component */
  size_t root_len;        /* without trailing slashes ("/" is 0) */
  const char *lock;       /* the lock file; NULL: <path>.lock */
} coord_opts;

static const char *const APPEND_OPTS[] = { "header", "mode", "dir_mode", "mkdir", "timeout", "sync", "root",
                                           "lock", NULL };
static const char *const UPDATE_OPTS[] = { "mode", "dir_mode", "mkdir", "timeout", "root", "lock", NULL };
static const char *const LOCK_OPTS[] = { "mode", "dir_mode", "mkdir", "timeout", "shared", "root", "lock", NULL };
static const char *const READ_OPTS[] = { "timeout", "root", "lock", NULL };

static int coord_allowed(const char *const allowed[], const char *key) {
  int i;
  for (i = 0; allowed[i] != NULL; i++)
    if (strcmp(allowed[i], key) == 0)
      return 1;
  return 0;
}

static int coord_optmode(lua_State *L, int arg, const char *key, int def, int *set) {
  lua_Integer m = 0;
  int t = lua_getfield(L, arg, key);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return def;
  }
  if (lua_isinteger(L, -1))
    m = lua_tointeger(L, -1);
  if (!lua_isinteger(L, -1) || m < 0 || m > 07777)
    luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must be a permission mode from 0 to 4095 (octal 7777), got %s",
                                          key, luaL_tolstring(L, -1, NULL)));
  lua_pop(L, 1);
  if (set != NULL)
    *set = 1;
  return (int)m;
}

static int coord_optbool(lua_State *L, int arg, const char *key) {
  int t = lua_getfield(L, arg, key), v;
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must be a boolean, got %s", key, luaL_typename(L, -1)));
  v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* A path option: a non-empty string without NUL that leaves room for temp names, or NULL. It
 * stays alive in the options table. */
static const char *coord_optpath(lua_State *L, int arg, const char *key) {
  const char *s = NULL;
  size_t len;
  if (lua_getfield(L, arg, key) != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must be a string, got %s", key, luaL_typename(L, -1)));
    s = lua_tolstring(L, -1, &len);
    if (len == 0 || strlen(s) != len || len + 16 >= PATH_MAX)
      luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must be a path (not empty, no NUL, shorter than %d bytes)",
                                            key, PATH_MAX - 16));
  }
  lua_pop(L, 1);
  return s;
}

/* Reads the options table at `arg` (nil or absent for none), rejecting keys not in `allowed`. */
static void coord_checkopts(lua_State *L, int arg, coord_opts *o, const char *const allowed[]) {
  memset(o, 0, sizeof *o);
  o->timeout = COORD_DEFAULT_TIMEOUT;
  o->mode = COORD_FILE_MODE;
  o->dir_mode = COORD_DIR_MODE;
  if (lua_isnoneornil(L, arg))
    return;
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, arg) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, arg, lua_pushfstring(L, "option names must be strings, got %s", luaL_typename(L, -1)));
    if (!coord_allowed(allowed, lua_tostring(L, -1)))
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s'", lua_tostring(L, -1)));
  }
  if (lua_getfield(L, arg, "timeout") != LUA_TNIL) {
    lua_Number t = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || !(t >= 0))
      luaL_argerror(L, arg, lua_pushfstring(L, "option 'timeout' must be a number of seconds >= 0, got %s",
                                            luaL_tolstring(L, -1, NULL)));
    o->timeout = (double)t;
  }
  lua_pop(L, 1);
  if (lua_getfield(L, arg, "header") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, arg, lua_pushfstring(L, "option 'header' must be a string, got %s", luaL_typename(L, -1)));
    o->header = lua_tolstring(L, -1, &o->header_len);  /* stays alive in the options table */
  }
  lua_pop(L, 1);
  o->mode = coord_optmode(L, arg, "mode", COORD_FILE_MODE, &o->mode_set);
  o->dir_mode = coord_optmode(L, arg, "dir_mode", COORD_DIR_MODE, NULL);
  o->mkdir = coord_optbool(L, arg, "mkdir");
  o->sync = coord_optbool(L, arg, "sync");
  o->shared = coord_optbool(L, arg, "shared");
  o->root = coord_optpath(L, arg, "root");
  o->lock = coord_optpath(L, arg, "lock");
  if (o->root != NULL) {
    o->root_len = strlen(o->root);
    while (o->root_len > 0 && o->root[o->root_len - 1] == '/')
      o->root_len--;
  }
}

/* The part of `path` below o->root (starting with its '/'); raises unless path is below root
 * without a ".." component (which would climb out of the directory walked from root). */
static void coord_checkbelow(lua_State *L, int arg, const char *path, const coord_opts *o) {
  const char *rest = path + o->root_len, *p;
  if (o->root == NULL)
    return;
  if (strncmp(path, o->root, o->root_len) != 0 || rest[0] != '/' || rest[strspn(rest, "/")] == '\0')
    luaL_argerror(L, arg, lua_pushfstring(L, "%s is not below the root %s", path, o->root));
  for (p = rest; p != NULL; p = strchr(p + 1, '/'))
    if (strncmp(p, "/..", 3) == 0 && (p[3] == '/' || p[3] == '\0'))
      luaL_argerror(L, arg, lua_pushfstring(L, "%s climbs out of the root %s with '..'", path, o->root));
}

static const char *coord_checkpath(lua_State *L, int arg) {
  size_t len;
  const char *path;
  luaL_checktype(L, arg, LUA_TSTRING);
  path = lua_tolstring(L, arg, &len);
  luaL_argcheck(L, len > 0, arg, "empty path");
  luaL_argcheck(L, strlen(path) == len, arg, "path contains a NUL byte");
  luaL_argcheck(L, path[len - 1] != '/', arg, "path names a directory (ends with '/')");
  /* room for the lock suffix and for the temp name ".<base>.XXXXXX" */
  luaL_argcheck(L, len + 16 < PATH_MAX, arg, "path too long");
  return path;
}

/* Checks path and the options of one call (the options at `optarg`) and pushes the lock
 * file's path. */
static const char *coord_checkall(lua_State *L, const char *path, int optarg, const coord_opts *o) {
  const char *lockpath;
  coord_checkbelow(L, 1, path, o);
  if (o->lock != NULL) {
    if (o->lock[strlen(o->lock) - 1] == '/')
      luaL_argerror(L, optarg, "option 'lock' names a directory (ends with '/')");
    coord_checkbelow(L, optarg, o->lock, o);
    lua_pushstring(L, o->lock);
  } else {
    lua_pushfstring(L, "%s" COORD_LOCK_SUFFIX, path);
  }
  lockpath = lua_tostring(L, -1);
  return lockpath;
}

/* }}} */
/* {{{ file helpers (no Lua API) */

static double coord_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void coord_sleep(double seconds) {
  struct timespec ts;
  ts.tv_sec = (time_t)seconds;
  ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
  nanosleep(&ts, NULL);  /* EINTR: the caller's loop checks its deadline and the signal */
}

/* -1 with "interrupted by SIGINT" (EINTR) when the host caught a signal that Lua has not
 * raised yet (coral_interrupt_pending), else 0. */
static int coord_check_interrupt(coord_err *e) {
  int signo = coral_interrupt_pending();
  if (signo == 0)
    return 0;
  snprintf(e->code, sizeof e->code, "EINTR");
  snprintf(e->msg, sizeof e->msg, "interrupted by %s", coral_signal_name(signo));
  return -1;
}

/* A loop that ran out of rounds: -1 with "<what>: gave up after N tries (<why>)", EAGAIN. */
static int coord_gave_up(coord_err *e, const char *what, const char *why) {
  snprintf(e->code, sizeof e->code, "EAGAIN");
  snprintf(e->msg, sizeof e->msg, "%.*s: gave up after %d tries (%s)", PATH_MAX, what, COORD_MAX_ROUNDS, why);
  return -1;
}

/* Says why `name` in directory `dirfd` (shown as `shown`) could not be opened: a symbolic
 * link, a non-directory where a directory belongs and a FIFO or socket where a file belongs
 * get a message of their own, anything else is "<op> <shown>: <ENAME>: ...". `err` is the
 * errno of the failed call. */
static int coord_refuse(coord_err *e, int err, int dirfd, const char *name, const char *shown, int want_dir,
                        const char *op) {
  struct stat st;
  if ((err == ELOOP || err == ENOTDIR || err == EEXIST || err == ENXIO) &&
      fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (S_ISLNK(st.st_mode)) {
      snprintf(e->code, sizeof e->code, "ELOOP");
      snprintf(e->msg, sizeof e->msg, "%s is a symbolic link (coral does not follow it)", shown);
      return -1;
    }
    if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
      snprintf(e->code, sizeof e->code, want_dir ? "ENOTDIR" : "EINVAL");
      snprintf(e->msg, sizeof e->msg, "%s is not a %s", shown, want_dir ? "directory" : "regular file");
      return -1;
    }
  }
  return coord_fail(e, err, "%s %s", op, shown);
}

/* open(2) of a directory as named (following links: the caller chose it), EINTR retried. */
static int coord_opendir_as_named(const char *dir) {
  int fd, i;
  for (i = 0; i < COORD_MAX_ROUNDS; i++) {
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0 || errno != EINTR)
      return fd;
  }
  errno = EINTR;
  return -1;
}

/* mkdir -p of `dir` (as named, links followed); directories it creates get exactly `mode`. */
static int coord_mkdirs(char *dir, int mode, coord_err *e) {
  char *p;
  for (p = dir + 1; ; p++) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      if (mkdir(dir, (mode_t)mode) == 0) {
        if (chmod(dir, (mode_t)mode) != 0)
          return coord_fail(e, errno, "chmod %s", dir);
      } else if (errno != EEXIST) {
        return coord_fail(e, errno, "mkdir %s", dir);
      }
      *p = c;
      if (c == '\0')
        return 0;
    }
  }
}

/* Opens the directory `name` below `dirfd` without following a link, creating it (with
 * exactly `mode`) when it is missing and `mkdir`. `shown` names it in errors. */
static int coord_opendir_below(int dirfd, const char *name, const char *shown, int mkdir, int mode, coord_err *e) {
  int fd, i;
  for (i = 0; i < COORD_MAX_ROUNDS; i++) {
    fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0)
      return fd;
    if (errno == EINTR)
      continue;
    if (errno != ENOENT || !mkdir)
      return coord_refuse(e, errno, dirfd, name, shown, 1, "open directory");
    if (mkdirat(dirfd, name, (mode_t)mode) == 0) {
      fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0)
        return coord_refuse(e, errno, dirfd, name, shown, 1, "open directory");
      if (fchmod(fd, (mode_t)mode) != 0) {
        coord_fail(e, errno, "chmod %s", shown);
        close(fd);
        return -1;
      }
      return fd;
    }
    if (errno != EEXIST)  /* EEXIST: made meanwhile by another process: open theirs */
      return coord_refuse(e, errno, dirfd, name, shown, 1, "mkdir");
  }
  return coord_gave_up(e, shown, "it keeps appearing and disappearing");
}

/* Opens the directory that holds `path` and returns its fd; *base is set to path's last
 * component, to be opened from that fd (openat, O_NOFOLLOW). Without o->root the directory
 * is opened as named. With o->root only root is; each directory below it is opened from its
 * parent's fd without following links, so nothing below root can lead elsewhere. `mkdir`:
 * missing directories (below root, with a root) are created with o->dir_mode. */
static int coord_parent(const char *path, const coord_opts *o, int mkdir, const char **base, coord_err *e) {
  char buf[PATH_MAX];
  const char *slash = strrchr(path, '/');
  char *p, *q;
  int fd, next;

  *base = slash == NULL ? path : slash + 1;
  if (o->root == NULL) {
    if (slash == NULL)
      snprintf(buf, sizeof buf, ".");
    else if (slash == path)
      snprintf(buf, sizeof buf, "/");
    else
      snprintf(buf, sizeof buf, "%.*s", (int)(slash - path), path);
    fd = coord_opendir_as_named(buf);
    if (fd < 0 && errno == ENOENT && mkdir) {
      if (coord_mkdirs(buf, o->dir_mode, e) != 0)
        return -1;
      fd = coord_opendir_as_named(buf);
    }
    if (fd < 0)
      return coord_fail(e, errno, "open directory %s", buf);
    return fd;
  }

  /* root as named: the literal prefix of path (coord_checkbelow made sure; "/" when root is) */
  snprintf(buf, sizeof buf, "%.*s", o->root_len == 0 ? 1 : (int)o->root_len, path);
  fd = coord_opendir_as_named(buf);
  if (fd < 0)
    return coord_fail(e, errno, "open directory %s", buf);
  /* then each directory below it from its parent's fd; buf holds path, cut after the
   * component being opened so that an error names that prefix */
  snprintf(buf, sizeof buf, "%s", path);
  for (p = buf + o->root_len; ; p = q) {
    char c;
    p += strspn(p, "/");
    q = p + strcspn(p, "/");
    if (q[strspn(q, "/")] == '\0')
      return fd;  /* p is the last component (checked: not empty) */
    c = *q;
    *q = '\0';
    if (strcmp(p, ".") != 0) {
      next = coord_opendir_below(fd, p, buf, mkdir, o->dir_mode, e);
      close(fd);
      if (next < 0)
        return -1;
      fd = next;
    }
    *q = c;
  }
}

/* Writes all of buf, looping on short writes and EINTR (a bounded number of times in a row:
 * a regular file is not interrupted in practice, a slow NFS server may be). */
static int coord_write_all(int fd, const char *buf, size_t len) {
  int interrupted = 0;
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR && ++interrupted < COORD_MAX_ROUNDS)
        continue;
      return -1;
    }
    if (n == 0) {  /* a regular file that takes nothing: treat as full */
      errno = ENOSPC;
      return -1;
    }
    interrupted = 0;
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Opens `name` in `dirfd` (flags without O_CREAT) without following a link; if it does not
 * exist and `create`, creates it with exactly `mode`. *created tells which happened. A link
 * there, dangling or not, is refused at once: O_NOFOLLOW fails with ELOOP where following a
 * dangling link would say ENOENT and O_EXCL then EEXIST, forever. O_NONBLOCK keeps a FIFO
 * planted there from blocking the open (it has no effect on a regular file); anything but a
 * regular file is then refused. */
static int coord_open(int dirfd, const char *name, const char *shown, int flags, int create, int mode,
                      int *created, coord_err *e) {
  struct stat st;
  int fd = -1, i;
  *created = 0;
  flags |= O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
  for (i = 0; i < COORD_MAX_ROUNDS && fd < 0; i++) {
    if (i > 0 && coord_check_interrupt(e) != 0)
      return -1;
    fd = openat(dirfd, name, flags);
    if (fd >= 0)
      break;
    if (errno == EINTR)
      continue;
    if (errno != ENOENT || !create)
      return coord_refuse(e, errno, dirfd, name, shown, 0, "open");
    fd = openat(dirfd, name, flags | O_CREAT | O_EXCL, (mode_t)mode);
    if (fd >= 0) {
      *created = 1;
      if (fchmod(fd, (mode_t)mode) != 0) {
        coord_fail(e, errno, "chmod %s", shown);
        close(fd);
        return -1;
      }
      return fd;
    }
    if (errno != EEXIST && errno != EINTR)  /* EEXIST: somebody created it first: open theirs */
      return coord_refuse(e, errno, dirfd, name, shown, 0, "create");
  }
  if (fd < 0)
    return coord_gave_up(e, shown, "it keeps appearing and disappearing");
  if (fstat(fd, &st) != 0) {
    coord_fail(e, errno, "stat %s", shown);
    close(fd);
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    if (S_ISDIR(st.st_mode))
      return coord_fail(e, EISDIR, "open %s", shown);
    snprintf(e->code, sizeof e->code, "EINVAL");
    snprintf(e->msg, sizeof e->msg, "%s is not a regular file", shown);
    return -1;
  }
  return fd;
}

/* fsync of the directory `dirfd` that holds `path`. Filesystems that cannot sync a directory
 * say EINVAL. */
static int coord_sync_dir(int dirfd, const char *path, coord_err *e) {
  const char *slash;
  if (fsync(dirfd) == 0 || errno == EINVAL || errno == ENOTSUP)
    return 0;
  slash = strrchr(path, '/');
  if (slash == NULL)
    return coord_fail(e, errno, "fsync directory .");
  return coord_fail(e, errno, "fsync directory %.*s", (int)(slash - path), path);
}

/* }}} */
/* {{{ scratch state of one call */

/* The fds and the temp file of one append/update/read, cleaned by __close whether the call
 * returns or raises: the one cleanup path. */
typedef struct coord_op {
  int dirfd;            /* the directory of the data file */
  int lockdirfd;        /* the lock file's directory until a lock handle takes it over */
  int fd;               /* the data file */
  int tmpfd;            /* update's temp file */
  char tmp[NAME_MAX + 1]; /* its name in dirfd while it exists and is not renamed */
} coord_op;

static int coord_op_close(lua_State *L) {
  coord_op *op = luaL_checkudata(L, 1, COORD_OP_MT);
  if (op->fd >= 0)
    close(op->fd);
  if (op->tmpfd >= 0)
    close(op->tmpfd);
  if (op->tmp[0] != '\0' && op->dirfd >= 0)
    unlinkat(op->dirfd, op->tmp, 0);
  if (op->dirfd >= 0)
    close(op->dirfd);
  if (op->lockdirfd >= 0)
    close(op->lockdirfd);
  op->fd = op->tmpfd = op->dirfd = op->lockdirfd = -1;
  op->tmp[0] = '\0';
  return 0;
}

static coord_op *coord_newop(lua_State *L) {
  coord_op *op = lua_newuserdatauv(L, sizeof *op, 0);
  op->fd = op->tmpfd = op->dirfd = op->lockdirfd = -1;
  op->tmp[0] = '\0';
  luaL_setmetatable(L, COORD_OP_MT);
  lua_toclose(L, -1);
  return op;
}

/* }}} */
/* {{{ locks */

typedef struct coord_lock {
  int fd;               /* the lock file; -1 when released */
  int ofd;              /* the lock is an OFD lock (else a classic process lock) */
  int shared;
  int registered;       /* in this state's held table */
  dev_t dev;            /* identity of the lock file */
  ino_t ino;
  int dirfd;            /* the lock file's directory while the lock is being taken, else -1 */
} coord_lock;

static void coord_key(char *buf, size_t size, dev_t dev, ino_t ino) {
  snprintf(buf, size, "%llx:%llx", (unsigned long long)dev, (unsigned long long)ino);
}

static void coord_flock(struct flock *fl, short type) {
  memset(fl, 0, sizeof *fl);  /* whole file; OFD locks want l_pid 0 */
  fl->l_type = type;
  fl->l_whence = SEEK_SET;
}

/* One attempt that does not block: 0, or -1 with errno (EAGAIN/EACCES: held by another).
 * A kernel without OFD locks says EINVAL once; the lock is then a classic one. */
static int coord_trylock(coord_lock *lk, short type) {
  struct flock fl;
  coord_flock(&fl, type);
#ifdef F_OFD_SETLK
  if (lk->ofd) {
    if (fcntl(lk->fd, F_OFD_SETLK, &fl) == 0)
      return 0;
    if (errno != EINVAL)
      return -1;
    lk->ofd = 0;
    coord_flock(&fl, type);
  }
#endif
  return fcntl(lk->fd, F_SETLK, &fl);
}

/* Leaves "pid host" at the start of the lock file, so a waiter that times out can say who
 * holds the lock: F_OFD_GETLK reports l_pid -1 for OFD locks, and on NFS a pid is only
 * meaningful with its host. Best effort: a full disk must not stop the lock. */
static void coord_write_owner(int fd) {
  char buf[COORD_OWNER_SIZE], host[COORD_OWNER_SIZE];
  int n;
  if (gethostname(host, sizeof host) != 0)
    host[0] = '\0';
  host[sizeof host - 1] = '\0';
  memset(buf, ' ', sizeof buf);
  n = snprintf(buf, sizeof buf, "%ld %s", (long)getpid(), host);
  if (n >= 0 && (size_t)n < sizeof buf)
    buf[n] = ' ';
  buf[sizeof buf - 1] = '\n';
  if (pwrite(fd, buf, sizeof buf, 0) < 0) {
    /* ignored: see above */
  }
}

/* "held by pid 1234", "held by pid 1234 on otherhost", "held for reading", ... */
static void coord_holder(coord_lock *lk, short type, char *out, size_t size) {
  struct flock fl;
  char owner[COORD_OWNER_SIZE + 1], host[COORD_OWNER_SIZE + 1], self[COORD_OWNER_SIZE];
  long pid = 0, opid;
  ssize_t n;
  int cmd = F_GETLK;
#ifdef F_OFD_GETLK
  if (lk->ofd)
    cmd = F_OFD_GETLK;
#endif
  coord_flock(&fl, type);
  if (fcntl(lk->fd, cmd, &fl) != 0 || fl.l_type == F_UNLCK) {
    snprintf(out, size, "released just now");
    return;
  }
  if (fl.l_pid > 0)
    pid = (long)fl.l_pid;  /* a classic lock: the kernel knows the pid */
  if (fl.l_type == F_RDLCK) {
    if (pid > 0)
      snprintf(out, size, "held for reading by pid %ld", pid);
    else
      snprintf(out, size, "held for reading by another process");
    return;
  }
  host[0] = '\0';
  n = pread(lk->fd, owner, COORD_OWNER_SIZE, 0);
  if (n > 0) {
    owner[n] = '\0';
    if (sscanf(owner, "%ld %64s", &opid, host) >= 1 && (pid <= 0 || pid == opid))
      pid = opid;
    else
      host[0] = '\0';
  }
  if (gethostname(self, sizeof self) != 0)
    self[0] = '\0';
  self[sizeof self - 1] = '\0';
  if (pid <= 0)
    snprintf(out, size, "held by another process");
  else if (host[0] != '\0' && strcmp(host, self) != 0)
    snprintf(out, size, "held by pid %ld on %s", pid, host);
  else
    snprintf(out, size, "held by pid %ld", pid);
}

/* The mode of a new lock file: the one asked for, else that of the file it guards, so the
 * lock of a private 0600 file is private too. */
static int coord_lockmode(const char *path, const coord_opts *o) {
  struct stat st;
  if (o->mode_set)
    return o->mode;
  if (lstat(path, &st) == 0 && S_ISREG(st.st_mode))
    return (int)(st.st_mode & 0666);
  return o->mode;
}

/* Opens (creating it if needed) the lock file `lockbase` in lk->dirfd and locks it, waiting up
 * to o->timeout; closes lk->dirfd when done. lk->fd is set as soon as it is open, so the
 * caller's __close cleans up whatever happens after. `lockpath` names the lock file in
 * errors; `lock_op` only changes the wording of a timeout. */
static int coord_acquire(coord_lock *lk, const char *path, const char *lockpath, const char *lockbase,
                         const coord_opts *o, int shared, int lock_op, coord_err *e) {
  short type = shared ? F_RDLCK : F_WRLCK;
  double start = coord_now(), delay = COORD_MIN_SLEEP;
  unsigned rnd = (unsigned)getpid() * 2654435761u ^ (unsigned)(start * 1e6);
  struct stat st, now;
  int created, round;

  lk->shared = shared;
  for (round = 0; ; round++) {
    if (round == COORD_MAX_ROUNDS)
      return coord_gave_up(e, lockpath, "the lock file keeps being replaced");
    if (round > 0 && coord_check_interrupt(e) != 0)
      return -1;
    lk->ofd = 1;
    lk->fd = coord_open(lk->dirfd, lockbase, lockpath, O_RDWR, 1, coord_lockmode(path, o), &created, e);
    if (lk->fd < 0 && shared && (strcmp(e->code, "EACCES") == 0 || strcmp(e->code, "EROFS") == 0))
      lk->fd = coord_open(lk->dirfd, lockbase, lockpath, O_RDONLY, 0, 0, &created, e);  /* a reader needs no write access */
    if (lk->fd < 0)
      return -1;
    if (fstat(lk->fd, &st) != 0)
      return coord_fail(e, errno, "stat %s", lockpath);
    lk->dev = st.st_dev;
    lk->ino = st.st_ino;

    for (;;) {
      double left, pause;
      if (coord_trylock(lk, type) == 0)
        break;
      if (errno != EAGAIN && errno != EACCES && errno != EINTR)
        return coord_fail(e, errno, "lock %s", lockpath);
      if (coord_check_interrupt(e) != 0)
        return -1;
      left = start + o->timeout - coord_now();
      if (left <= 0) {
        char holder[COORD_OWNER_SIZE * 2 + 64];
        coord_holder(lk, type, holder, sizeof holder);
        snprintf(e->code, sizeof e->code, "ETIMEDOUT");
        snprintf(e->msg, sizeof e->msg, "timed out after %g s%s (%s)", o->timeout,
                 lock_op ? "" : " waiting for the lock", holder);
        return -1;
      }
      /* randomised so that waiters started together do not poll in step */
      rnd = rnd * 1103515245u + 12345u;
      pause = delay * (0.5 + (double)((rnd >> 16) & 0x7fff) / 65536.0);
      coord_sleep(pause < left ? pause : left);
      if (coord_check_interrupt(e) != 0)
        return -1;  /* interrupted while asleep: do not take a lock that was freed meanwhile */
      delay = delay * 2 < COORD_MAX_SLEEP ? delay * 2 : COORD_MAX_SLEEP;
    }

    /* Somebody removed or replaced the lock file while we waited: the lock we hold then
     * excludes nobody. Start over on the file that is there now. */
    if (fstatat(lk->dirfd, lockbase, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_dev == st.st_dev &&
        now.st_ino == st.st_ino)
      break;
    close(lk->fd);
    lk->fd = -1;
  }
  close(lk->dirfd);
  lk->dirfd = -1;
  if (!shared)
    coord_write_owner(lk->fd);
  return 0;
}

/* Releases the lock (and forgets it); safe to call twice. Unlocks explicitly before closing:
 * an OFD lock stays while any dup of the fd lives (a child between fork and exec). */
static void coord_release(lua_State *L, coord_lock *lk) {
  struct flock fl;
  if (lk->dirfd >= 0) {
    close(lk->dirfd);
    lk->dirfd = -1;
  }
  if (lk->fd < 0)
    return;
  if (lk->registered) {
    char key[64];
    coord_key(key, sizeof key, lk->dev, lk->ino);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &COORD_HELD_KEY);
    if (lua_getfield(L, -1, key) == LUA_TUSERDATA && lua_touserdata(L, -1) == (void *)lk) {
      lua_pushnil(L);
      lua_setfield(L, -3, key);
    }
    lua_pop(L, 2);
    lk->registered = 0;
  }
  coord_flock(&fl, F_UNLCK);
#ifdef F_OFD_SETLK
  if (lk->ofd)
    fcntl(lk->fd, F_OFD_SETLK, &fl);
  else
#endif
    fcntl(lk->fd, F_SETLK, &fl);
  close(lk->fd);
  lk->fd = -1;
}

/* Pushes a new lock handle, released, for `path`. */
static coord_lock *coord_newlock(lua_State *L, const char *path) {
  coord_lock *lk = lua_newuserdatauv(L, sizeof *lk, 1);
  memset(lk, 0, sizeof *lk);
  lk->fd = lk->dirfd = -1;
  luaL_setmetatable(L, COORD_LOCK_MT);
  lua_pushstring(L, path);
  lua_setiuservalue(L, -2, 1);
  return lk;
}

static void coord_register(lua_State *L, int idx, coord_lock *lk) {
  char key[64];
  coord_key(key, sizeof key, lk->dev, lk->ino);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &COORD_HELD_KEY);
  lua_pushvalue(L, idx);
  lua_setfield(L, -2, key);
  lua_pop(L, 1);
  lk->registered = 1;
}

/* Pushes the handle of the lock this state holds on the lock file `lockbase` in `dirfd`, or
 * nil. The handle is then on the stack, so it cannot be collected (and released) while the
 * caller uses it. */
static coord_lock *coord_held(lua_State *L, int dirfd, const char *lockbase) {
  struct stat st;
  char key[64];
  coord_lock *lk = NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &COORD_HELD_KEY);
  lua_pushnil(L);
  if (lua_next(L, -2) != 0) {  /* only stat when this state holds some lock */
    lua_pop(L, 2);
    if (fstatat(dirfd, lockbase, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      coord_key(key, sizeof key, st.st_dev, st.st_ino);
      lua_getfield(L, -1, key);
      lk = luaL_testudata(L, -1, COORD_LOCK_MT);
      if (lk == NULL || lk->fd < 0) {
        lk = NULL;
        lua_pop(L, 1);
        lua_pushnil(L);
      }
      lua_remove(L, -2);
      return lk;
    }
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  return lk;
}

/* The directory of the lock file: created when missing if the caller asked for mkdir or
 * named the lock file itself (its place is the caller's choice, not the user's tree). */
static int coord_lockdir(const char *lockpath, const coord_opts *o, const char **lockbase, coord_err *e) {
  return coord_parent(lockpath, o, o->mkdir || o->lock != NULL, lockbase, e);
}

/* Takes the lock for one call and pushes its handle: the lock this state already holds on
 * `path` (reused, left alone), or a new one marked to be closed when the calling C function
 * returns or raises. `keep`: findable by coord_held while held (Lua code runs under it).
 * The lock file's directory is held by `op` until a new handle takes it over, so that a
 * reused lock costs no second to-be-closed value (whose closing could fail for memory after
 * the call has done its work). */
static int coord_enter(lua_State *L, coord_op *op, const char *path, const char *lockpath, const coord_opts *o,
                       int shared, int keep, coord_err *e) {
  const char *lockbase;
  coord_lock *lk;
  op->lockdirfd = coord_lockdir(lockpath, o, &lockbase, e);
  if (op->lockdirfd < 0)
    return -1;
  lk = coord_held(L, op->lockdirfd, lockbase);
  if (lk != NULL) {
    close(op->lockdirfd);
    op->lockdirfd = -1;
    if (lk->shared && !shared) {
      snprintf(e->code, sizeof e->code, "EDEADLK");
      snprintf(e->msg, sizeof e->msg, "this Lua state holds a shared lock on it");
      return -1;
    }
    return 0;
  }
  lua_pop(L, 1);
  lk = coord_newlock(L, path);
  lua_toclose(L, -1);
  lk->dirfd = op->lockdirfd;  /* the handle owns it from here */
  op->lockdirfd = -1;
  if (coord_acquire(lk, path, lockpath, lockbase, o, shared, 0, e) != 0)
    return -1;
  if (keep)
    coord_register(L, lua_gettop(L), lk);
  return 0;
}

/* lock:unlock(): releases the lock; does nothing if it is released already. Also __close
 * and __gc, so `local l <close> = coord.lock(p)` always releases. */
static int coord_lock_unlock(lua_State *L) {
  coord_release(L, luaL_checkudata(L, 1, COORD_LOCK_MT));
  return 0;
}

static int coord_lock_tostring(lua_State *L) {
  coord_lock *lk = luaL_checkudata(L, 1, COORD_LOCK_MT);
  lua_getiuservalue(L, 1, 1);
  lua_pushfstring(L, "coral.lock (%s, %s)", lua_tostring(L, -1),
                  lk->fd < 0 ? "released" : lk->shared ? "held shared" : "held");
  return 1;
}

/* }}} */
/* {{{ whole reads, and failed appends taken back */

/* Pushes the rest of fd's content. On a read error returns -1 with errno, the caller then
 * returns at once (the buffer's slot goes with the call). */
static int coord_readall(lua_State *L, int fd) {
  luaL_Buffer b;
  int interrupted = 0;
  luaL_buffinit(L, &b);
  for (;;) {
    char *p = luaL_prepbuffsize(&b, COORD_READ_CHUNK);
    ssize_t n = read(fd, p, COORD_READ_CHUNK);
    if (n < 0) {
      if (errno == EINTR && ++interrupted < COORD_MAX_ROUNDS)
        continue;
      return -1;
    }
    if (n == 0)
      break;
    interrupted = 0;
    luaL_addsize(&b, (size_t)n);
  }
  luaL_pushresult(&b);
  return 0;
}

/* Takes a failed append back out: the file it created is removed, a file that was there is
 * cut back to its old size. A failure to do so is added to the message. */
static void coord_undo(coord_op *op, const char *base, off_t size, int created, coord_err *e) {
  int r, fd;
  const char *what = created ? "remove" : "truncate";
  if (created) {
    r = unlinkat(op->dirfd, base, 0);
  } else if (op->fd >= 0) {
    r = ftruncate(op->fd, size);
  } else {
    fd = openat(op->dirfd, base, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    r = fd < 0 ? -1 : ftruncate(fd, size);
    if (fd >= 0)
      close(fd);
  }
  if (r != 0) {
    char name[32];
    size_t n = strlen(e->msg);
    uv_err_name_r(-errno, name, sizeof name);
    snprintf(e->msg + n, sizeof e->msg - n, " (and %s back to %lld bytes failed: %s)", what,
             (long long)size, name);
  }
}

/* }}} */
/* {{{ coral.coord */

/* ok, err, code = coord.append(path, text [, opts])
 * One record: all of text (after opts.header if the file is new or empty) or nothing. */
static int coord_append(lua_State *L) {
  coord_opts o;
  coord_err e;
  coord_op *op;
  struct stat st;
  size_t len;
  const char *path, *text, *lockpath, *base;
  int created, fd, failed = 0;
  off_t size;

  path = coord_checkpath(L, 1);
  luaL_checktype(L, 2, LUA_TSTRING);
  text = lua_tolstring(L, 2, &len);
  coord_checkopts(L, 3, &o, APPEND_OPTS);
  coral_checknargs(L, 3);
  lua_settop(L, 3);
  lockpath = coord_checkall(L, path, 3, &o);
  op = coord_newop(L);
  if (coord_enter(L, op, path, lockpath, &o, 0, 0, &e) != 0)
    return coord_pusherr(L, "append", path, &e);

  op->dirfd = coord_parent(path, &o, o.mkdir, &base, &e);
  if (op->dirfd < 0)
    return coord_pusherr(L, "append", path, &e);
  op->fd = coord_open(op->dirfd, base, path, O_WRONLY | O_APPEND, 1, o.mode, &created, &e);
  if (op->fd < 0)
    return coord_pusherr(L, "append", path, &e);
  if (fstat(op->fd, &st) != 0) {
    coord_fail(&e, errno, "stat");
    return coord_pusherr(L, "append", path, &e);
  }
  size = st.st_size;
  if ((size == 0 && o.header != NULL && coord_write_all(op->fd, o.header, o.header_len) != 0) ||
      coord_write_all(op->fd, text, len) != 0)
    failed = coord_fail(&e, errno, "write");
  else if (o.sync && fdatasync(op->fd) != 0)
    failed = coord_fail(&e, errno, "fdatasync");
  if (!failed) {
    fd = op->fd;
    op->fd = -1;
    /* NFS reports a write it could not flush at close */
    if (close(fd) != 0 && errno != EINTR)
      failed = coord_fail(&e, errno, "close");
  }
  if (failed) {
    coord_undo(op, base, size, created, &e);
    return coord_pusherr(L, "append", path, &e);
  }
  if (o.sync && created && coord_sync_dir(op->dirfd, path, &e) != 0)
    return coord_pusherr(L, "append", path, &e);
  lua_pushboolean(L, 1);
  return 1;
}

/* Creates update's temp file ".<base>.XXXXXX" in op->dirfd (exclusively, never through a
 * link), named in op->tmp, with its path for errors in `shown`. */
static int coord_mktemp(coord_op *op, const char *path, const char *base, char *shown, size_t size,
                        coord_err *e) {
  static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  struct timespec ts;
  unsigned long rnd;
  int i, k;
  clock_gettime(CLOCK_REALTIME, &ts);
  rnd = (unsigned long)ts.tv_nsec * 2654435761ul ^ (unsigned long)getpid() << 16 ^ (unsigned long)ts.tv_sec;
  for (i = 0; i < COORD_MAX_ROUNDS; i++) {
    char suffix[7];
    for (k = 0; k < 6; k++) {
      rnd = rnd * 6364136223846793005ul + 1442695040888963407ul;
      suffix[k] = chars[(rnd >> 33) % (sizeof chars - 1)];
    }
    suffix[6] = '\0';
    if ((size_t)snprintf(op->tmp, sizeof op->tmp, ".%s.%s", base, suffix) >= sizeof op->tmp) {
      op->tmp[0] = '\0';
      snprintf(shown, size, "%s", path);
      return coord_fail(e, ENAMETOOLONG, "create a temp file beside %s", path);
    }
    snprintf(shown, size, "%.*s%s", (int)(base - path), path, op->tmp);
    op->tmpfd = openat(op->dirfd, op->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (op->tmpfd >= 0)
      return 0;
    if (errno != EEXIST && errno != EINTR)
      break;
  }
  op->tmp[0] = '\0';
  if (errno == EEXIST)
    return coord_gave_up(e, shown, "every temp name was taken");
  return coord_fail(e, errno, "create %s", shown);
}

/* changed, err, code = coord.update(path, fn [, opts])
 * new = fn(old): old is the content or nil; new is a string, or nil to leave the file as it
 * is. Written as temp file, fsync, close, rename, fsync of the directory. */
static int coord_update(lua_State *L) {
  coord_opts o;
  coord_err e;
  coord_op *op;
  struct stat st;
  size_t len;
  const char *path, *lockpath, *text, *base;
  char tmp[PATH_MAX + NAME_MAX + 2];
  int mode, fd, old, created;

  path = coord_checkpath(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  coord_checkopts(L, 3, &o, UPDATE_OPTS);
  coral_checknargs(L, 3);
  lua_settop(L, 3);
  lockpath = coord_checkall(L, path, 3, &o);
  op = coord_newop(L);
  if (coord_enter(L, op, path, lockpath, &o, 0, 1, &e) != 0)
    return coord_pusherr(L, "update", path, &e);

  mode = o.mode;
  op->dirfd = coord_parent(path, &o, o.mkdir, &base, &e);
  if (op->dirfd < 0)
    return coord_pusherr(L, "update", path, &e);
  op->fd = coord_open(op->dirfd, base, path, O_RDONLY, 0, 0, &created, &e);
  if (op->fd < 0) {
    if (strcmp(e.code, "ENOENT") != 0)
      return coord_pusherr(L, "update", path, &e);
    lua_pushnil(L);
  } else {
    if (fstat(op->fd, &st) != 0 || coord_readall(L, op->fd) != 0) {
      coord_fail(&e, errno, "read");
      return coord_pusherr(L, "update", path, &e);
    }
    if (!o.mode_set)
      mode = (int)(st.st_mode & 07777);
    fd = op->fd;
    op->fd = -1;
    close(fd);
  }
  old = lua_gettop(L);

  /* fn may raise: the lock and op are closed on the way out and nothing is written */
  lua_pushvalue(L, 2);
  lua_pushvalue(L, old);
  lua_call(L, 1, 1);
  if (lua_isnil(L, -1) || lua_rawequal(L, -1, old)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    return luaL_error(L, "update function must return a string or nil, got %s", luaL_typename(L, -1));
  text = lua_tolstring(L, -1, &len);

  if (coord_mktemp(op, path, base, tmp, sizeof tmp, &e) != 0)
    return coord_pusherr(L, "update", path, &e);
  if (fchmod(op->tmpfd, (mode_t)mode) != 0) {
    coord_fail(&e, errno, "chmod %s", tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  if (coord_write_all(op->tmpfd, text, len) != 0) {
    coord_fail(&e, errno, "write %s", tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  if (fsync(op->tmpfd) != 0) {
    coord_fail(&e, errno, "fsync %s", tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  fd = op->tmpfd;
  op->tmpfd = -1;
  if (close(fd) != 0 && errno != EINTR) {
    coord_fail(&e, errno, "close %s", tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  /* renameat replaces whatever is at base, a link too, and never writes through it */
  if (renameat(op->dirfd, op->tmp, op->dirfd, base) != 0) {
    coord_fail(&e, errno, "rename %s", tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  op->tmp[0] = '\0';
  /* the new content is in place; this makes the rename itself survive a crash */
  if (coord_sync_dir(op->dirfd, path, &e) != 0)
    return coord_pusherr(L, "update", path, &e);
  lua_pushboolean(L, 1);
  return 1;
}

/* content, err, code = coord.read(path [, opts])
 * The whole file under a shared lock: never half of an append or update. */
static int coord_read(lua_State *L) {
  coord_opts o;
  coord_err e;
  coord_op *op;
  struct stat st;
  const char *path, *lockpath, *base;
  int created;

  path = coord_checkpath(L, 1);
  coord_checkopts(L, 2, &o, READ_OPTS);
  coral_checknargs(L, 2);
  lua_settop(L, 2);
  lockpath = coord_checkall(L, path, 2, &o);
  op = coord_newop(L);
  /* A file that is not there is not there whether or not somebody holds its lock, and a
   * reader does not create a lock file (or its directory) for it. */
  op->dirfd = coord_parent(path, &o, 0, &base, &e);
  if (op->dirfd < 0 || fstatat(op->dirfd, base, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (op->dirfd >= 0 || strcmp(e.code, "ENOENT") == 0)
      coord_fail(&e, op->dirfd >= 0 ? errno : ENOENT, "open");
    return coord_pusherr(L, "read", path, &e);
  }
  if (coord_enter(L, op, path, lockpath, &o, 1, 0, &e) != 0)
    return coord_pusherr(L, "read", path, &e);
  op->fd = coord_open(op->dirfd, base, path, O_RDONLY, 0, 0, &created, &e);
  if (op->fd < 0) {
    if (strcmp(e.code, "ENOENT") == 0)
      coord_fail(&e, ENOENT, "open");
    return coord_pusherr(L, "read", path, &e);
  }
  if (coord_readall(L, op->fd) != 0) {
    coord_fail(&e, errno, "read");
    return coord_pusherr(L, "read", path, &e);
  }
  return 1;
}

/* lock, err, code = coord.lock(path [, opts])
 * Holds the lock of `path` until lock:unlock(), __close or __gc. */
static int coord_lock_new(lua_State *L) {
  coord_opts o;
  coord_err e;
  coord_lock *lk;
  const char *path, *lockpath, *lockbase;

  path = coord_checkpath(L, 1);
  coord_checkopts(L, 2, &o, LOCK_OPTS);
  coral_checknargs(L, 2);
  lua_settop(L, 2);
  lockpath = coord_checkall(L, path, 2, &o);
  lk = coord_newlock(L, path);  /* closed; owns the directory's fd from here */
  lk->dirfd = coord_lockdir(lockpath, &o, &lockbase, &e);
  if (lk->dirfd < 0)
    return coord_pusherr(L, "lock", path, &e);
  if (coord_held(L, lk->dirfd, lockbase) != NULL) {
    coord_release(L, lk);
    snprintf(e.code, sizeof e.code, "EDEADLK");
    snprintf(e.msg, sizeof e.msg, "already locked by this Lua state");
    return coord_pusherr(L, "lock", path, &e);
  }
  lua_pop(L, 1);
  if (coord_acquire(lk, path, lockpath, lockbase, &o, o.shared, 1, &e) != 0) {
    coord_release(L, lk);
    return coord_pusherr(L, "lock", path, &e);
  }
  coord_register(L, lua_gettop(L), lk);
  return 1;
}

/* }}} */

static const luaL_Reg coord_functions[] = {
  { "append", coord_append },
  { "update", coord_update },
  { "read", coord_read },
  { "lock", coord_lock_new },
  { NULL, NULL }
};

static const luaL_Reg coord_lock_methods[] = {
  { "unlock", coord_lock_unlock },
  { NULL, NULL }
};

static const luaL_Reg coord_lock_metamethods[] = {
  { "__close", coord_lock_unlock },
  { "__gc", coord_lock_unlock },
  { "__tostring", coord_lock_tostring },
  { NULL, NULL }
};

static const luaL_Reg coord_op_metamethods[] = {
  { "__close", coord_op_close },
  { "__gc", coord_op_close },
  { NULL, NULL }
};

int coral_coord_open(lua_State *L) {
  luaL_newmetatable(L, COORD_LOCK_MT);
  luaL_setfuncs(L, coord_lock_metamethods, 0);
  luaL_newlib(L, coord_lock_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, COORD_OP_MT);
  luaL_setfuncs(L, coord_op_metamethods, 0);
  lua_pop(L, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &COORD_HELD_KEY) == LUA_TNIL) {
    lua_newtable(L);
    lua_newtable(L);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &COORD_HELD_KEY);
  }
  lua_pop(L, 1);
  luaL_newlib(L, coord_functions);
  return 1;
}
