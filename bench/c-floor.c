/* A runner that keeps a noop task's records as coral keeps them and does nothing else: the
 * "c-floor" rows of `make bench`. What bench/lua-floor.lua does, in C and nothing more: the
 * tasks of a workload's tasks.tsv run as a dependency graph (ready tasks in file order, as make
 * takes them), up to W processes at once, each found on PATH (posix_spawnp, as coral and make
 * search it); per task a dir under PROJECT/run/tasks, the attempt's stdout and stderr files
 * opened there (O_NOFOLLOW, as coral opens them), three journal lines (spawn, written before the
 * process exists; start; end) and a joblog row, each formatted into one buffer and written with
 * one write(2) before the next spawn. No Lua, no policy, no allocation a task. Made for the
 * bench's plans: ids are written into the journal unescaped, and a failed task's dependents
 * still run (a noop plan does not fail; the exit status says whether one did).
 *
 * Between coral and this row is everything coral does above its records; between this row and
 * make is what the records themselves cost on the machine's file system. --dir-only makes the
 * task dir but no files (the child's stdout and stderr are the runner's): the cost of a dir
 * every task is given (coral's CORAL_TASK_DIR) with its files made only when written to.
 * --no-files makes neither.
 *
 *   c-floor TASKS.TSV W PROJECT_DIR [--dir-only | --no-files]
 * TASKS.TSV: one task a line, "id<TAB>dep dep ...<TAB>arg arg ..." (bench/workloads.lua). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

typedef struct {
  char *id;
  char **argv;
  int *dependents, ndependents;
  int waiting;              /* dependencies not ended yet */
  double started;
} task;

/* A process running: W of these, looked through at each exit. */
typedef struct {
  pid_t pid;
  int task;
} slot;

static task *tasks;
static int ntasks;

static void die(const char *what) {
  fprintf(stderr, "c-floor: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void *grow(void *p, size_t n, size_t size) {
  void *q = realloc(p, n * size);
  if (q == NULL) die("realloc");
  return q;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Splits s at each of `seps` into a NULL-terminated list (s is cut in place). */
static char **split(char *s, const char *seps) {
  char **list = NULL, *tok, *save = NULL;
  int n = 0;
  for (tok = strtok_r(s, seps, &save); tok != NULL; tok = strtok_r(NULL, seps, &save)) {
    list = grow(list, (size_t)n + 2, sizeof *list);
    list[n++] = tok;
  }
  list = grow(list, (size_t)n + 1, sizeof *list);
  list[n] = NULL;
  return list;
}

static int find(const char *id) {
  for (int i = 0; i < ntasks; i++)
    if (strcmp(tasks[i].id, id) == 0)
      return i;
  fprintf(stderr, "c-floor: unknown dependency %s\n", id);
  exit(1);
}

static void load(const char *path) {
  FILE *f = fopen(path, "r");
  char *line = NULL;
  size_t cap = 0;
  char ***deps = NULL;
  if (f == NULL) die(path);
  while (getline(&line, &cap, f) > 0) {
    char *rest = strdup(line), *id, *deps_text, *argv_text;
    task *t;
    rest[strcspn(rest, "\n")] = '\0';
    id = strsep(&rest, "\t");
    deps_text = strsep(&rest, "\t");
    argv_text = strsep(&rest, "\t");
    if (argv_text == NULL) {
      fprintf(stderr, "c-floor: %s: a line is not id<TAB>deps<TAB>argv\n", path);
      exit(1);
    }
    tasks = grow(tasks, (size_t)ntasks + 1, sizeof *tasks);
    deps = grow(deps, (size_t)ntasks + 1, sizeof *deps);
    t = &tasks[ntasks];
    memset(t, 0, sizeof *t);
    t->id = id;
    t->argv = split(argv_text, " ");
    deps[ntasks] = split(deps_text, " ");
    ntasks++;
  }
  free(line);
  fclose(f);
  for (int i = 0; i < ntasks; i++) {
    for (char **d = deps[i]; *d != NULL; d++) {
      task *on = &tasks[find(*d)];
      on->dependents = grow(on->dependents, (size_t)on->ndependents + 1, sizeof *on->dependents);
      on->dependents[on->ndependents++] = i;
      tasks[i].waiting++;
    }
  }
}

/* The journal and the joblog: lines gather in one buffer each, written whole with one write(2)
 * (O_APPEND) before the next process starts, as coral's are. */
typedef struct {
  int fd;
  size_t len;
  char buf[1 << 16];
} record_file;

static record_file journal, joblog;

static void add(record_file *r, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(r->buf + r->len, sizeof r->buf - r->len, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof r->buf - r->len) {
    fprintf(stderr, "c-floor: record buffer full\n");
    exit(1);
  }
  r->len += (size_t)n;
}

static void flush(record_file *r) {
  if (r->len > 0 && write(r->fd, r->buf, r->len) != (ssize_t)r->len) die("write");
  r->len = 0;
}

static void open_record(record_file *r, const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  r->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (r->fd < 0) die(path);
}

int main(int argc, char **argv) {
  enum { FILES, DIR_ONLY, NO_FILES } mode = FILES;
  int w, running = 0, ended = 0, failed = 0, *ready, nready = 0, next_ready = 0;
  slot *slots;
  char run_dir[4096], path[4096 + 64];
  if (argc == 5 && strcmp(argv[4], "--dir-only") == 0)
    mode = DIR_ONLY;
  else if (argc == 5 && strcmp(argv[4], "--no-files") == 0)
    mode = NO_FILES;
  if (argc < 4 || (argc == 5 && mode == FILES) || argc > 5 || (w = atoi(argv[2])) < 1) {
    fprintf(stderr, "usage: c-floor TASKS.TSV W PROJECT_DIR [--dir-only | --no-files]\n");
    return 2;
  }
  load(argv[1]);
  snprintf(run_dir, sizeof run_dir, "%s/run", argv[3]);
  if (mkdir(run_dir, 0700) != 0) die(run_dir);
  snprintf(path, sizeof path, "%s/tasks", run_dir);
  if (mkdir(path, 0700) != 0) die(path);
  open_record(&journal, run_dir, "journal.jsonl");
  open_record(&joblog, run_dir, "joblog.tsv");

  ready = grow(NULL, (size_t)ntasks + 1, sizeof *ready);
  slots = calloc((size_t)w, sizeof *slots);
  if (slots == NULL) die("calloc");
  for (int i = 0; i < ntasks; i++)
    if (tasks[i].waiting == 0)
      ready[nready++] = i;

  while (ended < ntasks) {
    while (running < w && next_ready < nready) {
      int index = ready[next_ready++];
      task *t = &tasks[index];
      pid_t child;
      posix_spawn_file_actions_t actions;
      int out = -1, err = -1;
      posix_spawn_file_actions_init(&actions);
      if (mode != NO_FILES) {
        int len = snprintf(path, sizeof path, "%s/tasks/%s", run_dir, t->id);
        if (mkdir(path, 0700) != 0) die(path);
        if (mode == FILES) {
          strcpy(path + len, "/attempt-1.out");
          out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
          strcpy(path + len, "/attempt-1.err");
          err = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
          if (out < 0 || err < 0) die(path);
          posix_spawn_file_actions_adddup2(&actions, out, 1);
          posix_spawn_file_actions_adddup2(&actions, err, 2);
        }
      }
      add(&journal, "{\"event\":\"spawn\",\"t\":%.6f,\"task\":\"%s\",\"attempt\":1}\n", now(), t->id);
      flush(&journal);
      flush(&joblog);
      t->started = now();
      errno = posix_spawnp(&child, t->argv[0], &actions, NULL, t->argv, environ);
      if (errno != 0) die(t->argv[0]);
      posix_spawn_file_actions_destroy(&actions);
      if (out >= 0) close(out);
      if (err >= 0) close(err);
      add(&journal, "{\"event\":\"start\",\"t\":%.6f,\"task\":\"%s\",\"attempt\":1,\"pid\":%d}\n", now(), t->id,
          (int)child);
      for (int k = 0; k < w; k++)
        if (slots[k].pid == 0) {
          slots[k].pid = child;
          slots[k].task = index;
          break;
        }
      running++;
    }
    if (running == 0) {
      fprintf(stderr, "c-floor: nothing ready and nothing running (a cycle?)\n");
      return 1;
    }
    int status, k;
    pid_t pid = wait(&status);
    if (pid < 0) die("wait");
    for (k = 0; k < w && slots[k].pid != pid; k++)
      ;
    if (k == w) continue;   /* not ours */
    task *t = &tasks[slots[k].task];
    slots[k].pid = 0;
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    double at = now();
    running--;
    ended++;
    if (!ok) failed++;
    add(&journal, "{\"event\":\"end\",\"t\":%.6f,\"task\":\"%s\",\"attempt\":1,\"exit\":%d,\"duration\":%.6f,"
        "\"outcome\":\"%s\"}\n", at, t->id, code, at - t->started, ok ? "succeeded" : "failed");
    add(&joblog, "%s\t1\t%.3f\t%.3f\t%d\t\t%s\n", t->id, t->started, at - t->started, code,
        ok ? "succeeded" : "failed");
    for (int d = 0; d < t->ndependents; d++)
      if (--tasks[t->dependents[d]].waiting == 0)
        ready[nready++] = t->dependents[d];
  }
  flush(&journal);
  flush(&joblog);
  return failed == 0 ? 0 : 1;
}
