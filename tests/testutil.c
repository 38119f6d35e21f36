#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int tu_pass, tu_fail;

/* A NaN or infinity anywhere makes the result NaN (which fails every `err < tol` check). */
double tu_max_rel_err(const float *a, const float *b, size_t n, double floor) {
  double md = 0, mb = floor;
  int bad = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!isfinite(d)) bad = 1;
    else if (d > md) md = d;
    if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
  }
  return bad ? NAN : md / mb;
}

double tu_max_rel_err_d(const double *a, const double *b, size_t n, double floor) {
  double md = 0, mb = floor;
  int bad = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs(a[i] - b[i]);
    if (!isfinite(d)) bad = 1;
    else if (d > md) md = d;
    if (fabs(b[i]) > mb) mb = fabs(b[i]);
  }
  return bad ? NAN : md / mb;
}

const char *tu_tmpdir(const char *tag) {
  static char buf[8][512];
  static int k;
  char *p = buf[k++ & 7];
  const char *t = getenv("TMPDIR");
  snprintf(p, 512, "%s/rn-%s-XXXXXX", t && *t ? t : "/tmp", tag);
  if (!mkdtemp(p)) {
    perror("mkdtemp");
    exit(2);
  }
  return p;
}

int tu_done(const char *name) {
  printf("%s: %d passed, %d failed\n", name, tu_pass, tu_fail);
  return tu_fail ? 1 : 0;
}
