#include "rn/core.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <pthread.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

rn_status rn_err_set(rn_err *e, rn_status code, const char *fmt, ...) {
  if (!e) return code;
  e->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  return code;
}

rn_status rn_err_prefix(rn_err *e, const char *fmt, ...) {
  if (!e) return RN_OK;
  char pre[256], old[sizeof e->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof pre, fmt, ap);
  va_end(ap);
  memcpy(old, e->msg, sizeof old);
  size_t lp = strlen(pre);
  if (lp + 2 >= sizeof e->msg) lp = sizeof e->msg - 3;
  memcpy(e->msg, pre, lp);
  e->msg[lp] = ':', e->msg[lp + 1] = ' ';
  size_t lo = strnlen(old, sizeof old);
  if (lp + 2 + lo >= sizeof e->msg) lo = sizeof e->msg - lp - 3;
  memcpy(e->msg + lp + 2, old, lo);
  e->msg[lp + 2 + lo] = 0;
  return e->code;
}

const char *rn_status_name(rn_status s) {
  switch (s) {
    case RN_OK: return "ok";
    case RN_EINVAL: return "invalid argument";
    case RN_EIO: return "I/O error";
    case RN_EFORMAT: return "bad file contents";
    case RN_ENOMEM: return "out of memory";
    case RN_EMPI: return "communication error";
    case RN_ESTOP: return "stop requested";
  }
  return "unknown";
}

void rn_assert_fail(const char *what, const char *file, int line) {
  fprintf(stderr, "resnet-mpi: internal error: assertion '%s' failed at %s:%d\n", what, file, line);
  fflush(stderr);
  abort();
}

/* Every allocation carries 16 KiB of zeroed slack after its end: BLIS's narrow (6x16) kernels may
 * read up to one row of A past the last row they use (measured in Debian's BLIS 0.9), which must
 * not fault at a page boundary. */
#define RN_ALLOC_SLACK 16384

/* Transparent huge pages (this machine's kernel, like most, has THP in "madvise" mode: only
 * regions that ask get them). The training step streams over tensors of up to ~100 MB; with 4 KB
 * pages every 4 KB of a stream costs a TLB miss. RN_HUGEPAGES=0 turns it off (A/B). */
#define RN_HUGE (2u << 20)
static int huge_on(void) {
  static int on = -1;
  if (on < 0) {
    const char *v = getenv("RN_HUGEPAGES");
    on = !(v && v[0] == '0');
  }
  return on;
}
/* Huge pages for the whole 2 MB pages of [p, p + len) (the caller touches all of it). */
static void advise_huge(void *p, size_t len) {
  uintptr_t a = ((uintptr_t)p + RN_HUGE - 1) & ~(uintptr_t)(RN_HUGE - 1), e = ((uintptr_t)p + len) & ~(uintptr_t)(RN_HUGE - 1);
  if (huge_on() && e > a) madvise((void *)a, e - a, MADV_HUGEPAGE);
}

void *rn_alloc(size_t bytes) {
  if (bytes == 0) bytes = 64;
  size_t sz = ((bytes + 63) & ~(size_t)63) + RN_ALLOC_SLACK;
  const int big = sz >= 4 * (size_t)RN_HUGE; /* parameters, gradients, momentum, workspaces */
  void *p = aligned_alloc(64, sz);
  if (!p) {
    fprintf(stderr, "resnet-mpi: out of memory allocating %zu bytes\n", bytes);
    abort();
  }
  if (big) advise_huge(p, sz);
  memset(p, 0, sz);
  return p;
}

void rn_free(void *p) { free(p); }

void *rn_alloc_arena(size_t bytes, size_t touch) {
  const size_t sz = ((bytes + 63) & ~(size_t)63) + RN_ALLOC_SLACK;
  void *p = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "resnet-mpi: out of memory mapping %zu bytes: %s\n", bytes, strerror(errno));
    abort();
  }
  /* huge pages for the touched part only (whole 2 MB pages), so the untouched tail (the lazy BN
   * outputs, see rn_model.act_touch_floats) stays unbacked */
  advise_huge(p, touch < sz ? touch : sz);
  memset(p, 0, touch < sz ? touch : sz);
  return p;
}

void rn_free_arena(void *p, size_t bytes) {
  if (p) munmap(p, ((bytes + 63) & ~(size_t)63) + RN_ALLOC_SLACK);
}

float rn_rng_normal(rn_rng *r) {
  float u1 = rn_rng_uniform(r), u2 = rn_rng_uniform(r);
  if (u1 < 1e-12f) u1 = 1e-12f;
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

double rn_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

rn_status rn_parse_int(const char *what, const char *s, long lo, long hi, long *out, rn_err *e) {
  if (!s || !*s) return rn_err_set(e, RN_EINVAL, "%s: empty value (expected an integer)", what);
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end) return rn_err_set(e, RN_EINVAL, "%s: '%s' is not an integer", what, s);
  if (v < lo || v > hi)
    return rn_err_set(e, RN_EINVAL, "%s: %ld is out of range [%ld, %ld]", what, v, lo, hi);
  *out = v;
  return RN_OK;
}

rn_status rn_parse_double(const char *what, const char *s, double *out, rn_err *e) {
  if (!s || !*s) return rn_err_set(e, RN_EINVAL, "%s: empty value (expected a number)", what);
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || !isfinite(v)) return rn_err_set(e, RN_EINVAL, "%s: '%s' is not a finite number", what, s);
  *out = v;
  return RN_OK;
}

static pthread_mutex_t g_h5_mutex = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
void rn_h5_lock(void) { pthread_mutex_lock(&g_h5_mutex); }
void rn_h5_unlock(void) { pthread_mutex_unlock(&g_h5_mutex); }
