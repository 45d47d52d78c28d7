/* The machine's floor for running N short processes with W in flight: posix_spawn + waitpid
 * of a program (default /bin/true), nothing else. coral's per-task overhead is shown next to it.
 *   spawn-floor N W [program]   prints: wall_seconds user_seconds sys_seconds
 */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000, w = argc > 2 ? atol(argv[2]) : 2, started = 0, done = 0;
  char *prog = argc > 3 ? argv[3] : "/bin/true";
  char *args[] = { prog, NULL };
  double t0 = now();
  struct rusage ru;
  while (done < n) {
    while (started < n && started - done < w) {
      pid_t pid;
      if (posix_spawn(&pid, prog, NULL, NULL, args, environ) != 0) { perror("posix_spawn"); return 1; }
      started++;
    }
    int status;
    if (wait(&status) < 0) { perror("wait"); return 1; }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "child failed\n"); return 1; }
    done++;
  }
  double wall = now() - t0;
  getrusage(RUSAGE_CHILDREN, &ru);
  printf("%.6f %.6f %.6f\n", wall, (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
  return 0;
}
