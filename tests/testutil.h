/* Minimal test helpers: every CHECK counts; tu_done() prints a summary and returns the exit code. */
#ifndef RN_TESTUTIL_H
#define RN_TESTUTIL_H
#include <stdio.h>
#include <stddef.h>

extern int tu_pass, tu_fail;
#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    if (cond) {                                                                 \
      tu_pass++;                                                                \
    } else {                                                                    \
      tu_fail++;                                                                \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
      fprintf(stderr, __VA_ARGS__);                                             \
      fprintf(stderr, "\n");                                                    \
    }                                                                           \
  } while (0)
/* Max relative error max|a-b| / max(max|b|, floor); prints nothing. */
double tu_max_rel_err(const float *a, const float *b, size_t n, double floor);
double tu_max_rel_err_d(const double *a, const double *b, size_t n, double floor);
/* Make a fresh empty temporary directory (under $TMPDIR or /tmp); returns static-lifetime path. */
const char *tu_tmpdir(const char *tag);
int tu_done(const char *name);
#endif
