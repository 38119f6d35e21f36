/* core: status codes, error messages, aligned allocation, counter-based RNG, timers. */
#ifndef RN_CORE_H
#define RN_CORE_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef enum {
  RN_OK = 0,
  RN_EINVAL = 1,   /* bad option / bad argument value from the user */
  RN_EIO = 2,      /* file missing, unreadable, unwritable, disk full */
  RN_EFORMAT = 3,  /* file readable but contents wrong: dtype, shape, range, checksum, version */
  RN_ENOMEM = 4,
  RN_EMPI = 5,     /* communication failure */
  RN_ESTOP = 6     /* not an error: a stop was requested (signal) */
} rn_status;

/* Error message carrier: every function touching files/user input/network fills it. The message
 * must name the file, the field and the value at fault. */
typedef struct {
  rn_status code;
  char msg[1024];
} rn_err;

/* Sets e->code and e->msg (printf style), returns code. e may be NULL. */
rn_status rn_err_set(rn_err *e, rn_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefixes context to an existing message ("while loading X: <old msg>"). */
rn_status rn_err_prefix(rn_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *rn_status_name(rn_status s);

/* Programmer errors: abort with file:line. Always on (not compiled out by NDEBUG). */
#define RN_ASSERT(cond)                                                                   \
  do {                                                                                    \
    if (!(cond)) rn_assert_fail(#cond, __FILE__, __LINE__);                               \
  } while (0)
_Noreturn void rn_assert_fail(const char *what, const char *file, int line);

/* Aligned (64-byte) allocation, zero-filled and touched once (no page faults later).
 * Aborts with a clear message when out of memory. */
void *rn_alloc(size_t bytes);
void rn_free(void *p);
/* A large arena of `bytes` (anonymous mmap, page aligned) of which only the first `touch` bytes are
 * zero-filled and touched now; the rest costs no memory until first written (then zero-filled by
 * the kernel). Freed with rn_free_arena(p, bytes). */
void *rn_alloc_arena(size_t bytes, size_t touch);
void rn_free_arena(void *p, size_t bytes);

/* Round n up to a multiple of 16 floats (64 bytes). */
static inline size_t rn_align16(size_t n) { return (n + 15) & ~(size_t)15; }

/* ---- counter-based RNG (deterministic from (key, counter), independent of thread/rank) ---- */
/* 64-bit mix (splitmix64 finaliser). */
static inline uint64_t rn_mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
/* Key derived from a seed and up to three stream identifiers, e.g. (seed, epoch, sample). */
static inline uint64_t rn_key(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return rn_mix64(rn_mix64(rn_mix64(seed ^ 0x5851F42D4C957F2Dull) ^ a) ^ (b * 0x2545F4914F6CDD1Dull)) ^
         rn_mix64(c + 0x1234567ull);
}
/* A small sequential generator over a key; state is just (key, ctr), so it can be saved. */
typedef struct {
  uint64_t key, ctr;
} rn_rng;
static inline rn_rng rn_rng_make(uint64_t key) { rn_rng r = {key, 0}; return r; }
static inline uint64_t rn_rng_u64(rn_rng *r) { return rn_mix64(r->key ^ rn_mix64(r->ctr++)); }
/* Uniform in [0,1) with 24 random bits (exact in float). */
static inline float rn_rng_uniform(rn_rng *r) { return (float)(rn_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }
/* Uniform integer in [0, n). */
static inline uint64_t rn_rng_below(rn_rng *r, uint64_t n) { return n ? rn_rng_u64(r) % n : 0; }
/* Standard normal (Box-Muller). */
float rn_rng_normal(rn_rng *r);

/* Debian's parallel HDF5 is not thread-safe: every HDF5 call in the library (data loader threads,
 * checkpoint writer, tools) is made while holding this process-wide (recursive) lock. */
void rn_h5_lock(void);
void rn_h5_unlock(void);

/* ---- timers ---- */
double rn_now(void); /* monotonic seconds */

/* Parse helpers that report bad values clearly ("option --batch: 'abc' is not an integer"). */
rn_status rn_parse_int(const char *what, const char *s, long lo, long hi, long *out, rn_err *e);
rn_status rn_parse_double(const char *what, const char *s, double *out, rn_err *e);

#endif
