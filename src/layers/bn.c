/* Batch norm 2d over NHWC rows (m = n*h*w rows of c channels), PyTorch conventions.
 *
 * Per-channel sums are accumulated in double over a FIXED partition of the rows into G groups
 * (G depends on c only), each group summed in row order, groups added in order: the result is
 * bitwise the same whatever the thread count. Partial sums live on the stack (G*2*c doubles,
 * <= 256 KB), nothing is allocated. The elementwise passes use float coefficients per channel. */
#include <math.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"

#define MAX_C 65536

static int groups_for(int c, int64_t m) {
  int g = c <= 2048 ? 8 : c <= 8192 ? 2 : 1;
  if (m < (int64_t)g * 64) g = 1; /* tiny inputs: one group */
  return g;
}

static int nthreads_for(int64_t count) {
  int t = rn_blas_threads();
  return count < 32768 ? 1 : (t < 1 ? 1 : t);
}

/* s1[j] = sum_i a[i][j], s2[j] = sum_i a[i][j] * (b ? b[i][j] - bsub[j] : a[i][j]) over m rows, double. */
static void channel_sums(int c, int64_t m, const float *a, const float *b, const double *bsub, double *s1,
                         double *s2) {
  const int G = groups_for(c, m);
  double part[G][2][c];
  const int T = nthreads_for(m * c);
#pragma omp parallel for num_threads(T < G ? T : G) schedule(static)
  for (int g = 0; g < G; g++) {
    double *p1 = part[g][0], *p2 = part[g][1];
    for (int j = 0; j < c; j++) p1[j] = 0, p2[j] = 0;
    int64_t r0 = m * g / G, r1 = m * (g + 1) / G;
    for (int64_t i = r0; i < r1; i++) {
      const float *ar = a + (size_t)i * c;
      if (b) {
        const float *br = b + (size_t)i * c;
        for (int j = 0; j < c; j++) {
          double v = ar[j];
          p1[j] += v;
          p2[j] += v * ((double)br[j] - bsub[j]);
        }
      } else {
        for (int j = 0; j < c; j++) {
          double v = ar[j];
          p1[j] += v;
          p2[j] += v * v;
        }
      }
    }
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

/* y = x*sc + sh per channel (y may alias x). */
static void affine(int c, int64_t m, const float *x, const float *sc, const float *sh, float *y) {
  const int T = nthreads_for(m * c);
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t i = 0; i < m; i++) {
    const float *xr = x + (size_t)i * c;
    float *yr = y + (size_t)i * c;
    for (int j = 0; j < c; j++) yr[j] = xr[j] * sc[j] + sh[j];
  }
}

void rn_bn_forward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma, const float *beta,
                         float *run_mean, float *run_var, float *save, float *y) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1);
  double s1[c], s2[c];
  channel_sums(c, m, x, NULL, NULL, s1, s2);
  const double M = sync_sums(c, s1, s2, m); /* rows over all ranks with synchronised BN */
  float sc[c], sh[c];
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
  affine(c, m, x, sc, sh, y);
}

void rn_bn_forward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma, const float *beta,
                        const float *run_mean, const float *run_var, float *y) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C);
  float sc[c], sh[c];
  for (int j = 0; j < c; j++) {
    double k = gamma[j] / sqrt((double)run_var[j] + (double)d->eps);
    sc[j] = (float)k;
    sh[j] = (float)(beta[j] - run_mean[j] * k);
  }
  affine(c, m, x, sc, sh, y);
}

/* dx (=, or += when acc) = a*dy + b*(x - mu) + k per channel. */
static void bn_dx(int c, int64_t m, const float *x, const float *dy, const float *a, const float *b,
                  const float *mu, const float *k, float *dx, int acc) {
  const int T = nthreads_for(m * c);
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t i = 0; i < m; i++) {
    const float *xr = x + (size_t)i * c, *dr = dy + (size_t)i * c;
    float *o = dx + (size_t)i * c;
    if (acc)
      for (int j = 0; j < c; j++) o[j] += a[j] * dr[j] + b[j] * (xr[j] - mu[j]) + k[j];
    else
      for (int j = 0; j < c; j++) o[j] = a[j] * dr[j] + b[j] * (xr[j] - mu[j]) + k[j];
  }
}

void rn_bn_backward_train(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma, const float *save,
                          const float *dy, float *dx, int acc, float *dgamma, float *dbeta) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C && m >= 1);
  double mean[c], sdy[c], sdyx[c];
  for (int j = 0; j < c; j++) mean[j] = save[j];
  channel_sums(c, m, dy, x, mean, sdy, sdyx); /* sdy = sum dy, sdyx = sum dy*(x-mean) */
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
  if (dx) bn_dx(c, m, x, dy, a, b, save, k, dx, acc);
}

void rn_bn_backward_eval(const rn_bn_desc *d, int64_t m, const float *x, const float *gamma,
                         const float *run_mean, const float *run_var, const float *dy, float *dx, int acc,
                         float *dgamma, float *dbeta) {
  const int c = d->c;
  RN_ASSERT(c >= 1 && c <= MAX_C);
  double rm[c], sdy[c], sdyx[c];
  for (int j = 0; j < c; j++) rm[j] = run_mean[j];
  if (dgamma || dbeta) {
    channel_sums(c, m, dy, x, rm, sdy, sdyx);
    for (int j = 0; j < c; j++) {
      double is = 1.0 / sqrt((double)run_var[j] + (double)d->eps);
      if (dgamma) dgamma[j] += (float)(sdyx[j] * is);
      if (dbeta) dbeta[j] += (float)sdy[j];
    }
  }
  if (dx) {
    float a[c], b[c], k[c];
    for (int j = 0; j < c; j++) {
      a[j] = (float)(gamma[j] / sqrt((double)run_var[j] + (double)d->eps));
      b[j] = 0, k[j] = 0;
    }
    bn_dx(c, m, x, dy, a, b, k, k, dx, acc);
  }
}
