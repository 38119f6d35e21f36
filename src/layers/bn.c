/* Batch norm 2d over NHWC rows (m = n*h*w rows of c channels), PyTorch conventions, with an
 * optional fused ReLU (d->relu).
 *
 * Per-channel sums are accumulated in double over a FIXED partition of the rows into G groups
 * (G depends on c and m only); inside a group, tiles of TILE = 16 rows in row order, each tile
 * summed per channel into two double accumulators (even and odd rows) that are added into the
 * group's sums; groups added in order. So the result is bitwise the same whatever the thread
 * count. Partial sums live on the stack (G*2*c doubles, <= 256 KB), nothing is allocated. The
 * backward sums sum g and g*x (mean subtracted afterwards, in double). The elementwise passes use float
 * coefficients per channel (FMA).
 *
 * Fused ReLU: the forward applies max(0, .) in the affine pass (NaN propagates); the backward reads
 * the forward output y and uses g = (y > 0 ? dy : 0) instead of dy in the channel-sum pass and in
 * the dx pass. g is exactly what rn_relu_backward would have written, and every later operation is
 * the same, so fused and unfused (ReLU node + plain BN) results are bitwise identical.
 *
 * With AVX-512 the elementwise passes use 16-channel float vectors and the sums 8-channel double
 * vectors (masked for the last, partial block); the portable fallback does the same arithmetic in
 * scalar code (deterministic as well, not bitwise equal to the AVX-512 build). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "rn/kernels.h"
#include "rn/layers.h"

#define MAX_C 65536
#define TILE 16 /* rows per tile of the channel sums (part of the fixed summation order) */
#define CB 512  /* channels per block of the row-by-row channel sums (not part of the order) */

static int groups_for(int c, int64_t m) {
  int g = c <= 2048 ? 8 : c <= 8192 ? 2 : 1;
  if (m < (int64_t)g * 64) g = 1; /* tiny inputs: one group */
  return g;
}

static int nthreads_for(int64_t count) {
  int t = rn_blas_threads();
  return count < 32768 ? 1 : (t < 1 ? 1 : t);
}

#if defined(__AVX512F__)
static inline __mmask16 tail16(int left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }
static inline __m512d lo_pd(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
static inline __m512d hi_pd(__m512 v) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
/* a[i][j..j+16) (masked), zeroed where mask[i][j] > 0 fails when has_mask */
static inline __attribute__((always_inline)) __m512 load_g(const float *a, const float *mask, size_t o, __mmask16 k,
                                                           const int has_mask) {
  __m512 v = _mm512_maskz_loadu_ps(k, a + o);
  if (has_mask) {
    __mmask16 pos = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(k, mask + o), _mm512_setzero_ps(), _CMP_GT_OQ);
    v = _mm512_maskz_mov_ps(pos, v);
  }
  return v;
}
/* Store of 16 floats: unmasked for a whole vector (c a multiple of 16: a full, aligned 64-byte
 * line), masked for the last, partial block. */
static inline __attribute__((always_inline)) void store16(float *p, __mmask16 k, __m512 v) {
  if (k == (__mmask16)0xFFFF) _mm512_storeu_ps(p, v);
  else _mm512_mask_storeu_ps(p, k, v);
}
#endif

/* Sums over rows [r0, r1) into p1/p2 (zero on entry), in double: v = a, or with mask (fused ReLU)
 * v = (mask > 0 ? a : 0); p1 += v, p2 += v * (has_b ? b : v) (float products are exact in
 * double). Fixed order: per tile of TILE rows and per 8 channels, even and odd rows into two double
 * accumulators, added into p at the end of the tile. 8 channels per vector, converted to double
 * straight from memory (vcvtps2pd with a memory operand): this runs at about the speed of float
 * sums, whereas float partial sums (tried: over 8 rows) lose accuracy that matters. The gradients
 * of a deep, untrained net at a small batch are ill-conditioned in the BN statistics: with float
 * partial sums of x and x^2 ResNet-18 b2's gradients were 1000x further from float64 than with
 * double ones, some beyond 3x PyTorch's own float32 error. */
static inline __attribute__((always_inline)) void sums_rows(int c, int64_t r0, int64_t r1, const float *a,
                                                            const float *b, const float *mask, double *p1,
                                                            double *p2, const int has_b, const int has_mask) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  /* Row by row (the rows of a tile are contiguous memory, read once, in order) with the tile's
   * accumulators in an L1 array acc[e][j] (e: even/odd row), per block of up to CB channels: the
   * same additions per channel as 8 channels x TILE rows in registers, which read each row 1-4 KB
   * apart and ran at ~17 GB/s, against ~24 row by row and ~29 (the read bandwidth) with a software
   * prefetch 1 KB ahead (56x56x256, b32, 2 threads: dy, y and x from memory). */
  double acc[4][CB] __attribute__((aligned(64)));
  const size_t pf = c <= CB ? 256 : (size_t)c; /* prefetch 1 KB ahead (or the next row's block) */
  for (int j0 = 0; j0 < c; j0 += CB) {
    const int cb = c - j0 < CB ? c - j0 : CB;
    for (int64_t t0 = r0; t0 < r1; t0 += TILE) {
      const int64_t t1 = t0 + TILE < r1 ? t0 + TILE : r1;
      for (int e = 0; e < 4; e++) memset(acc[e], 0, (size_t)cb * sizeof(double));
      for (int64_t i = t0; i < t1; i++) {
        double *A1 = acc[(i - t0) & 1], *A2 = acc[2 + ((i - t0) & 1)];
        for (int j = 0; j < cb; j += 8) {
          const __mmask8 k = cb - j >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (cb - j)) - 1);
          const size_t o = (size_t)i * c + j0 + j;
          if (!(j & 15)) {
            if (has_mask) _mm_prefetch((const char *)(mask + o + pf), _MM_HINT_T0);
            _mm_prefetch((const char *)(a + o + pf), _MM_HINT_T0);
            if (has_b) _mm_prefetch((const char *)(b + o + pf), _MM_HINT_T0);
          }
          __mmask8 kv = k;
          if (has_mask) kv = _mm256_mask_cmp_ps_mask(k, _mm256_maskz_loadu_ps(k, mask + o), _mm256_setzero_ps(), _CMP_GT_OQ);
          const __m512d v = _mm512_maskz_cvtps_pd(kv, _mm256_maskz_loadu_ps(kv, a + o));
          _mm512_store_pd(A1 + j, _mm512_add_pd(_mm512_load_pd(A1 + j), v));
          const __m512d w = has_b ? _mm512_maskz_cvtps_pd(k, _mm256_maskz_loadu_ps(k, b + o)) : v;
          _mm512_store_pd(A2 + j, _mm512_fmadd_pd(v, w, _mm512_load_pd(A2 + j)));
        }
      }
      for (int j = 0; j < cb; j += 8) {
        const __mmask8 k = cb - j >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (cb - j)) - 1);
        double *P1 = p1 + j0 + j, *P2 = p2 + j0 + j;
        _mm512_mask_storeu_pd(P1, k, _mm512_add_pd(_mm512_maskz_loadu_pd(k, P1), _mm512_add_pd(_mm512_load_pd(acc[0] + j), _mm512_load_pd(acc[1] + j))));
        _mm512_mask_storeu_pd(P2, k, _mm512_add_pd(_mm512_maskz_loadu_pd(k, P2), _mm512_add_pd(_mm512_load_pd(acc[2] + j), _mm512_load_pd(acc[3] + j))));
      }
    }
  }
#else
  for (int64_t t0 = r0; t0 < r1; t0 += TILE) {
    const int64_t t1 = t0 + TILE < r1 ? t0 + TILE : r1;
    for (int j = 0; j < c; j++) {
      double s1[2] = {0, 0}, s2[2] = {0, 0};
      for (int64_t i = t0; i < t1; i++) {
        const int e = (int)((i - t0) & 1);
        const size_t o = (size_t)i * c + j;
        const double v = has_mask ? (mask[o] > 0.0f ? a[o] : 0.0f) : a[o];
        s1[e] += v;
        s2[e] = fma(v, has_b ? (double)b[o] : v, s2[e]);
      }
      p1[j] += s1[0] + s1[1];
      p2[j] += s2[0] + s2[1];
    }
  }
#endif
}

/* Per-channel sums over m rows (rows split into G fixed groups, summed as in sums_rows, groups
 * added in order): s1 = sum v, s2 = sum v * (b ? b : v), v = a, or with mask v = (mask > 0 ? a : 0). */
static void channel_sums(int c, int64_t m, const float *a, const float *b, const float *mask, double *s1,
                         double *s2) {
  const int G = groups_for(c, m);
  double part[G][2][c];
  const int T = nthreads_for(m * c);
#pragma omp parallel for num_threads(T < G ? T : G) schedule(static)
  for (int g = 0; g < G; g++) {
    double *p1 = part[g][0], *p2 = part[g][1];
    for (int j = 0; j < c; j++) p1[j] = 0, p2[j] = 0;
    int64_t r0 = m * g / G, r1 = m * (g + 1) / G;
    if (!b) sums_rows(c, r0, r1, a, NULL, NULL, p1, p2, 0, 0);
    else if (mask) sums_rows(c, r0, r1, a, b, mask, p1, p2, 1, 1);
    else sums_rows(c, r0, r1, a, b, NULL, p1, p2, 1, 0);
  }
  for (int j = 0; j < c; j++) s1[j] = 0, s2[j] = 0;
  for (int g = 0; g < G; g++)
    for (int j = 0; j < c; j++) s1[j] += part[g][0][j], s2[j] += part[g][1][j];
}

/* Synchronised BN: when set, training-mode statistics are summed over all ranks. */
static rn_bn_reduce_fn g_sync_fn;
static void *g_sync_ctx;
void rn_bn_set_sync(rn_bn_reduce_fn fn, void *ctx) {
  g_sync_fn = fn;
  g_sync_ctx = ctx;
}

/* Sums (a[c], b[c], count) over ranks in place; returns the total count. */
static double sync_sums(int c, double *a, double *b, int64_t m) {
  if (!g_sync_fn) return (double)m;
  double buf[2 * c + 1];
  memcpy(buf, a, sizeof(double) * (size_t)c);
  memcpy(buf + c, b, sizeof(double) * (size_t)c);
  buf[2 * c] = (double)m;
  g_sync_fn(g_sync_ctx, buf, 2 * c + 1);
  memcpy(a, buf, sizeof(double) * (size_t)c);
  memcpy(b, buf + c, sizeof(double) * (size_t)c);
  return buf[2 * c];
}

/* One row of the affine pass: y = x*sc + sh (FMA), then max(0, .) if relu (NaN propagates). */
static inline __attribute__((always_inline)) void affine_row(int c, const float *xr, const float *sc, const float *sh,
                                                             float *yr, const int relu) {
#if defined(__AVX512F__)
  for (int j = 0; j < c; j += 16) {
    const __mmask16 k = tail16(c - j);
    __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, xr + j), _mm512_maskz_loadu_ps(k, sc + j),
                               _mm512_maskz_loadu_ps(k, sh + j));
    if (relu) v = _mm512_max_ps(_mm512_setzero_ps(), v); /* 0 > v ? 0 : v, as v < 0 ? 0 : v */
    store16(yr + j, k, v);
  }
#else
  for (int j = 0; j < c; j++) {
    float v = fmaf(xr[j], sc[j], sh[j]);
    yr[j] = relu && v < 0.0f ? 0.0f : v;
  }
#endif
}

/* y = x*sc + sh per channel [then ReLU] (y may alias x). Plain stores: non-temporal ones (tried
 * for outputs >= 4 MB) made the BN passes of ResNet-50 b32 ~10% faster but its convolutions ~5%
 * slower (they then read their input from memory instead of the last-level cache): a net loss. */
static void affine(int c, int64_t m, const float *x, const float *sc, const float *sh, int relu, float *y) {
  const int T = nthreads_for(m * c);
  if (relu) {
#pragma omp parallel for num_threads(T) schedule(static)
    for (int64_t i = 0; i < m; i++) affine_row(c, x + (size_t)i * c, sc, sh, y + (size_t)i * c, 1);
  } else {
#pragma omp parallel for num_threads(T) schedule(static)
    for (int64_t i = 0; i < m; i++) affine_row(c, x + (size_t)i * c, sc, sh, y + (size_t)i * c, 0);
  }
}

static void forward_train_sums(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                               const float *beta, float *run_mean, float *run_var, float *save, float *y,
                               double *s1, double *s2);

void rn_bn_forward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma, const float *beta,
                         float *run_mean, float *run_var, float *save, float *y) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1);
  double s1[c], s2[c];
  channel_sums(c, m, x, NULL, NULL, s1, s2);
  forward_train_sums(d, m, x, gamma, beta, run_mean, run_var, save, y, s1, s2);
}

void rn_bn_forward_train_stats(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                               const float *beta, float *run_mean, float *run_var, float *save, float *y,
                               int nimg, const double *stats) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1 && nimg >= 1);
  double s1[c], s2[c];
  for (int j = 0; j < c; j++) s1[j] = 0, s2[j] = 0;
  for (int i = 0; i < nimg; i++) {
    const double *p = stats + (size_t)i * 2 * c;
    for (int j = 0; j < c; j++) s1[j] += p[j], s2[j] += p[c + j];
  }
  forward_train_sums(d, m, x, gamma, beta, run_mean, run_var, save, y, s1, s2);
}

/* Statistics -> saved mean/invstd, running statistics, and the float affine coefficients sc, sh. */
static void train_coeffs(const rn_bn_desc *d, int64_t m, const float *gamma, const float *beta, float *run_mean,
                         float *run_var, float *save, double *s1, double *s2, float *sc, float *sh) {
  const int c = d->c;
  const double M = sync_sums(c, s1, s2, m); /* rows over all ranks with synchronised BN */
  const double mom = d->momentum;
  for (int j = 0; j < c; j++) {
    double mean = s1[j] / M;
    double var = s2[j] / M - mean * mean;
    if (var < 0) var = 0;
    double invstd = 1.0 / sqrt(var + (double)d->eps);
    double unb = M > 1 ? var * M / (M - 1) : var;
    save[j] = (float)mean;
    save[c + j] = (float)invstd;
    run_mean[j] = (float)((1.0 - mom) * run_mean[j] + mom * mean);
    run_var[j] = (float)((1.0 - mom) * run_var[j] + mom * unb);
    sc[j] = (float)(gamma[j] * invstd);
    sh[j] = (float)(beta[j] - mean * gamma[j] * invstd);
  }
}

static void forward_train_sums(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                               const float *beta, float *run_mean, float *run_var, float *save, float *y,
                               double *s1, double *s2) {
  const int c = d->c;
  float sc[c], sh[c];
  train_coeffs(d, m, gamma, beta, run_mean, run_var, save, s1, s2, sc, sh);
  affine(c, m, x, sc, sh, d->relu, y);
}

void rn_bn_forward_train_coef(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                              const float *beta, float *run_mean, float *run_var, float *save, int nimg,
                              const double *stats, float *sc, float *sh) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1);
  double s1[c], s2[c];
  if (stats) {
    RN_ASSERT(nimg >= 1);
    for (int j = 0; j < c; j++) s1[j] = 0, s2[j] = 0;
    for (int i = 0; i < nimg; i++) {
      const double *p = stats + (size_t)i * 2 * c;
      for (int j = 0; j < c; j++) s1[j] += p[j], s2[j] += p[c + j];
    }
  } else {
    channel_sums(c, m, x, NULL, NULL, s1, s2);
  }
  train_coeffs(d, m, gamma, beta, run_mean, run_var, save, s1, s2, sc, sh);
}

void rn_bn_apply(const rn_bn_desc *d, int64_t m, const float *x, const float *sc, const float *sh, float *y) {
  RN_ASSERT(d->c >= 1 && d->c <= MAX_C && m >= 1);
  affine(d->c, m, x, sc, sh, d->relu, y);
}

void rn_bn_forward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma, const float *beta,
                        const float *run_mean, const float *run_var, float *y) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C);
  float sc[c], sh[c];
  rn_bn_eval_coef(d, gamma, beta, run_mean, run_var, sc, sh);
  affine(c, m, x, sc, sh, d->relu, y);
}
void rn_bn_eval_coef(const rn_bn_desc *d, const float *gamma, const float *beta, const float *run_mean,
                     const float *run_var, float *sc, float *sh) {
  for (int j = 0; j < d->c; j++) {
    double k = gamma[j] / sqrt((double)run_var[j] + (double)d->eps);
    sc[j] = (float)k;
    sh[j] = (float)(beta[j] - run_mean[j] * k);
  }
}

/* One row of the dx pass: r = a*g + (b*(x - mu) + k) (b == NULL: r = a*g); dx = r or dx += r.
 * g = dy, or (y > 0 ? dy : 0) with the fused ReLU. */
static inline __attribute__((always_inline)) void dx_row(int c, const float *xr, const float *yr, const float *dr,
                                                         const float *a, const float *b, const float *mu,
                                                         const float *k, float *o, const int acc, const int has_b,
                                                         const int has_mask) {
#if defined(__AVX512F__)
  for (int j = 0; j < c; j += 16) {
    const __mmask16 km = tail16(c - j);
    const __m512 g = load_g(dr, yr, (size_t)j, km, has_mask);
    __m512 r;
    if (has_b) {
      const __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(km, xr + j), _mm512_maskz_loadu_ps(km, mu + j));
      r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, b + j), t, _mm512_maskz_loadu_ps(km, k + j));
      r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, a + j), g, r);
    } else {
      r = _mm512_mul_ps(_mm512_maskz_loadu_ps(km, a + j), g);
    }
    if (acc) r = _mm512_add_ps(_mm512_maskz_loadu_ps(km, o + j), r);
    store16(o + j, km, r);
  }
#else
  for (int j = 0; j < c; j++) {
    const float g = has_mask ? (yr[j] > 0.0f ? dr[j] : 0.0f) : dr[j];
    const float r = has_b ? fmaf(a[j], g, fmaf(b[j], xr[j] - mu[j], k[j])) : a[j] * g;
    o[j] = acc ? o[j] + r : r;
  }
#endif
}

#define DX_LOOP(ACC, HB, HM)                                                                                   \
  do {                                                                                                         \
    _Pragma("omp parallel for num_threads(T) schedule(static)") for (int64_t i = 0; i < m; i++) {              \
      const size_t o = (size_t)i * c;                                                                          \
      dx_row(c, x + o, (HM) ? y + o : NULL, dy + o, a, b, mu, k, dx + o, ACC, HB, HM);                         \
    }                                                                                                          \
  } while (0)

/* dx (=, or += when acc) = a*g + b*(x - mu) + k per channel (b == NULL: a*g); g = dy masked by y > 0
 * when y != NULL. */
static void bn_dx(int c, int64_t m, const float *x, const float *y, const float *dy, const float *a, const float *b,
                  const float *mu, const float *k, float *dx, int acc) {
  const int T = nthreads_for(m * c);
  const int hb = b != NULL, hm = y != NULL;
  if (acc) {
    if (hb && hm) DX_LOOP(1, 1, 1);
    else if (hb) DX_LOOP(1, 1, 0);
    else if (hm) DX_LOOP(1, 0, 1);
    else DX_LOOP(1, 0, 0);
  } else {
    if (hb && hm) DX_LOOP(0, 1, 1);
    else if (hb) DX_LOOP(0, 1, 0);
    else if (hm) DX_LOOP(0, 0, 1);
    else DX_LOOP(0, 0, 0);
  }
}
#undef DX_LOOP

static void backward_train_sums(const rn_bn_desc *d, int64_t m, const float *x, const float *mask,
                                const float *gamma, const float *save, const float *dy, float *dx, int acc,
                                float *dgamma, float *dbeta, double *sdy, double *sdyx);

void rn_bn_backward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *y, const float *gamma,
                          const float *save, const float *dy, float *dx, int acc, float *dgamma, float *dbeta) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1);
  RN_ASSERT(!d->relu || y);
  const float *mask = d->relu ? y : NULL;
  double sdy[c], sdyx[c];
  channel_sums(c, m, dy, x, mask, sdy, sdyx); /* sdy = sum g, sdyx = sum g*x */
  backward_train_sums(d, m, x, mask, gamma, save, dy, dx, acc, dgamma, dbeta, sdy, sdyx);
}

void rn_bn_backward_train_sums(const rn_bn_desc *d, int64_t m, const float *x, const float *y, const float *gamma,
                               const float *save, const float *dy, float *dx, int acc, float *dgamma, float *dbeta,
                               int nimg, const double *sums, int dy_masked) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1 && nimg >= 1);
  RN_ASSERT(!d->relu || y || dy_masked);
  double sdy[c], sdyx[c];
  for (int j = 0; j < c; j++) sdy[j] = 0, sdyx[j] = 0;
  for (int i = 0; i < nimg; i++) {
    const double *p = sums + (size_t)i * 2 * c;
    for (int j = 0; j < c; j++) sdy[j] += p[j], sdyx[j] += p[c + j];
  }
  backward_train_sums(d, m, x, d->relu && !dy_masked ? y : NULL, gamma, save, dy, dx, acc, dgamma, dbeta, sdy, sdyx);
}

static void backward_train_sums(const rn_bn_desc *d, int64_t m, const float *x, const float *mask,
                                const float *gamma, const float *save, const float *dy, float *dx, int acc,
                                float *dgamma, float *dbeta, double *sdy, double *sdyx) {
  const int c = d->c;
  for (int j = 0; j < c; j++) sdyx[j] -= (double)save[j] * sdy[j]; /* sum g*(x - mean) */
  for (int j = 0; j < c; j++) {
    /* dL/dgamma, dL/dbeta of this rank's batch (averaged over ranks with the other gradients) */
    if (dgamma) dgamma[j] += (float)(sdyx[j] * save[c + j]);
    if (dbeta) dbeta[j] += (float)sdy[j];
  }
  const double M = sync_sums(c, sdy, sdyx, m); /* synchronised BN: dx needs the sums over all rows */
  float a[c], b[c], k[c];
  for (int j = 0; j < c; j++) {
    double is = save[c + j];
    double dg = sdyx[j] * is;
    /* dx = g*is*(dy - sdy/M - xhat*dg/M), xhat = (x-mean)*is */
    double ga = gamma[j] * is;
    double bb = -ga * is * dg / M;
    a[j] = (float)ga;
    b[j] = (float)bb;
    k[j] = (float)(-ga * sdy[j] / M);
  }
  if (dx) bn_dx(c, m, x, mask, dy, a, b, save, k, dx, acc);
}

void rn_bn_backward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *y, const float *gamma,
                         const float *run_mean, const float *run_var, const float *dy, float *dx, int acc,
                         float *dgamma, float *dbeta) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C);
  RN_ASSERT(!d->relu || y);
  const float *mask = d->relu ? y : NULL;
  double sdy[c], sdyx[c];
  if (dgamma || dbeta) {
    channel_sums(c, m, dy, x, mask, sdy, sdyx);
    for (int j = 0; j < c; j++) sdyx[j] -= (double)run_mean[j] * sdy[j]; /* sum g*(x - running mean) */
    for (int j = 0; j < c; j++) {
      double is = 1.0 / sqrt((double)run_var[j] + (double)d->eps);
      if (dgamma) dgamma[j] += (float)(sdyx[j] * is);
      if (dbeta) dbeta[j] += (float)sdy[j];
    }
  }
  if (dx) {
    float a[c];
    for (int j = 0; j < c; j++) a[j] = (float)(gamma[j] / sqrt((double)run_var[j] + (double)d->eps));
    bn_dx(c, m, x, mask, dy, a, NULL, NULL, NULL, dx, acc);
  }
}

/* ---------------- BN of a residual branch fused with the residual add [+ ReLU] ----------------
 * Forward: y = [relu](s + scale*bn(x)), computed exactly as the separate nodes compute it: the BN's
 * float output z = fmaf(x, sc, sh), then the add's s + z (scale 1), s (scale 0: dropped branch) or
 * fmaf(scale, z, s), then v < 0 ? 0 : v. z is never stored: one pass reads x and s and writes y,
 * where the separate nodes read x, write z, read z and s and write y.
 * Backward: g = (y > 0 ? dy : 0) (dy without the ReLU) is the add's gradient of both inputs: the
 * shortcut's, ds = g (+= g), and the branch's, gb = g (scale 1), 0 (scale 0) or scale*g, which is
 * the BN's dy. The channel-sum pass computes g and gb on the fly, writes ds and sums gb, gb*x in the
 * BN's fixed order; the dx pass takes g back from ds (or from dy and y when ds was accumulated
 * into). Every value is the one the add and BN backward compute, so results are bitwise those of
 * the separate nodes. */

/* gb from g: mode 0 = scale 1, 1 = scale 0, 2 = scale*g */
static int scale_mode(float scale) { return scale == 1.0f ? 0 : scale == 0.0f ? 1 : 2; }

static inline __attribute__((always_inline)) void sums_rows_add(int c, int64_t r0, int64_t r1, const float *dy,
                                                                const float *mask, const float *x, float scale,
                                                                int mode, float *ds, int acc_s, double *p1,
                                                                double *p2, const float *sx, double *p3, double *p4,
                                                                const int has_s) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  /* row by row with L1 accumulators per block of CB channels, as sums_rows */
  const __m256 vs = _mm256_set1_ps(scale);
  /* with the shortcut's sums (has_s) the accumulators double: half the channels per block */
  enum { CBA = CB / 2 };
  double acc[8][CBA] __attribute__((aligned(64)));
  const int cbm = has_s ? CBA : CB;
  double(*accw)[CB] = (double(*)[CB])acc; /* without has_s: 4 rows of CB */
  const size_t pf = c <= cbm ? 256 : (size_t)c; /* prefetch 1 KB ahead (or the next row's block) */
  for (int j0 = 0; j0 < c; j0 += cbm) {
    const int cb = c - j0 < cbm ? c - j0 : cbm;
    for (int64_t t0 = r0; t0 < r1; t0 += TILE) {
      const int64_t t1 = t0 + TILE < r1 ? t0 + TILE : r1;
      double *R[8];
      for (int e = 0; e < 8; e++) R[e] = has_s ? acc[e] : e < 4 ? accw[e] : NULL;
      for (int e = 0; e < (has_s ? 8 : 4); e++) memset(R[e], 0, (size_t)cb * sizeof(double));
      for (int64_t i = t0; i < t1; i++) {
        double *A1 = R[(i - t0) & 1], *A2 = R[2 + ((i - t0) & 1)];
        double *A3 = R[4 + ((i - t0) & 1)], *A4 = R[6 + ((i - t0) & 1)];
        for (int j = 0; j < cb; j += 8) {
          const __mmask8 k = cb - j >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (cb - j)) - 1);
          const size_t o = (size_t)i * c + j0 + j;
          if (!(j & 15)) {
            if (mask) _mm_prefetch((const char *)(mask + o + pf), _MM_HINT_T0);
            _mm_prefetch((const char *)(dy + o + pf), _MM_HINT_T0);
            _mm_prefetch((const char *)(x + o + pf), _MM_HINT_T0);
            if (has_s) _mm_prefetch((const char *)(sx + o + pf), _MM_HINT_T0);
          }
          __mmask8 kv = k;
          if (mask) kv = _mm256_mask_cmp_ps_mask(k, _mm256_maskz_loadu_ps(k, mask + o), _mm256_setzero_ps(), _CMP_GT_OQ);
          const __m256 g = _mm256_maskz_loadu_ps(kv, dy + o);
          if (ds) _mm256_mask_storeu_ps(ds + o, k, acc_s ? _mm256_add_ps(_mm256_maskz_loadu_ps(k, ds + o), g) : g);
          if (has_s) { /* as sums_rows(a = ds = g, b = sx) */
            const __m512d v = _mm512_cvtps_pd(g);
            _mm512_store_pd(A3 + j, _mm512_add_pd(_mm512_load_pd(A3 + j), v));
            _mm512_store_pd(A4 + j, _mm512_fmadd_pd(v, _mm512_maskz_cvtps_pd(k, _mm256_maskz_loadu_ps(k, sx + o)), _mm512_load_pd(A4 + j)));
          }
          const __m256 gb = mode == 0 ? g : mode == 1 ? _mm256_setzero_ps() : _mm256_mul_ps(vs, g);
          const __m512d v = _mm512_cvtps_pd(gb);
          _mm512_store_pd(A1 + j, _mm512_add_pd(_mm512_load_pd(A1 + j), v));
          _mm512_store_pd(A2 + j, _mm512_fmadd_pd(v, _mm512_maskz_cvtps_pd(k, _mm256_maskz_loadu_ps(k, x + o)), _mm512_load_pd(A2 + j)));
        }
      }
      for (int j = 0; j < cb; j += 8) {
        const __mmask8 k = cb - j >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (cb - j)) - 1);
        double *P1 = p1 + j0 + j, *P2 = p2 + j0 + j;
        _mm512_mask_storeu_pd(P1, k, _mm512_add_pd(_mm512_maskz_loadu_pd(k, P1), _mm512_add_pd(_mm512_load_pd(R[0] + j), _mm512_load_pd(R[1] + j))));
        _mm512_mask_storeu_pd(P2, k, _mm512_add_pd(_mm512_maskz_loadu_pd(k, P2), _mm512_add_pd(_mm512_load_pd(R[2] + j), _mm512_load_pd(R[3] + j))));
        if (has_s) {
          double *P3 = p3 + j0 + j, *P4 = p4 + j0 + j;
          _mm512_mask_storeu_pd(P3, k, _mm512_add_pd(_mm512_maskz_loadu_pd(k, P3), _mm512_add_pd(_mm512_load_pd(R[4] + j), _mm512_load_pd(R[5] + j))));
          _mm512_mask_storeu_pd(P4, k, _mm512_add_pd(_mm512_maskz_loadu_pd(k, P4), _mm512_add_pd(_mm512_load_pd(R[6] + j), _mm512_load_pd(R[7] + j))));
        }
      }
    }
  }
#else
  for (int64_t t0 = r0; t0 < r1; t0 += TILE) {
    const int64_t t1 = t0 + TILE < r1 ? t0 + TILE : r1;
    for (int j = 0; j < c; j++) {
      double s1[2] = {0, 0}, s2[2] = {0, 0}, s3[2] = {0, 0}, s4[2] = {0, 0};
      for (int64_t i = t0; i < t1; i++) {
        const int e = (int)((i - t0) & 1);
        const size_t o = (size_t)i * c + j;
        const float g = mask ? (mask[o] > 0.0f ? dy[o] : 0.0f) : dy[o];
        if (ds) ds[o] = acc_s ? ds[o] + g : g;
        if (has_s) s3[e] += (double)g, s4[e] = fma((double)g, (double)sx[o], s4[e]);
        const double v = mode == 0 ? g : mode == 1 ? 0.0f : scale * g;
        s1[e] += v;
        s2[e] = fma(v, (double)x[o], s2[e]);
      }
      p1[j] += s1[0] + s1[1];
      p2[j] += s2[0] + s2[1];
      if (has_s) p3[j] += s3[0] + s3[1], p4[j] += s4[0] + s4[1];
    }
  }
#endif
}

/* channel_sums(c, m, gb, x, NULL, s1, s2) of the branch gradient gb, writing ds on the way; with sx
 * also channel_sums(c, m, g, sx, NULL, s3, s4) of the shortcut gradient g (as a BN whose input is
 * sx and whose output gradient is ds would sum it: the same groups and order). */
static void channel_sums_add(int c, int64_t m, const float *dy, const float *mask, const float *x, float scale,
                             float *ds, int acc_s, double *s1, double *s2, const float *sx, double *s3, double *s4) {
  const int G = groups_for(c, m), mode = scale_mode(scale);
  double part[G][2][c], spart[sx ? G : 1][2][sx ? c : 1];
  const int T = nthreads_for(m * c);
#pragma omp parallel for num_threads(T < G ? T : G) schedule(static)
  for (int g = 0; g < G; g++) {
    double *p1 = part[g][0], *p2 = part[g][1];
    for (int j = 0; j < c; j++) p1[j] = 0, p2[j] = 0;
    if (sx) {
      double *p3 = spart[g][0], *p4 = spart[g][1];
      for (int j = 0; j < c; j++) p3[j] = 0, p4[j] = 0;
      sums_rows_add(c, m * g / G, m * (g + 1) / G, dy, mask, x, scale, mode, ds, acc_s, p1, p2, sx, p3, p4, 1);
    } else {
      sums_rows_add(c, m * g / G, m * (g + 1) / G, dy, mask, x, scale, mode, ds, acc_s, p1, p2, NULL, NULL, NULL, 0);
    }
  }
  for (int j = 0; j < c; j++) s1[j] = 0, s2[j] = 0;
  for (int g = 0; g < G; g++)
    for (int j = 0; j < c; j++) s1[j] += part[g][0][j], s2[j] += part[g][1][j];
  if (!sx) return;
  for (int j = 0; j < c; j++) s3[j] = 0, s4[j] = 0;
  for (int g = 0; g < G; g++)
    for (int j = 0; j < c; j++) s3[j] += spart[g][0][j], s4[j] += spart[g][1][j];
}

/* ssc/ssh (spre): the shortcut is a lazy BN's input, s = fmaf(sr, ssc, ssh) as affine_row computes
 * that BN's output (no ReLU) */
static inline __attribute__((always_inline)) void affine_add_row(int c, const float *xr, const float *sc,
                                                                 const float *sh, const float *sr, float scale,
                                                                 float *yr, const int relu, const int mode,
                                                                 const float *ssc, const float *ssh,
                                                                 const int spre, const int nt) {
#if defined(__AVX512F__)
  const __m512 vs = _mm512_set1_ps(scale);
  for (int j = 0; j < c; j += 16) {
    const __mmask16 k = tail16(c - j);
    __m512 v = _mm512_maskz_loadu_ps(k, sr + j);
    if (spre) v = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, ssc + j), _mm512_maskz_loadu_ps(k, ssh + j));
    if (mode != 1) {
      const __m512 z = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, xr + j), _mm512_maskz_loadu_ps(k, sc + j),
                                       _mm512_maskz_loadu_ps(k, sh + j));
      v = mode == 0 ? _mm512_add_ps(v, z) : _mm512_fmadd_ps(vs, z, v);
    }
    if (relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
    if (nt) _mm512_stream_ps(yr + j, v); /* (c % 16 == 0, y 64-byte aligned: add_stream_ok) */
    else store16(yr + j, k, v);
  }
#else
  (void)nt;
  for (int j = 0; j < c; j++) {
    float v = spre ? fmaf(sr[j], ssc[j], ssh[j]) : sr[j];
    if (mode != 1) {
      const float z = fmaf(xr[j], sc[j], sh[j]);
      v = mode == 0 ? v + z : fmaf(scale, z, v);
    }
    yr[j] = relu && v < 0.0f ? 0.0f : v;
  }
#endif
}

#define AFFINE_ADD_LOOP(RELU, MODE, SP)                                                                        \
  do {                                                                                                         \
    if (nts) {                                                                                                 \
      _Pragma("omp parallel num_threads(T)") {                                                                 \
        _Pragma("omp for schedule(static) nowait") for (int64_t i = 0; i < m; i++)                             \
            affine_add_row(c, x + (size_t)i * c, sc, sh, s + (size_t)i * c, scale, y + (size_t)i * c, RELU,    \
                           MODE, ssc, ssh, SP, 1);                                                             \
        _mm_sfence(); /* the streamed rows are visible to every thread after the region */                    \
      }                                                                                                        \
    } else {                                                                                                   \
      _Pragma("omp parallel for num_threads(T) schedule(static)") for (int64_t i = 0; i < m; i++)              \
          affine_add_row(c, x + (size_t)i * c, sc, sh, s + (size_t)i * c, scale, y + (size_t)i * c, RELU,      \
                         MODE, ssc, ssh, SP, 0);                                                               \
    }                                                                                                          \
  } while (0)

/* Streaming stores for the BN+add output above ADD_STREAM_MB (RN_ADD_STREAM_MB=N: above N MB, 0 =
 * never; rn_bn_set_add_stream_mb, rn-bench --ab add-stream): y is written without being read for
 * ownership first. ResNet-50 b32 (twenty-second round, --ab add-stream, 4 runs of 8-12 pairs): the
 * non-conv layers 0.905-0.941 of their time with them, the convolutions (conv1 then reads the
 * block output from memory) 0.932-0.990 in the three runs without a drift of the host. */
#define ADD_STREAM_MB 16
static int g_add_stream_mb = -1;
void rn_bn_set_add_stream_mb(int mb) { g_add_stream_mb = mb < 0 ? -1 : mb; }
static int add_stream_ok(int c, int64_t m, const float *y) {
  if (g_add_stream_mb < 0) {
    const char *v = getenv("RN_ADD_STREAM_MB");
    g_add_stream_mb = v && *v ? atoi(v) : ADD_STREAM_MB;
    if (g_add_stream_mb < 0) g_add_stream_mb = 0;
  }
#if defined(__AVX512F__)
  return g_add_stream_mb > 0 && c % 16 == 0 && !((uintptr_t)y & 63) &&
         (size_t)m * c * sizeof(float) > ((size_t)g_add_stream_mb << 20);
#else
  (void)c, (void)m, (void)y;
  return 0;
#endif
}

static void affine_add_sp(int c, int64_t m, const float *x, const float *sc, const float *sh, const float *s,
                          float scale, int relu, float *y, const float *ssc, const float *ssh, const int sp) {
  const int T = nthreads_for(m * c), mode = scale_mode(scale), nts = add_stream_ok(c, m, y);
  if (relu) {
    if (mode == 0) AFFINE_ADD_LOOP(1, 0, sp);
    else if (mode == 1) AFFINE_ADD_LOOP(1, 1, sp);
    else AFFINE_ADD_LOOP(1, 2, sp);
  } else {
    if (mode == 0) AFFINE_ADD_LOOP(0, 0, sp);
    else if (mode == 1) AFFINE_ADD_LOOP(0, 1, sp);
    else AFFINE_ADD_LOOP(0, 2, sp);
  }
}
#undef AFFINE_ADD_LOOP

/* y = [relu](s' + scale*(x*sc + sh)) per channel, s' = s or (spre) s*spre->sc + spre->sh; y may
 * alias s (not x). */
static void affine_add(int c, int64_t m, const float *x, const float *sc, const float *sh, const float *s, float scale,
                       int relu, float *y, const rn_conv_pre *spre) {
  RN_ASSERT(!spre || !spre->relu);
  if (spre) affine_add_sp(c, m, x, sc, sh, s, scale, relu, y, spre->sc, spre->sh, 1);
  else affine_add_sp(c, m, x, sc, sh, s, scale, relu, y, NULL, NULL, 0);
}

void rn_bn_add_forward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma, const float *beta,
                             float *run_mean, float *run_var, float *save, int nimg, const double *stats,
                             const float *s, float scale, float *y, const rn_conv_pre *spre) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1 && y != x);
  double s1[c], s2[c];
  if (stats) {
    RN_ASSERT(nimg >= 1);
    for (int j = 0; j < c; j++) s1[j] = 0, s2[j] = 0;
    for (int i = 0; i < nimg; i++) {
      const double *p = stats + (size_t)i * 2 * c;
      for (int j = 0; j < c; j++) s1[j] += p[j], s2[j] += p[c + j];
    }
  } else {
    channel_sums(c, m, x, NULL, NULL, s1, s2);
  }
  float sc[c], sh[c];
  train_coeffs(d, m, gamma, beta, run_mean, run_var, save, s1, s2, sc, sh);
  affine_add(c, m, x, sc, sh, s, scale, d->relu, y, spre);
}

void rn_bn_add_apply(const rn_bn_desc *d, int64_t m, const float *x, const float *sc, const float *sh, const float *s,
                     float scale, float *y, const rn_conv_pre *spre) {
  RN_ASSERT(d->c >= 1 && d->c <= MAX_C && m >= 1 && y != x);
  affine_add(d->c, m, x, sc, sh, s, scale, d->relu, y, spre);
}

void rn_bn_add_forward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma, const float *beta,
                            const float *run_mean, const float *run_var, const float *s, float scale, float *y,
                            const rn_conv_pre *spre) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && y != x);
  float sc[c], sh[c];
  for (int j = 0; j < c; j++) {
    double k = gamma[j] / sqrt((double)run_var[j] + (double)d->eps);
    sc[j] = (float)k;
    sh[j] = (float)(beta[j] - run_mean[j] * k);
  }
  affine_add(c, m, x, sc, sh, s, scale, d->relu, y, spre);
}

/* The dx pass of the fused backward: g from ds (already masked) when it holds g, else from dy and
 * the mask; gb by mode; then dx_row's arithmetic. */
static inline __attribute__((always_inline)) void dx_add_row(int c, const float *xr, const float *gr,
                                                             const float *mr, float scale, int mode, const float *a,
                                                             const float *b, const float *mu, const float *k,
                                                             float *o, const int acc, const int has_b,
                                                             const int has_mask) {
#if defined(__AVX512F__)
  const __m512 vs = _mm512_set1_ps(scale);
  for (int j = 0; j < c; j += 16) {
    const __mmask16 km = tail16(c - j);
    __m512 g = load_g(gr, mr, (size_t)j, km, has_mask);
    if (mode == 1) g = _mm512_setzero_ps();
    else if (mode == 2) g = _mm512_mul_ps(vs, g);
    __m512 r;
    if (has_b) {
      const __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(km, xr + j), _mm512_maskz_loadu_ps(km, mu + j));
      r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, b + j), t, _mm512_maskz_loadu_ps(km, k + j));
      r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, a + j), g, r);
    } else {
      r = _mm512_mul_ps(_mm512_maskz_loadu_ps(km, a + j), g);
    }
    if (acc) r = _mm512_add_ps(_mm512_maskz_loadu_ps(km, o + j), r);
    store16(o + j, km, r);
  }
#else
  for (int j = 0; j < c; j++) {
    float g = has_mask ? (mr[j] > 0.0f ? gr[j] : 0.0f) : gr[j];
    g = mode == 0 ? g : mode == 1 ? 0.0f : scale * g;
    const float r = has_b ? fmaf(a[j], g, fmaf(b[j], xr[j] - mu[j], k[j])) : a[j] * g;
    o[j] = acc ? o[j] + r : r;
  }
#endif
}

#define DX_ADD_LOOP(ACC, HB, HM)                                                                               \
  do {                                                                                                         \
    _Pragma("omp parallel for num_threads(T) schedule(static)") for (int64_t i = 0; i < m; i++) {              \
      const size_t o = (size_t)i * c;                                                                          \
      dx_add_row(c, x + o, g + o, (HM) ? mask + o : NULL, scale, mode, a, b, mu, k, dx + o, ACC, HB, HM);      \
    }                                                                                                          \
  } while (0)

static void bn_add_dx(int c, int64_t m, const float *x, const float *g, const float *mask, float scale,
                      const float *a, const float *b, const float *mu, const float *k, float *dx, int acc) {
  const int T = nthreads_for(m * c), mode = scale_mode(scale);
  const int hb = b != NULL, hm = mask != NULL;
  if (acc) {
    if (hb && hm) DX_ADD_LOOP(1, 1, 1);
    else if (hb) DX_ADD_LOOP(1, 1, 0);
    else if (hm) DX_ADD_LOOP(1, 0, 1);
    else DX_ADD_LOOP(1, 0, 0);
  } else {
    if (hb && hm) DX_ADD_LOOP(0, 1, 1);
    else if (hb) DX_ADD_LOOP(0, 1, 0);
    else if (hm) DX_ADD_LOOP(0, 0, 1);
    else DX_ADD_LOOP(0, 0, 0);
  }
}
#undef DX_ADD_LOOP

static void bn_add_backward_finish(const rn_bn_desc *d, int64_t m, const float *x, const float *mask,
                                   const float *gamma, const float *save, const float *dy, float scale, float *ds,
                                   int acc_s, float *dx, int acc, float *dgamma, float *dbeta, double *sdy,
                                   double *sdyx);

void rn_bn_add_backward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *y, const float *gamma,
                              const float *save, const float *dy, float scale, float *ds, int acc_s, float *dx,
                              int acc, float *dgamma, float *dbeta, const float *sx, double *ssums) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1);
  RN_ASSERT(!d->relu || y);
  RN_ASSERT(!ssums || (sx && ds && !acc_s)); /* the shortcut BN's dy is ds = g */
  const float *mask = d->relu ? y : NULL;
  double sdy[c], sdyx[c];
  /* sum gb, sum gb*x; writes ds; and sum g, sum g*sx */
  channel_sums_add(c, m, dy, mask, x, scale, ds, acc_s, sdy, sdyx, ssums ? sx : NULL, ssums, ssums ? ssums + c : NULL);
  bn_add_backward_finish(d, m, x, mask, gamma, save, dy, scale, ds, acc_s, dx, acc, dgamma, dbeta, sdy, sdyx);
}

void rn_bn_add_backward_train_sums(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                                   const float *save, float *dy, float scale, float *dx, int acc, float *dgamma,
                                   float *dbeta, int nimg, const double *sums) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1 && nimg >= 1);
  double sdy[c], sdyx[c];
  for (int j = 0; j < c; j++) sdy[j] = 0, sdyx[j] = 0;
  for (int i = 0; i < nimg; i++) {
    const double *p = sums + (size_t)i * 2 * c;
    for (int j = 0; j < c; j++) sdy[j] += p[j], sdyx[j] += p[c + j];
  }
  /* dy holds g (masked by the convolution's epilogue) and is the shortcut gradient ds itself */
  bn_add_backward_finish(d, m, x, NULL, gamma, save, dy, scale, dy, 0, dx, acc, dgamma, dbeta, sdy, sdyx);
}

static void bn_add_backward_finish(const rn_bn_desc *d, int64_t m, const float *x, const float *mask,
                                   const float *gamma, const float *save, const float *dy, float scale, float *ds,
                                   int acc_s, float *dx, int acc, float *dgamma, float *dbeta, double *sdy,
                                   double *sdyx) {
  const int c = d->c;
  for (int j = 0; j < c; j++) sdyx[j] -= (double)save[j] * sdy[j];
  for (int j = 0; j < c; j++) {
    if (dgamma) dgamma[j] += (float)(sdyx[j] * save[c + j]);
    if (dbeta) dbeta[j] += (float)sdy[j];
  }
  const double M = sync_sums(c, sdy, sdyx, m);
  float a[c], b[c], k[c];
  for (int j = 0; j < c; j++) { /* as rn_bn_backward_train */
    double is = save[c + j];
    double dg = sdyx[j] * is;
    double ga = gamma[j] * is;
    double bb = -ga * is * dg / M;
    a[j] = (float)ga;
    b[j] = (float)bb;
    k[j] = (float)(-ga * sdy[j] / M);
  }
  if (!dx) return;
  if (ds && !acc_s) bn_add_dx(c, m, x, ds, NULL, scale, a, b, save, k, dx, acc); /* ds holds g */
  else bn_add_dx(c, m, x, dy, mask, scale, a, b, save, k, dx, acc);
}

void rn_bn_add_backward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *y, const float *gamma,
                             const float *run_mean, const float *run_var, const float *dy, float scale, float *ds,
                             int acc_s, float *dx, int acc, float *dgamma, float *dbeta) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C);
  RN_ASSERT(!d->relu || y);
  const float *mask = d->relu ? y : NULL;
  double sdy[c], sdyx[c];
  channel_sums_add(c, m, dy, mask, x, scale, ds, acc_s, sdy, sdyx, NULL, NULL, NULL);
  for (int j = 0; j < c; j++) sdyx[j] -= (double)run_mean[j] * sdy[j];
  for (int j = 0; j < c; j++) {
    double is = 1.0 / sqrt((double)run_var[j] + (double)d->eps);
    if (dgamma) dgamma[j] += (float)(sdyx[j] * is);
    if (dbeta) dbeta[j] += (float)sdy[j];
  }
  if (!dx) return;
  float a[c];
  for (int j = 0; j < c; j++) a[j] = (float)(gamma[j] / sqrt((double)run_var[j] + (double)d->eps));
  if (ds && !acc_s) bn_add_dx(c, m, x, ds, NULL, scale, a, NULL, NULL, NULL, dx, acc);
  else bn_add_dx(c, m, x, dy, mask, scale, a, NULL, NULL, NULL, dx, acc);
}
