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
 * - Every operation on `path` locks the sidecar `<path>.lock`, never `path` itself: update
 *   replaces path's inode by rename, so a lock on the old inode would exclude nobody. The
 *   sidecar is never removed (removing a lock file races with its next user); if somebody
 *   removes it anyway, acquiring notices the inode changed and starts over.
 * - Locks are fcntl locks: open file description locks (F_OFD_SETLK) where the kernel has
 *   them, classic process locks (F_SETLK) otherwise. Both work on NFS. Lock waits poll with
 *   F_OFD_SETLK and short randomised exponential sleeps up to a deadline: a blocking
 *   F_SETLKW has no timeout, and interrupting it needs a signal (process-wide, and the host's
 *   libuv loop owns signals) or a helper thread that cannot be cancelled cleanly.
 * - A wait gives up as soon as the host has caught SIGINT, SIGTERM or SIGHUP (the signal
 *   also cuts the current sleep short), before taking the lock and writing anything: Ctrl-C
 *   on `coral note` blocked by another holder must end it now, not once the lock is free.
 * - A lock taken by this Lua state (coord.lock, or update while its function runs) is found
 *   again by the lock file's device and inode, so append/update/read of the same path inside
 *   it reuse it instead of waiting for themselves until the timeout.
 * - Every fd is O_CLOEXEC. Every resource lives in a userdata that is closed by __close, so
 *   an error raised midway (a failing update function, out of memory) releases it: the lock
 *   ("coral.lock") and the scratch state of one call ("coral.coord.op": fds, temp file).
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
} coord_opts;

static const char *const APPEND_OPTS[] = { "header", "mode", "dir_mode", "mkdir", "timeout", "sync", NULL };
static const char *const UPDATE_OPTS[] = { "mode", "dir_mode", "mkdir", "timeout", NULL };
static const char *const LOCK_OPTS[] = { "mode", "dir_mode", "mkdir", "timeout", "shared", NULL };
static const char *const READ_OPTS[] = { "timeout", NULL };

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
}

static const char *coord_checkpath(lua_State *L, int arg) {
  size_t len;
  const char *path;
  luaL_checktype(L, arg, LUA_TSTRING);
  path = lua_tolstring(L, arg, &len);
  luaL_argcheck(L, len > 0, arg, "empty path");
  luaL_argcheck(L, strlen(path) == len, arg, "path contains a NUL byte");
  /* room for the lock suffix and for the temp name ".<base>.XXXXXX" */
  luaL_argcheck(L, len + 16 < PATH_MAX, arg, "path too long");
  return path;
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

/* The directory of `path` into buf ("." for a bare name, "/" for "/x"). */
static void coord_dirname(const char *path, char *buf, size_t size) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL)
    snprintf(buf, size, ".");
  else if (slash == path)
    snprintf(buf, size, "/");
  else
    snprintf(buf, size, "%.*s", (int)(slash - path), path);
}

/* mkdir -p of path's parent directory; directories it creates get exactly `mode`. */
static int coord_mkdirs(const char *path, int mode, coord_err *e) {
  char dir[PATH_MAX];
  char *p;
  coord_dirname(path, dir, sizeof dir);
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

/* Writes all of buf, looping on short writes and EINTR. */
static int coord_write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (n == 0) {  /* a regular file that takes nothing: treat as full */
      errno = ENOSPC;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Opens `path` (flags without O_CREAT); if it does not exist and `create`, creates it with
 * exactly `mode`, the parent directories too when o->mkdir. *created tells which happened. */
static int coord_open(const char *path, int flags, int create, int mode, const coord_opts *o,
                      int *created, coord_err *e) {
  int fd, tried_mkdir = 0;
  *created = 0;
  for (;;) {
    fd = open(path, flags | O_CLOEXEC);
    if (fd >= 0)
      return fd;
    if (errno == EINTR)
      continue;
    if (errno != ENOENT || !create)
      return coord_fail(e, errno, "open %s", path);
    fd = open(path, flags | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
    if (fd >= 0) {
      *created = 1;
      if (fchmod(fd, (mode_t)mode) != 0) {
        coord_fail(e, errno, "chmod %s", path);
        close(fd);
        return -1;
      }
      return fd;
    }
    if (errno == EEXIST || errno == EINTR)
      continue;  /* somebody else created it first: open theirs */
    if (errno == ENOENT && o->mkdir && !tried_mkdir) {
      tried_mkdir = 1;
      if (coord_mkdirs(path, o->dir_mode, e) != 0)
        return -1;
      continue;
    }
    return coord_fail(e, errno, "create %s", path);
  }
}

/* fsync of the directory of `path`. Filesystems that cannot sync a directory say EINVAL. */
static int coord_sync_dir(const char *path, int *fdp, coord_err *e) {
  char dir[PATH_MAX];
  int fd;
  coord_dirname(path, dir, sizeof dir);
  *fdp = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (*fdp < 0)
    return coord_fail(e, errno, "open directory %s", dir);
  if (fsync(*fdp) != 0 && errno != EINVAL && errno != ENOTSUP)
    return coord_fail(e, errno, "fsync directory %s", dir);
  fd = *fdp;
  *fdp = -1;
  if (close(fd) != 0 && errno != EINTR)
    return coord_fail(e, errno, "close directory %s", dir);
  return 0;
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

/* The mode of a new lock file: the one asked for, else that of the file it guards, so the
 * lock of a private 0600 file is private too. */
static int coord_lockmode(const char *path, const coord_opts *o) {
  struct stat st;
  if (o->mode_set)
    return o->mode;
  if (stat(path, &st) == 0)
    return (int)(st.st_mode & 0666);
  return o->mode;
}

/* Opens (creating it if needed) the lock file of `path` into lk->fd and locks it, waiting up
 * to o->timeout. lk->fd is set as soon as it is open, so the caller's __close cleans up
 * whatever happens after. `lock_op` only changes the wording of a timeout. */
static int coord_acquire(coord_lock *lk, const char *path, const char *lockpath, const coord_opts *o,
                         int shared, int lock_op, coord_err *e) {
  short type = shared ? F_RDLCK : F_WRLCK;
  double start = coord_now(), delay = COORD_MIN_SLEEP;
  unsigned rnd = (unsigned)getpid() * 2654435761u ^ (unsigned)(start * 1e6);
  struct stat st, now;
  int created;

  lk->shared = shared;
  for (;;) {
    lk->ofd = 1;
    lk->fd = open(lockpath, O_RDWR | O_CLOEXEC);
    if (lk->fd < 0 && shared && (errno == EACCES || errno == EROFS))
      lk->fd = open(lockpath, O_RDONLY | O_CLOEXEC);  /* a reader needs no write access */
    if (lk->fd < 0) {
      if (errno != ENOENT)
        return coord_fail(e, errno, "open %s", lockpath);
      lk->fd = coord_open(lockpath, O_RDWR, 1, coord_lockmode(path, o), o, &created, e);
      if (lk->fd < 0)
        return -1;
    }
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
    if (stat(lockpath, &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino)
      break;
    close(lk->fd);
    lk->fd = -1;
  }
  if (!shared)
    coord_write_owner(lk->fd);
  return 0;
}

/* Releases the lock (and forgets it); safe to call twice. Unlocks explicitly before closing:
 * an OFD lock stays while any dup of the fd lives (a child between fork and exec). */
static void coord_release(lua_State *L, coord_lock *lk) {
  struct flock fl;
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
  lk->fd = -1;
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

/* Pushes the handle of the lock this state holds on lockpath's file, or nil. The handle is
 * then on the stack, so it cannot be collected (and released) while the caller uses it. */
static coord_lock *coord_held(lua_State *L, const char *lockpath) {
  struct stat st;
  char key[64];
  coord_lock *lk = NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &COORD_HELD_KEY);
  lua_pushnil(L);
  if (lua_next(L, -2) != 0) {  /* only stat when this state holds some lock */
    lua_pop(L, 2);
    if (stat(lockpath, &st) == 0) {
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

/* Takes the lock for one call and pushes its handle: the lock this state already holds on
 * `path` (reused, left alone), or a new one marked to be closed when the calling C function
 * returns or raises. `keep`: findable by coord_held while held (Lua code runs under it). */
static int coord_enter(lua_State *L, const char *path, const char *lockpath, const coord_opts *o,
                       int shared, int keep, coord_err *e) {
  coord_lock *lk = coord_held(L, lockpath);
  if (lk != NULL) {
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
  if (coord_acquire(lk, path, lockpath, o, shared, 0, e) != 0)
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
/* {{{ scratch state of one call */

/* The fds and the temp file of one append/update/read, cleaned by __close whether the call
 * returns or raises: the one cleanup path. */
typedef struct coord_op {
  int fd;               /* the data file, or its directory */
  int tmpfd;            /* update's temp file */
  char tmp[PATH_MAX];   /* its name while it exists and is not renamed */
} coord_op;

static int coord_op_close(lua_State *L) {
  coord_op *op = luaL_checkudata(L, 1, COORD_OP_MT);
  if (op->fd >= 0)
    close(op->fd);
  if (op->tmpfd >= 0)
    close(op->tmpfd);
  if (op->tmp[0] != '\0')
    unlink(op->tmp);
  op->fd = op->tmpfd = -1;
  op->tmp[0] = '\0';
  return 0;
}

static coord_op *coord_newop(lua_State *L) {
  coord_op *op = lua_newuserdatauv(L, sizeof *op, 0);
  op->fd = op->tmpfd = -1;
  op->tmp[0] = '\0';
  luaL_setmetatable(L, COORD_OP_MT);
  lua_toclose(L, -1);
  return op;
}

/* Pushes the rest of fd's content. On a read error returns -1 with errno, the caller then
 * returns at once (the buffer's slot goes with the call). */
static int coord_readall(lua_State *L, int fd) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (;;) {
    char *p = luaL_prepbuffsize(&b, COORD_READ_CHUNK);
    ssize_t n = read(fd, p, COORD_READ_CHUNK);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (n == 0)
      break;
    luaL_addsize(&b, (size_t)n);
  }
  luaL_pushresult(&b);
  return 0;
}

/* Takes a failed append back out: the file it created is removed, a file that was there is
 * cut back to its old size. A failure to do so is added to the message. */
static void coord_undo(coord_op *op, const char *path, off_t size, int created, coord_err *e) {
  int r;
  const char *what = created ? "remove" : "truncate";
  if (created)
    r = unlink(path);
  else if (op->fd >= 0)
    r = ftruncate(op->fd, size);
  else
    r = truncate(path, size);
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
  const char *path, *text, *lockpath;
  int created, fd, failed = 0;
  off_t size;

  path = coord_checkpath(L, 1);
  luaL_checktype(L, 2, LUA_TSTRING);
  text = lua_tolstring(L, 2, &len);
  coord_checkopts(L, 3, &o, APPEND_OPTS);
  coral_checknargs(L, 3);
  lockpath = lua_pushfstring(L, "%s" COORD_LOCK_SUFFIX, path);
  if (coord_enter(L, path, lockpath, &o, 0, 0, &e) != 0)
    return coord_pusherr(L, "append", path, &e);
  op = coord_newop(L);

  op->fd = coord_open(path, O_WRONLY | O_APPEND, 1, o.mode, &o, &created, &e);
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
    coord_undo(op, path, size, created, &e);
    return coord_pusherr(L, "append", path, &e);
  }
  if (o.sync && created && coord_sync_dir(path, &op->fd, &e) != 0)
    return coord_pusherr(L, "append", path, &e);
  lua_pushboolean(L, 1);
  return 1;
}

/* Fills `tmp` with "<dir>/.<base>.XXXXXX" for mkostemp. */
static void coord_tmpname(const char *path, char *tmp, size_t size) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL)
    snprintf(tmp, size, ".%s.XXXXXX", path);
  else
    snprintf(tmp, size, "%.*s/.%s.XXXXXX", (int)(slash - path), path, slash + 1);
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
  const char *path, *lockpath, *text;
  int mode, fd, old;

  path = coord_checkpath(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  coord_checkopts(L, 3, &o, UPDATE_OPTS);
  coral_checknargs(L, 3);
  lua_settop(L, 3);
  lockpath = lua_pushfstring(L, "%s" COORD_LOCK_SUFFIX, path);
  if (coord_enter(L, path, lockpath, &o, 0, 1, &e) != 0)
    return coord_pusherr(L, "update", path, &e);
  op = coord_newop(L);

  mode = o.mode;
  op->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (op->fd < 0) {
    if (errno != ENOENT) {
      coord_fail(&e, errno, "open");
      return coord_pusherr(L, "update", path, &e);
    }
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

  coord_tmpname(path, op->tmp, sizeof op->tmp);
  op->tmpfd = mkostemp(op->tmp, O_CLOEXEC);
  if (op->tmpfd < 0) {
    coord_fail(&e, errno, "create %s", op->tmp);
    op->tmp[0] = '\0';
    return coord_pusherr(L, "update", path, &e);
  }
  if (fchmod(op->tmpfd, (mode_t)mode) != 0) {
    coord_fail(&e, errno, "chmod %s", op->tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  if (coord_write_all(op->tmpfd, text, len) != 0) {
    coord_fail(&e, errno, "write %s", op->tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  if (fsync(op->tmpfd) != 0) {
    coord_fail(&e, errno, "fsync %s", op->tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  fd = op->tmpfd;
  op->tmpfd = -1;
  if (close(fd) != 0 && errno != EINTR) {
    coord_fail(&e, errno, "close %s", op->tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  if (rename(op->tmp, path) != 0) {
    coord_fail(&e, errno, "rename %s", op->tmp);
    return coord_pusherr(L, "update", path, &e);
  }
  op->tmp[0] = '\0';
  /* the new content is in place; this makes the rename itself survive a crash */
  if (coord_sync_dir(path, &op->fd, &e) != 0)
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
  const char *path, *lockpath;

  path = coord_checkpath(L, 1);
  coord_checkopts(L, 2, &o, READ_OPTS);
  coral_checknargs(L, 2);
  lua_settop(L, 2);
  lockpath = lua_pushfstring(L, "%s" COORD_LOCK_SUFFIX, path);
  /* Neither the file nor its lock file: nobody has written it through coord, and a reader
   * does not create a lock file for a file that is not there. */
  if (access(lockpath, F_OK) != 0 && errno == ENOENT && access(path, F_OK) != 0 && errno == ENOENT) {
    coord_fail(&e, ENOENT, "open");
    return coord_pusherr(L, "read", path, &e);
  }
  if (coord_enter(L, path, lockpath, &o, 1, 0, &e) != 0)
    return coord_pusherr(L, "read", path, &e);
  op = coord_newop(L);
  op->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (op->fd < 0) {
    coord_fail(&e, errno, "open");
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
  const char *path, *lockpath;

  path = coord_checkpath(L, 1);
  coord_checkopts(L, 2, &o, LOCK_OPTS);
  coral_checknargs(L, 2);
  lua_settop(L, 2);
  lockpath = lua_pushfstring(L, "%s" COORD_LOCK_SUFFIX, path);
  if (coord_held(L, lockpath) != NULL) {
    snprintf(e.code, sizeof e.code, "EDEADLK");
    snprintf(e.msg, sizeof e.msg, "already locked by this Lua state");
    return coord_pusherr(L, "lock", path, &e);
  }
  lua_pop(L, 1);
  lk = coord_newlock(L, path);
  if (coord_acquire(lk, path, lockpath, &o, o.shared, 1, &e) != 0) {
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
