/* check.h: the TAP-like reporting shared by the C tests: "ok N - name" /
 * "not ok N - name: detail", and a closing "N passed, N failed" line. */
#ifndef TIDE_CHECK_H
#define TIDE_CHECK_H

#include <stdio.h>

static int failures, count;

static void check(int cond, const char *name, const char *detail) {
  count++;
  if (cond) {
    printf("ok %d - %s\n", count, name);
  } else {
    failures++;
    printf("not ok %d - %s%s%s\n", count, name, detail ? ": " : "",
           detail ? detail : "");
  }
  fflush(stdout);
}

/* Prints the summary; the process's exit status. */
static int check_summary(void) {
  printf("%d passed, %d failed\n", count - failures, failures);
  return failures != 0;
}

#endif
