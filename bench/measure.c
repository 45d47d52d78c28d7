/* Runs one command and prints what wait4 says of it: "wall_seconds cpu_seconds maxrss_kb exit".
 *   measure [-o FILE] PROGRAM [ARG...]   (stdout of the program to FILE, default /dev/null)
 * bench/bench.lua starts every measured command through this small program rather than
 * directly: on Linux a child started by vfork/posix_spawn inherits its parent's RSS high-water
 * mark at exec, so a large parent (the bench driver) would show up as every child's peak RSS.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  const char *out = "/dev/null";
  int i = 1;
  if (argc > 2 && strcmp(argv[1], "-o") == 0) { out = argv[2]; i = 3; }
  if (i >= argc) { fprintf(stderr, "usage: measure [-o FILE] PROGRAM [ARG...]\n"); return 2; }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid;
  double t0 = now();
  int err = posix_spawnp(&pid, argv[i], &fa, NULL, argv + i, environ);
  if (err != 0) { fprintf(stderr, "measure: spawn %s: %s\n", argv[i], strerror(err)); return 2; }
  int status;
  struct rusage ru;
  if (wait4(pid, &status, 0, &ru) < 0) { perror("measure: wait4"); return 2; }
  double wall = now() - t0;
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  printf("%.6f %.6f %ld %d\n", wall,
         (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6, ru.ru_maxrss, code);
  return 0;
}
