/* Every layer's backward against double-precision central differences.
 *
 * For each layer a small reference forward is written here in double. The scalar loss is
 * L = sum(y * r) for a fixed random r (softmax CE: the mean loss itself). Inputs are floats; the
 * double reference sees exactly the same values. dL/dv for every input and parameter is taken by
 * central differences of the double forward (h = 1e-5: error ~1e-10), and compared with the float
 * backward fed dy = r: max|g - fd| / max|fd| must stay below 1e-5 (float rounding gives ~1e-7).
 * The float forward is checked against the double forward as well, input-gradient overwrite
 * (acc=0 onto NaN) and accumulate (acc=1 onto random values) modes are both checked, parameter
 * gradients must accumulate onto prefilled values. BN: running statistics (unbiased variance,
 * momentum 0.1), saved mean/invstd, eval forward against the direct formula, and bitwise
 * independence of the thread count. BN and add with a fused ReLU: the same checks against the
 * reference with the ReLU, and bitwise equality with the separate ReLU (rn_relu_forward /
 * rn_relu_backward around the plain layer), including exact zeros, -0 and NaN inputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"
#include "testutil.h"

#define TOL 1e-5
#define FD_H 1e-5

static double g_worst;
static char g_worst_what[80];

/* ---------- helpers ---------- */
static float *randf(size_t n, uint64_t seed, float lo, float hi) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  rn_rng r = rn_rng_make(seed);
  for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * rn_rng_uniform(&r);
  return p;
}
static float *nanbuf(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  for (size_t i = 0; i < n; i++) p[i] = NAN;
  return p;
}
static double *tod(const float *f, size_t n) {
  double *d = malloc((n ? n : 1) * sizeof(double));
  for (size_t i = 0; i < n; i++) d[i] = f[i];
  return d;
}
/* max|a-b| / max(max|b|, floor); any non-finite difference gives +Inf */
static double relerr_fd(const float *a, const double *b, size_t n, double floor) {
  double md = 0, mb = floor;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]);
    if (!isfinite(d)) return INFINITY;
    if (d > md) md = d;
    if (fabs(b[i]) > mb) mb = fabs(b[i]);
  }
  return md / mb;
}

typedef double (*loss_fn)(void);
/* Compare gradient g (float backward) with central differences of f w.r.t. v[0..n). */
static void check_grad(const char *what, const float *g, double *v, size_t n, loss_fn f) {
  double *fd = malloc(n * sizeof(double));
  for (size_t i = 0; i < n; i++) {
    double s = v[i];
    v[i] = s + FD_H;
    double lp = f();
    v[i] = s - FD_H;
    double lm = f();
    v[i] = s;
    fd[i] = (lp - lm) / (2 * FD_H);
  }
  double err = relerr_fd(g, fd, n, 1e-6);
  CHECK(err < TOL, "%s: gradient vs central differences rel err %.3g", what, err);
  printf("  %-34s n=%-5zu rel err %.2e\n", what, n, err);
  if (!(err <= g_worst)) g_worst = err, snprintf(g_worst_what, sizeof g_worst_what, "%s", what);
  free(fd);
}
/* Forward check: float y vs double reference yd. */
static void check_fwd(const char *what, const float *y, const double *yd, size_t n, double tol) {
  double err = relerr_fd(y, yd, n, 1e-6);
  CHECK(err <= tol, "%s: forward rel err %.3g", what, err);
}
/* acc semantics: out1 (acc=1 onto base) must equal base + out0 (acc=0). */
static void check_acc(const char *what, const float *out0, const float *base, const float *out1, size_t n) {
  double md = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)out1[i] - ((double)base[i] + out0[i]));
    if (!isfinite(d) || d > md) md = isfinite(d) ? d : INFINITY;
  }
  CHECK(md < 1e-5, "%s: acc=1 differs from base + (acc=0 result) by %.3g", what, md);
}
/* sum(y*r) in double */
static double dotr(const double *y, const double *r, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += y[i] * r[i];
  return s;
}

/* ---------- conv ---------- */
static rn_conv_desc CD;
static int CN;
static double *Cx, *Cw, *Cr;
static double conv_loss(void) {
  const rn_conv_desc *d = &CD;
  double L = 0;
  for (int i = 0; i < CN; i++)
    for (int oy = 0; oy < d->oh; oy++)
      for (int ox = 0; ox < d->ow; ox++)
        for (int co = 0; co < d->cout; co++) {
          double a = 0;
          for (int ky = 0; ky < d->kh; ky++)
            for (int kx = 0; kx < d->kw; kx++) {
              int iy = oy * d->stride - d->pad + ky, ix = ox * d->stride - d->pad + kx;
              if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w) continue;
              for (int ci = 0; ci < d->cin; ci++)
                a += Cx[(((size_t)i * d->h + iy) * d->w + ix) * d->cin + ci] *
                     Cw[(((size_t)co * d->kh + ky) * d->kw + kx) * d->cin + ci];
            }
          L += a * Cr[(((size_t)i * d->oh + oy) * d->ow + ox) * d->cout + co];
        }
  return L;
}
static void test_conv(int cin, int cout, int k, int s, int p, int h, int w, int n, int chunk) {
  rn_err e;
  RN_ASSERT(rn_conv_desc_init(&CD, cin, cout, k, k, s, p, h, w, &e) == RN_OK);
  rn_conv_set_chunk_rows(chunk);
  CN = n;
  size_t nx = (size_t)n * h * w * cin, nw = (size_t)cout * k * k * cin, ny = (size_t)n * CD.oh * CD.ow * cout;
  size_t nws = rn_conv_workspace(&CD, n);
  float *ws = nanbuf(nws), *x = randf(nx, 11, -1, 1), *wt = randf(nw, 12, -1, 1), *r = randf(ny, 13, -1, 1);
  float *y = nanbuf(ny), *dx = nanbuf(nx), *dw0 = randf(nw, 14, -1, 1), *dw = malloc(nw * 4);
  float *base = randf(nx, 15, -1, 1), *dx1 = malloc(nx * 4);
  memcpy(dw, dw0, nw * 4), memcpy(dx1, base, nx * 4);
  Cx = tod(x, nx), Cw = tod(wt, nw), Cr = tod(r, ny);
  rn_conv_forward(&CD, n, x, wt, y, ws);
  double s1 = 0;
  for (size_t i = 0; i < ny; i++) s1 += (double)y[i] * r[i];
  double L = conv_loss();
  CHECK(fabs(s1 - L) < 1e-5 * (1 + fabs(L)), "conv forward: sum(y*r) %.9g vs double %.9g", s1, L);
  rn_conv_backward(&CD, n, x, wt, r, dx, 0, dw, ws);
  rn_conv_backward(&CD, n, x, wt, r, dx1, 1, NULL, ws);
  for (size_t i = 0; i < nw; i++) dw[i] -= dw0[i];
  char what[64];
  snprintf(what, sizeof what, "conv %dx%d/%d p%d %d->%d dx", k, k, s, p, cin, cout);
  check_grad(what, dx, Cx, nx, conv_loss);
  snprintf(what, sizeof what, "conv %dx%d/%d p%d %d->%d dw", k, k, s, p, cin, cout);
  check_grad(what, dw, Cw, nw, conv_loss);
  check_acc("conv dx", dx, base, dx1, nx);
  rn_conv_set_chunk_rows(0);
  free(ws), free(x), free(wt), free(r), free(y), free(dx), free(dw0), free(dw), free(base), free(dx1);
  free(Cx), free(Cw), free(Cr);
}

/* ---------- batch norm ---------- */
static int BM, BC, BEVAL, BRELU;
static double *Bx, *Bg, *Bb, *Br, *Brm, *Brv;
static const double BEPS = 1e-5;
static void bn_ref(double *y, double *mean_out, double *var_out) {
  for (int j = 0; j < BC; j++) {
    double mean, var;
    if (BEVAL) {
      mean = Brm[j], var = Brv[j];
    } else {
      double s = 0, q = 0;
      for (int i = 0; i < BM; i++) s += Bx[(size_t)i * BC + j];
      mean = s / BM;
      for (int i = 0; i < BM; i++) q += (Bx[(size_t)i * BC + j] - mean) * (Bx[(size_t)i * BC + j] - mean);
      var = q / BM;
    }
    if (mean_out) mean_out[j] = mean, var_out[j] = var;
    for (int i = 0; i < BM; i++) {
      double v = (Bx[(size_t)i * BC + j] - mean) / sqrt(var + BEPS) * Bg[j] + Bb[j];
      y[(size_t)i * BC + j] = BRELU && v < 0 ? 0 : v;
    }
  }
}
static double bn_loss(void) {
  size_t n = (size_t)BM * BC;
  double *y = malloc(n * sizeof(double));
  bn_ref(y, NULL, NULL);
  double L = dotr(y, Br, n);
  free(y);
  return L;
}
static void test_bn(int m, int c, int eval, float xoff, int relu) {
  rn_bn_desc d = {c, 0.1f, 1e-5f, relu};
  BM = m, BC = c, BEVAL = eval, BRELU = relu;
  size_t n = (size_t)m * c;
  float *x = randf(n, 21 + eval, -1 + xoff, 1 + xoff), *g = randf(c, 22, 0.5f, 1.5f), *b = randf(c, 23, -1, 1);
  float *r = randf(n, 24, -1, 1), *rm = randf(c, 25, -0.5f + xoff, 0.5f + xoff), *rv = randf(c, 26, 0.5f, 2);
  float *rm0 = malloc(c * 4), *rv0 = malloc(c * 4), *save = nanbuf(2 * c), *y = nanbuf(n), *dx = nanbuf(n);
  float *dg0 = randf(c, 27, -1, 1), *db0 = randf(c, 28, -1, 1), *dg = malloc(c * 4), *dbt = malloc(c * 4);
  float *base = randf(n, 29, -1, 1), *dx1 = malloc(n * 4);
  memcpy(rm0, rm, c * 4), memcpy(rv0, rv, c * 4), memcpy(dg, dg0, c * 4), memcpy(dbt, db0, c * 4);
  memcpy(dx1, base, n * 4);
  Bx = tod(x, n), Bg = tod(g, c), Bb = tod(b, c), Br = tod(r, n), Brm = tod(rm, c), Brv = tod(rv, c);
  double *yd = malloc(n * sizeof(double)), *mean = malloc(c * sizeof(double)), *var = malloc(c * sizeof(double));
  bn_ref(yd, mean, var);
  if (eval) {
    rn_bn_forward_eval(&d, m, x, g, b, rm, rv, y);
    check_fwd("bn eval forward", y, yd, n, 1e-5);
    rn_bn_backward_eval(&d, m, x, y, g, rm, rv, r, dx, 0, dg, dbt);
    rn_bn_backward_eval(&d, m, x, y, g, rm, rv, r, dx1, 1, NULL, NULL);
  } else {
    rn_bn_forward_train(&d, m, x, g, b, rm, rv, save, y);
    check_fwd("bn train forward", y, yd, n, 1e-5);
    /* saved statistics and running-statistic update (unbiased variance, momentum 0.1) */
    double em = 0, ei = 0, erm = 0, erv = 0;
    for (int j = 0; j < c; j++) {
      double unb = var[j] * m / (m - 1);
      em = fmax(em, fabs(save[j] - mean[j]) / (1 + fabs(mean[j])));
      ei = fmax(ei, fabs(save[c + j] - 1 / sqrt(var[j] + BEPS)) * sqrt(var[j] + BEPS));
      double xrm = 0.9 * rm0[j] + 0.1 * mean[j], xrv = 0.9 * rv0[j] + 0.1 * unb;
      erm = fmax(erm, fabs(rm[j] - xrm) / (1 + fabs(xrm)));
      erv = fmax(erv, fabs(rv[j] - xrv) / xrv);
    }
    CHECK(em < 1e-6 && ei < 1e-6, "bn saved mean err %.3g invstd rel err %.3g", em, ei);
    CHECK(erm < 1e-6 && erv < 1e-6, "bn running mean err %.3g running var rel err %.3g (unbiased)", erm, erv);
    rn_bn_backward_train(&d, m, x, y, g, save, r, dx, 0, dg, dbt);
    rn_bn_backward_train(&d, m, x, y, g, save, r, dx1, 1, NULL, NULL);
  }
  for (int j = 0; j < c; j++) dg[j] -= dg0[j], dbt[j] -= db0[j];
  char what[64];
  const char *kind = relu ? (eval ? "bn+relu eval" : "bn+relu train") : (eval ? "bn eval" : "bn train");
  snprintf(what, sizeof what, "%s m=%d c=%d xoff=%g dx", kind, m, c, xoff);
  check_grad(what, dx, Bx, n, bn_loss);
  snprintf(what, sizeof what, "%s dgamma", kind);
  check_grad(what, dg, Bg, c, bn_loss);
  snprintf(what, sizeof what, "%s dbeta", kind);
  check_grad(what, dbt, Bb, c, bn_loss);
  check_acc("bn dx", dx, base, dx1, n);
  free(x), free(g), free(b), free(r), free(rm), free(rv), free(rm0), free(rv0), free(save), free(y), free(dx);
  free(dg0), free(db0), free(dg), free(dbt), free(base), free(dx1), free(yd), free(mean), free(var);
  free(Bx), free(Bg), free(Bb), free(Br), free(Brm), free(Brv);
}

/* BN results must not depend on the thread count (fixed reduction partition). */
static void test_bn_threads(int relu) {
  const int m = 8192, c = 48;
  rn_bn_desc d = {c, 0.1f, 1e-5f, relu};
  size_t n = (size_t)m * c;
  float *x = randf(n, 31, -2, 3), *g = randf(c, 32, 0.5f, 1.5f), *b = randf(c, 33, -1, 1), *dy = randf(n, 34, -1, 1);
  float *out[2][6];
  for (int t = 0; t < 2; t++) {
    rn_blas_set_threads(t + 1);
    float *rm = calloc(c, 4), *rv = malloc(c * 4), *save = malloc(2 * c * 4), *y = malloc(n * 4), *dx = malloc(n * 4);
    float *dg = calloc(c, 4), *db = calloc(c, 4);
    for (int j = 0; j < c; j++) rv[j] = 1;
    rn_bn_forward_train(&d, m, x, g, b, rm, rv, save, y);
    rn_bn_backward_train(&d, m, x, y, g, save, dy, dx, 0, dg, db);
    out[t][0] = y, out[t][1] = dx, out[t][2] = dg, out[t][3] = db, out[t][4] = rm, out[t][5] = rv;
    free(save);
  }
  rn_blas_set_threads(2);
  size_t sz[6] = {n, n, c, c, c, c};
  int same = 1;
  for (int k = 0; k < 6; k++) same &= !memcmp(out[0][k], out[1][k], sz[k] * 4);
  CHECK(same, "bn%s train forward/backward differ between 1 and 2 threads", relu ? "+relu" : "");
  for (int t = 0; t < 2; t++)
    for (int k = 0; k < 6; k++) free(out[t][k]);
  free(x), free(g), free(b), free(dy);
}

/* ---------- relu ---------- */
static size_t RN;
static double *Rx, *Rr;
static double relu_loss(void) {
  double L = 0;
  for (size_t i = 0; i < RN; i++) L += (Rx[i] > 0 ? Rx[i] : 0) * Rr[i];
  return L;
}
static void test_relu(void) {
  size_t n = 1000;
  float *x = randf(n, 41, -1, 1), *r = randf(n, 42, -1, 1);
  for (size_t i = 0; i < n; i++)
    if (fabsf(x[i]) < 1e-3f) x[i] = 0.5f; /* away from the kink */
  float *y = nanbuf(n), *dx = nanbuf(n), *base = randf(n, 43, -1, 1), *dx1 = malloc(n * 4);
  memcpy(dx1, base, n * 4);
  RN = n, Rx = tod(x, n), Rr = tod(r, n);
  rn_relu_forward((int64_t)n, x, y);
  double *yd = malloc(n * sizeof(double));
  for (size_t i = 0; i < n; i++) yd[i] = Rx[i] > 0 ? Rx[i] : 0;
  check_fwd("relu forward", y, yd, n, 0);
  rn_relu_backward((int64_t)n, y, r, dx, 0);
  rn_relu_backward((int64_t)n, y, r, dx1, 1);
  check_grad("relu dx", dx, Rx, n, relu_loss);
  check_acc("relu dx", dx, base, dx1, n);
  /* in place */
  float *z = malloc(n * 4);
  memcpy(z, x, n * 4);
  rn_relu_forward((int64_t)n, z, z);
  CHECK(!memcmp(z, y, n * 4), "relu in place differs");
  free(x), free(r), free(y), free(dx), free(base), free(dx1), free(Rx), free(Rr), free(yd), free(z);
}

/* ---------- max pool ---------- */
static rn_pool_desc PD;
static int PN;
static double *Px, *Pr;
static void pool_ref(double *y) {
  const rn_pool_desc *d = &PD;
  for (int i = 0; i < PN; i++)
    for (int oy = 0; oy < d->oh; oy++)
      for (int ox = 0; ox < d->ow; ox++)
        for (int j = 0; j < d->c; j++) {
          double mx = -INFINITY;
          for (int ky = 0; ky < d->k; ky++)
            for (int kx = 0; kx < d->k; kx++) {
              int iy = oy * d->stride - d->pad + ky, ix = ox * d->stride - d->pad + kx;
              if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w) continue;
              double v = Px[(((size_t)i * d->h + iy) * d->w + ix) * d->c + j];
              if (v > mx) mx = v;
            }
          y[(((size_t)i * d->oh + oy) * d->ow + ox) * d->c + j] = mx;
        }
}
static double pool_loss(void) {
  size_t n = (size_t)PN * PD.oh * PD.ow * PD.c;
  double *y = malloc(n * sizeof(double));
  pool_ref(y);
  double L = dotr(y, Pr, n);
  free(y);
  return L;
}
static void test_maxpool(int c, int h, int w, int k, int s, int p, int n, float lo, float hi) {
  rn_err e;
  RN_ASSERT(rn_pool_desc_init(&PD, c, h, w, k, s, p, &e) == RN_OK);
  PN = n;
  size_t nx = (size_t)n * h * w * c, ny = (size_t)n * PD.oh * PD.ow * c;
  /* distinct values: a random permutation of an even grid, so no ties within FD_H */
  float *x = malloc(nx * 4);
  rn_rng rg = rn_rng_make(51);
  for (size_t i = 0; i < nx; i++) x[i] = lo + (hi - lo) * (float)i / (float)nx;
  for (size_t i = nx - 1; i > 0; i--) {
    size_t j = rn_rng_below(&rg, i + 1);
    float t = x[i];
    x[i] = x[j], x[j] = t;
  }
  float *r = randf(ny, 52, -1, 1), *y = nanbuf(ny), *dx = nanbuf(nx), *base = randf(nx, 53, -1, 1);
  float *dx1 = malloc(nx * 4);
  int32_t *am = malloc(ny * sizeof(int32_t));
  memcpy(dx1, base, nx * 4);
  Px = tod(x, nx), Pr = tod(r, ny);
  double *yd = malloc(ny * sizeof(double));
  pool_ref(yd);
  rn_maxpool_forward(&PD, n, x, y, am);
  char what[80];
  snprintf(what, sizeof what, "maxpool %d/%d p%d %dx%d c=%d [%g,%g] dx", k, s, p, h, w, c, lo, hi);
  check_fwd(what, y, yd, ny, 0);
  int amok = 1;
  for (size_t o = 0; o < ny; o++) {
    size_t i = o / ((size_t)PD.oh * PD.ow * c);
    amok &= am[o] >= 0 && (size_t)am[o] < (size_t)h * w * c && x[i * h * w * c + am[o]] == y[o] &&
            (size_t)am[o] % c == o % c;
  }
  CHECK(amok, "%s: argmax does not point at the max", what);
  rn_maxpool_backward(&PD, n, am, r, dx, 0);
  rn_maxpool_backward(&PD, n, am, r, dx1, 1);
  check_grad(what, dx, Px, nx, pool_loss);
  check_acc("maxpool dx", dx, base, dx1, nx);
  free(x), free(r), free(y), free(dx), free(base), free(dx1), free(am), free(Px), free(Pr), free(yd);
}

/* Max pool over a lazy BN+ReLU output (rn_maxpool_forward_pre): bitwise the pool of the BN eval
 * forward's output with the same coefficients (about half the inputs ReLU'd to 0: ties), and the
 * masked backward bitwise the plain backward masked by that output > 0. */
static void test_maxpool_pre(int c, int h, int w, int n) {
  rn_pool_desc d;
  rn_err e;
  RN_ASSERT(rn_pool_desc_init(&d, c, h, w, 3, 2, 1, &e) == RN_OK);
  size_t nx = (size_t)n * h * w * c, ny = (size_t)n * d.oh * d.ow * c;
  float *x = randf(nx, 61, -1, 1), *g = randf(c, 62, -1.5f, 1.5f), *b = randf(c, 63, -0.5f, 0.5f);
  float *rm = randf(c, 64, -0.3f, 0.3f), *rv = randf(c, 65, 0.5f, 2), *sc = malloc(c * 4), *sh = malloc(c * 4);
  float *ybn = nanbuf(nx), *y0 = nanbuf(ny), *y1 = nanbuf(ny), *r = randf(ny, 66, -1, 1);
  float *dx0 = nanbuf(nx), *dx1 = nanbuf(nx);
  int32_t *a0 = malloc(ny * 4), *a1 = malloc(ny * 4);
  rn_bn_desc bd = {c, 0.1f, 1e-5f, 1};
  rn_bn_forward_eval(&bd, (int64_t)n * h * w, x, g, b, rm, rv, ybn);
  rn_bn_eval_coef(&bd, g, b, rm, rv, sc, sh);
  rn_conv_pre pre = {sc, sh, 1};
  rn_maxpool_forward(&d, n, ybn, y0, a0);
  rn_maxpool_forward_pre(&d, n, x, y1, a1, &pre);
  rn_maxpool_backward(&d, n, a0, r, dx0, 0);
  for (size_t i = 0; i < nx; i++) dx0[i] = ybn[i] > 0.0f ? dx0[i] : 0.0f;
  rn_maxpool_backward_masked(&d, n, a1, r, y1, dx1, 0);
  size_t zeros = 0;
  for (size_t i = 0; i < ny; i++) zeros += y1[i] == 0.0f;
  CHECK(!memcmp(y0, y1, ny * 4) && !memcmp(a0, a1, ny * 4) && !memcmp(dx0, dx1, nx * 4) && zeros > 0,
        "maxpool over BN+ReLU c=%d %dx%d: pre path differs from pooling the BN output (%zu zero outputs)", c, h, w,
        zeros);
  printf("  maxpool over bn+relu c=%-3d %dx%d n=%d: bitwise equal (%zu zero outputs)\n", c, h, w, n, zeros);
  free(x), free(g), free(b), free(rm), free(rv), free(sc), free(sh), free(ybn), free(y0), free(y1), free(r);
  free(dx0), free(dx1), free(a0), free(a1);
}

/* The backward (a gather: each input element written once) against the scatter it replaced,
 * memset(dx, 0) unless acc, then dx[argmax[o]] += (masked) dy[o] for o ascending: bitwise, on
 * inputs with many ties (values in {-1, 0, 1}: one pixel the argmax of up to 4
 * windows, the order of the additions visible), gradients with -0.0, +-0.0 and NaN in the acc base,
 * masked and plain, odd shapes and the 16-channel vector path with a scalar tail. */
static void scatter_ref(const rn_pool_desc *d, int n, const int32_t *a, const float *dy, const float *y, float *dx,
                        int acc) {
  const size_t in = (size_t)d->h * d->w * d->c, out = (size_t)d->oh * d->ow * d->c;
  for (int i = 0; i < n; i++) {
    float *di = dx + (size_t)i * in;
    if (!acc) memset(di, 0, in * sizeof(float));
    for (size_t o = 0; o < out; o++) {
      const size_t q = (size_t)i * out + o;
      di[a[q]] += y ? (y[q] > 0.0f ? dy[q] : 0.0f) : dy[q];
    }
  }
}
static void test_maxpool_gather(int c, int h, int w, int k, int s, int p, int n) {
  rn_pool_desc d;
  rn_err e;
  RN_ASSERT(rn_pool_desc_init(&d, c, h, w, k, s, p, &e) == RN_OK);
  size_t nx = (size_t)n * h * w * c, ny = (size_t)n * d.oh * d.ow * c;
  float *x = randf(nx, 71, -1, 1), *r = randf(ny, 72, -1, 1), *base = randf(nx, 73, -1, 1);
  float *y = nanbuf(ny), *dx0 = nanbuf(nx), *dx1 = nanbuf(nx);
  int32_t *a = malloc(ny * 4);
  for (size_t i = 0; i < nx; i++) x[i] = x[i] < -0.3f ? 0.0f : floorf(x[i] * 1.5f); /* ties: {-1, 0, 1} */
  for (size_t i = 0; i < ny; i += 7) r[i] = -0.0f;
  for (size_t i = 3; i < nx; i += 11) base[i] = i % 2 ? -0.0f : 0.0f;
  base[nx / 2] = NAN;
  rn_maxpool_forward(&d, n, x, y, a);
  size_t shared = 0; /* inputs that are the argmax of more than one window */
  {
    unsigned char *cnt = calloc(nx, 1);
    for (size_t o = 0; o < ny; o++) {
      size_t i = o / ((size_t)d.oh * d.ow * c), q = i * h * w * c + (size_t)a[o];
      shared += ++cnt[q] == 2;
    }
    free(cnt);
  }
  for (int masked = 0; masked < 2; masked++)
    for (int acc = 0; acc < 2; acc++) {
      if (acc) memcpy(dx0, base, nx * 4), memcpy(dx1, base, nx * 4);
      else for (size_t i = 0; i < nx; i++) dx0[i] = dx1[i] = NAN;
      scatter_ref(&d, n, a, r, masked ? y : NULL, dx0, acc);
      if (masked) rn_maxpool_backward_masked(&d, n, a, r, y, dx1, acc);
      else rn_maxpool_backward(&d, n, a, r, dx1, acc);
      CHECK(!memcmp(dx0, dx1, nx * 4), "maxpool backward c=%d %dx%d k%d/s%d/p%d masked %d acc %d: not the scatter's bits",
            c, h, w, k, s, p, masked, acc);
    }
  CHECK(shared > 0 || k <= s, "maxpool gather test c=%d %dx%d: no input is the argmax of two overlapping windows", c, h, w);
  printf("  maxpool backward c=%-3d %dx%d k%d/s%d/p%d n=%d: gather = scatter bitwise (%zu shared argmax)\n", c, h, w,
         k, s, p, n, shared);
  free(x), free(r), free(base), free(y), free(dx0), free(dx1), free(a);
}

/* Ties keep the first pixel of the window (row-major), as PyTorch; padding is never chosen. */
static void test_maxpool_ties(int c) {
  rn_pool_desc d;
  rn_err e;
  RN_ASSERT(rn_pool_desc_init(&d, c, 5, 5, 3, 2, 1, &e) == RN_OK);
  float x[25 * 16], y[9 * 16];
  int32_t am[9 * 16];
  for (int i = 0; i < 25 * c; i++) x[i] = -7.0f;
  rn_maxpool_forward(&d, 1, x, y, am);
  int ok = 1;
  for (int oy = 0; oy < d.oh; oy++)
    for (int ox = 0; ox < d.ow; ox++)
      for (int j = 0; j < c; j++) {
        int iy = oy * 2 - 1 < 0 ? 0 : oy * 2 - 1, ix = ox * 2 - 1 < 0 ? 0 : ox * 2 - 1;
        int o = (oy * d.ow + ox) * c + j;
        ok &= y[o] == -7.0f && am[o] == (iy * 5 + ix) * c + j;
      }
  CHECK(ok, "maxpool ties c=%d: argmax is not the first window pixel, or padding won", c);
  /* a NaN wins over larger values after it and sticks: pixel (1,1) channel 1 is in window (0,0)
   * and (1,1) is the bottom-right corner of the window of output (0,0), (2,2) = 9 later */
  x[(1 * 5 + 1) * c + 1] = NAN, x[(2 * 5 + 2) * c + 1] = 9.0f;
  rn_maxpool_forward(&d, 1, x, y, am);
  CHECK(isnan(y[1]) && am[1] == (1 * 5 + 1) * c + 1 && y[(1 * d.ow + 1) * c + 1] != y[(1 * d.ow + 1) * c + 1],
        "maxpool c=%d: NaN did not win and stick", c);
  CHECK(rn_pool_desc_init(&d, 2, 5, 5, 3, 2, 2, &e) == RN_EINVAL, "maxpool pad > k/2 accepted");
}

/* ---------- global average pool ---------- */
static int AN, AHW, AC;
static double *Ax, *Ar;
static double avg_loss(void) {
  double L = 0;
  for (int i = 0; i < AN; i++)
    for (int j = 0; j < AC; j++) {
      double s = 0;
      for (int p = 0; p < AHW; p++) s += Ax[((size_t)i * AHW + p) * AC + j];
      L += s / AHW * Ar[(size_t)i * AC + j];
    }
  return L;
}
static void test_avgpool(void) {
  AN = 3, AHW = 49, AC = 37;
  size_t nx = (size_t)AN * AHW * AC, ny = (size_t)AN * AC;
  float *x = randf(nx, 61, -1, 1), *r = randf(ny, 62, -1, 1), *y = nanbuf(ny), *dx = nanbuf(nx);
  float *base = randf(nx, 63, -1, 1), *dx1 = malloc(nx * 4);
  memcpy(dx1, base, nx * 4);
  Ax = tod(x, nx), Ar = tod(r, ny);
  double *yd = malloc(ny * sizeof(double));
  for (int i = 0; i < AN; i++)
    for (int j = 0; j < AC; j++) {
      double s = 0;
      for (int p = 0; p < AHW; p++) s += Ax[((size_t)i * AHW + p) * AC + j];
      yd[(size_t)i * AC + j] = s / AHW;
    }
  rn_avgpool_forward(AN, AHW, AC, x, y);
  check_fwd("avgpool forward", y, yd, ny, 1e-6);
  rn_avgpool_backward(AN, AHW, AC, r, dx, 0);
  rn_avgpool_backward(AN, AHW, AC, r, dx1, 1);
  check_grad("avgpool dx", dx, Ax, nx, avg_loss);
  check_acc("avgpool dx", dx, base, dx1, nx);
  free(x), free(r), free(y), free(dx), free(base), free(dx1), free(Ax), free(Ar), free(yd);
}

/* ---------- linear ---------- */
static int LN, LI, LO;
static double *Lx, *Lw, *Lb, *Lr;
static double lin_loss(void) {
  double L = 0;
  for (int i = 0; i < LN; i++)
    for (int o = 0; o < LO; o++) {
      double s = Lb[o];
      for (int k = 0; k < LI; k++) s += Lx[(size_t)i * LI + k] * Lw[(size_t)o * LI + k];
      L += s * Lr[(size_t)i * LO + o];
    }
  return L;
}
static void test_linear(int n, int in, int out) {
  LN = n, LI = in, LO = out;
  size_t nx = (size_t)n * in, nw = (size_t)out * in, ny = (size_t)n * out;
  float *x = randf(nx, 71, -1, 1), *w = randf(nw, 72, -1, 1), *b = randf(out, 73, -1, 1), *r = randf(ny, 74, -1, 1);
  float *y = nanbuf(ny), *dx = nanbuf(nx), *dw0 = randf(nw, 75, -1, 1), *db0 = randf(out, 76, -1, 1);
  float *dw = malloc(nw * 4), *db = malloc(out * 4), *base = randf(nx, 77, -1, 1), *dx1 = malloc(nx * 4);
  memcpy(dw, dw0, nw * 4), memcpy(db, db0, out * 4), memcpy(dx1, base, nx * 4);
  Lx = tod(x, nx), Lw = tod(w, nw), Lb = tod(b, out), Lr = tod(r, ny);
  rn_linear_forward(n, in, out, x, w, b, y);
  double *yd = malloc(ny * sizeof(double));
  for (int i = 0; i < n; i++)
    for (int o = 0; o < out; o++) {
      double s = Lb[o];
      for (int k = 0; k < in; k++) s += Lx[(size_t)i * in + k] * Lw[(size_t)o * in + k];
      yd[(size_t)i * out + o] = s;
    }
  check_fwd("linear forward", y, yd, ny, 1e-5);
  rn_linear_backward(n, in, out, x, w, r, dx, 0, dw, db);
  rn_linear_backward(n, in, out, x, w, r, dx1, 1, NULL, NULL);
  for (size_t i = 0; i < nw; i++) dw[i] -= dw0[i];
  for (int o = 0; o < out; o++) db[o] -= db0[o];
  check_grad("linear dx", dx, Lx, nx, lin_loss);
  check_grad("linear dw", dw, Lw, nw, lin_loss);
  check_grad("linear db", db, Lb, out, lin_loss);
  check_acc("linear dx", dx, base, dx1, nx);
  free(x), free(w), free(b), free(r), free(y), free(dx), free(dw0), free(db0), free(dw), free(db), free(base);
  free(dx1), free(Lx), free(Lw), free(Lb), free(Lr), free(yd);
}

/* ---------- residual add ---------- */
static size_t DN;
static int DRELU;
static double DS, *Da, *Db, *Dr;
static double add_loss(void) {
  double L = 0;
  for (size_t i = 0; i < DN; i++) {
    double v = Da[i] + DS * Db[i];
    L += (DRELU && v < 0 ? 0 : v) * Dr[i];
  }
  return L;
}
static void test_add(float scale, int relu) {
  size_t n = 777;
  DN = n, DS = scale, DRELU = relu;
  float *a = randf(n, 81, -1, 1), *b = randf(n, 82, -1, 1), *r = randf(n, 83, -1, 1), *y = nanbuf(n);
  float *da = nanbuf(n), *db = nanbuf(n), *ba = randf(n, 84, -1, 1), *bb = randf(n, 85, -1, 1);
  float *da1 = malloc(n * 4), *db1 = malloc(n * 4);
  memcpy(da1, ba, n * 4), memcpy(db1, bb, n * 4);
  Da = tod(a, n), Db = tod(b, n), Dr = tod(r, n);
  double *yd = malloc(n * sizeof(double));
  for (size_t i = 0; i < n; i++) {
    yd[i] = Da[i] + DS * Db[i];
    if (relu && yd[i] < 0) yd[i] = 0;
  }
  rn_add_forward((int64_t)n, a, b, scale, relu, y);
  check_fwd(relu ? "add+relu forward" : "add forward", y, yd, n, 1e-6);
  rn_add_backward((int64_t)n, relu ? y : NULL, r, scale, da, 0, db, 0);
  rn_add_backward((int64_t)n, relu ? y : NULL, r, scale, da1, 1, db1, 1);
  char what[64];
  snprintf(what, sizeof what, "add%s scale=%g da", relu ? "+relu" : "", scale);
  check_grad(what, da, Da, n, add_loss);
  snprintf(what, sizeof what, "add%s scale=%g db", relu ? "+relu" : "", scale);
  check_grad(what, db, Db, n, add_loss);
  check_acc("add da", da, ba, da1, n);
  check_acc("add db", db, bb, db1, n);
  /* y aliasing a */
  float *z = malloc(n * 4);
  memcpy(z, a, n * 4);
  rn_add_forward((int64_t)n, z, b, scale, relu, z);
  CHECK(!memcmp(z, y, n * 4), "add with y == a differs");
  memcpy(z, b, n * 4);
  rn_add_forward((int64_t)n, a, z, scale, relu, z);
  CHECK(!memcmp(z, y, n * 4), "add with y == b differs");
  free(a), free(b), free(r), free(y), free(da), free(db), free(ba), free(bb), free(da1), free(db1);
  free(Da), free(Db), free(Dr), free(yd), free(z);
}

/* ---------- fused ReLU: bitwise equal to the separate ReLU ---------- */
/* Fills v with values from [lo, hi), exact zeros and -0 (every 7th/11th) and, if nan, a NaN
 * every 97th. */
static float *special(size_t n, uint64_t seed, float lo, float hi, int nan) {
  float *v = randf(n, seed, lo, hi);
  for (size_t i = 0; i < n; i++) {
    if (i % 7 == 3) v[i] = 0.0f;
    if (i % 11 == 5) v[i] = -0.0f;
    if (nan && i % 97 == 13) v[i] = NAN;
  }
  return v;
}
static int same_bits(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof(float)); }

/* BN+ReLU (desc relu = 1) vs BN then rn_relu_forward / rn_relu_backward then BN backward: forward
 * output, saved statistics, running statistics, dx (overwrite and accumulate), dgamma, dbeta. */
static void test_bn_fused_bitwise(int m, int c, int eval, int threads) {
  rn_blas_set_threads(threads);
  size_t n = (size_t)m * c;
  rn_bn_desc d0 = {c, 0.1f, 1e-5f, 0}, d1 = {c, 0.1f, 1e-5f, 1};
  /* eval: x = 0 where running_mean = beta = 0 (channels j % 3 == 0) gives an exact 0 before the
   * ReLU; NaN inputs propagate (eval only: in training one NaN makes its channel all NaN). */
  float *x = special(n, 201 + (uint64_t)m, -1.5f, 1.5f, eval), *g = randf(c, 202, -1.5f, 1.5f);
  float *b = randf(c, 203, -0.5f, 0.5f), *rm = randf(c, 204, -0.3f, 0.3f), *rv = randf(c, 205, 0.5f, 2.0f);
  float *dy = special(n, 206, -1, 1, 0), *base = randf(n, 207, -1, 1);
  for (int j = 0; j < c; j += 3) rm[j] = 0, b[j] = 0;
  float *rm0 = malloc(c * 4), *rv0 = malloc(c * 4), *rm1 = malloc(c * 4), *rv1 = malloc(c * 4);
  memcpy(rm0, rm, c * 4), memcpy(rv0, rv, c * 4), memcpy(rm1, rm, c * 4), memcpy(rv1, rv, c * 4);
  float *s0 = nanbuf(2 * c), *s1 = nanbuf(2 * c), *y0 = nanbuf(n), *y1 = nanbuf(n), *dz = nanbuf(n);
  float *dx0 = malloc(n * 4), *dx1 = malloc(n * 4);
  float *dg0 = calloc(c, 4), *db0 = calloc(c, 4), *dg1 = calloc(c, 4), *db1 = calloc(c, 4);
  int ok = 1;
  if (eval) {
    rn_bn_forward_eval(&d0, m, x, g, b, rm, rv, y0);
    rn_bn_forward_eval(&d1, m, x, g, b, rm, rv, y1);
  } else {
    rn_bn_forward_train(&d0, m, x, g, b, rm0, rv0, s0, y0);
    rn_bn_forward_train(&d1, m, x, g, b, rm1, rv1, s1, y1);
    ok &= same_bits(s0, s1, 2 * c) && same_bits(rm0, rm1, c) && same_bits(rv0, rv1, c);
  }
  rn_relu_forward((int64_t)n, y0, y0); /* in place, as the unfused graph runs it */
  ok &= same_bits(y0, y1, n);
  size_t zeros = 0;
  for (size_t i = 0; i < n; i++) zeros += y1[i] == 0.0f;
  rn_relu_backward((int64_t)n, y0, dy, dz, 0);
  for (int acc = 0; acc < 2; acc++) {
    if (acc) memcpy(dx0, base, n * 4), memcpy(dx1, base, n * 4);
    if (eval) {
      rn_bn_backward_eval(&d0, m, x, NULL, g, rm, rv, dz, dx0, acc, dg0, db0);
      rn_bn_backward_eval(&d1, m, x, y1, g, rm, rv, dy, dx1, acc, dg1, db1);
    } else {
      rn_bn_backward_train(&d0, m, x, NULL, g, s0, dz, dx0, acc, dg0, db0);
      rn_bn_backward_train(&d1, m, x, y1, g, s1, dy, dx1, acc, dg1, db1);
    }
    ok &= same_bits(dx0, dx1, n) && same_bits(dg0, dg1, c) && same_bits(db0, db1, c);
  }
  /* in place: dx written over dy (the model's gradient arena does this) */
  memcpy(dx1, dy, n * 4);
  if (eval) rn_bn_backward_eval(&d1, m, x, y1, g, rm, rv, dx1, dx1, 0, NULL, NULL);
  else rn_bn_backward_train(&d1, m, x, y1, g, s1, dx1, dx1, 0, NULL, NULL);
  memcpy(dx0, dz, n * 4);
  if (eval) rn_bn_backward_eval(&d0, m, x, NULL, g, rm, rv, dx0, dx0, 0, NULL, NULL);
  else rn_bn_backward_train(&d0, m, x, NULL, g, s0, dx0, dx0, 0, NULL, NULL);
  ok &= same_bits(dx0, dx1, n);
  rn_bn_backward_train(&d1, m, x, y1, g, s1, dy, dz, 0, NULL, NULL); /* reference for the train case */
  if (!eval) ok &= same_bits(dx1, dz, n);
  memcpy(dx1, dy, n * 4); /* ReLU backward in place */
  rn_relu_backward((int64_t)n, y0, dx1, dx1, 0);
  rn_relu_backward((int64_t)n, y0, dy, dz, 0);
  ok &= same_bits(dx1, dz, n);
  CHECK(ok && zeros > n / 10, "bn+relu %s m=%d c=%d threads=%d: fused differs from BN then ReLU (%zu zeros)",
        eval ? "eval" : "train", m, c, threads, zeros);
  printf("  bn+relu %-5s m=%-6d c=%-3d threads=%d  bitwise equal to bn, relu: %s\n", eval ? "eval" : "train", m, c,
         threads, ok ? "yes" : "NO");
  free(x), free(g), free(b), free(rm), free(rv), free(dy), free(base), free(rm0), free(rv0), free(rm1), free(rv1);
  free(s0), free(s1), free(y0), free(y1), free(dz), free(dx0), free(dx1), free(dg0), free(db0), free(dg1), free(db1);
  rn_blas_set_threads(2);
}

/* add+ReLU vs add then rn_relu_forward / rn_relu_backward then the plain add backward, for every
 * scale kind (1, 0 = dropped branch, 1/p) and accumulate flag pair; outputs aliasing an input;
 * da aliasing dy. */
static void test_add_fused_bitwise(size_t n, float scale) {
  float *a = special(n, 211, -1, 1, 1), *b = special(n, 212, -1, 1, 1), *dy = special(n, 213, -1, 1, 1);
  for (size_t i = 0; i < n; i += 5) b[i] = -a[i]; /* exact zero sums */
  float *y0 = nanbuf(n), *y1 = nanbuf(n), *dz = nanbuf(n), *z = malloc(n * 4);
  float *da0 = malloc(n * 4), *db0 = malloc(n * 4), *da1 = malloc(n * 4), *db1 = malloc(n * 4);
  float *ba = randf(n, 214, -1, 1), *bb = randf(n, 215, -1, 1);
  int ok = 1;
  rn_add_forward((int64_t)n, a, b, scale, 0, y0);
  rn_relu_forward((int64_t)n, y0, y0);
  rn_add_forward((int64_t)n, a, b, scale, 1, y1);
  ok &= same_bits(y0, y1, n);
  memcpy(z, a, n * 4);
  rn_add_forward((int64_t)n, z, b, scale, 1, z); /* in place over the shortcut input */
  ok &= same_bits(z, y1, n);
  memcpy(z, b, n * 4);
  rn_add_forward((int64_t)n, a, z, scale, 1, z); /* in place over the branch input */
  ok &= same_bits(z, y1, n);
  rn_relu_backward((int64_t)n, y0, dy, dz, 0);
  for (int acc = 0; acc < 4; acc++) {
    int aa = acc & 1, ab = acc >> 1;
    memcpy(da0, aa ? ba : dy, n * 4), memcpy(da1, aa ? ba : dy, n * 4);
    memcpy(db0, ab ? bb : dy, n * 4), memcpy(db1, ab ? bb : dy, n * 4);
    rn_add_backward((int64_t)n, NULL, dz, scale, da0, aa, db0, ab);
    rn_add_backward((int64_t)n, y1, dy, scale, da1, aa, db1, ab);
    ok &= same_bits(da0, da1, n) && same_bits(db0, db1, n);
    /* only one of the two gradients wanted */
    memcpy(da1, aa ? ba : dy, n * 4);
    rn_add_backward((int64_t)n, y1, dy, scale, da1, aa, NULL, ab);
    ok &= same_bits(da0, da1, n);
    memcpy(db1, ab ? bb : dy, n * 4);
    rn_add_backward((int64_t)n, y1, dy, scale, NULL, aa, db1, ab);
    ok &= same_bits(db0, db1, n);
  }
  /* da aliasing dy (the gradient buffer of the output handed on to the shortcut input) */
  memcpy(z, dy, n * 4);
  rn_add_backward((int64_t)n, y1, z, scale, z, 0, db1, 0);
  rn_add_backward((int64_t)n, NULL, dz, scale, da0, 0, db0, 0);
  ok &= same_bits(z, da0, n) && same_bits(db1, db0, n);
  CHECK(ok, "add+relu n=%zu scale=%g: fused differs from add then ReLU", n, scale);
  printf("  add+relu n=%-7zu scale=%-9g bitwise equal to add, relu: %s\n", n, scale, ok ? "yes" : "NO");
  free(a), free(b), free(dy), free(y0), free(y1), free(dz), free(z), free(da0), free(db0), free(da1), free(db1);
  free(ba), free(bb);
}

/* BN of the residual branch fused with the add [+ReLU] (rn_bn_add_*) vs the BN, then rn_add_forward
 * (and rn_add_backward, then the BN backward): output (also over the shortcut input), saved and
 * running statistics, the statistics handed over by a convolution, the shortcut gradient (=, +=,
 * and written over dy), dx (=, +=), dgamma, dbeta; every scale kind, with and without the ReLU. */
/* Streaming stores for the BN+add output (rn_bn_set_add_stream_mb): bitwise the plain stores, over
 * a fresh output and in place over the shortcut, with the shortcut's lazy BN, scales 1/0/0.7, with
 * and without ReLU; a 64-byte-aligned output above the size (streamed), a misaligned one and
 * channels not a multiple of 16 (plain stores either way). */
static void test_bn_add_stream(int m, int c, float scale, int relu, int spre, int threads) {
  rn_blas_set_threads(threads);
  const size_t n = (size_t)m * c, bytes = ((n + 32) * 4 + 63) & ~(size_t)63;
  rn_bn_desc d = {c, 0.1f, 1e-5f, relu};
  float *x = randf(n, 401, -1.5f, 1.5f), *s = randf(n, 402, -1, 1), *sc = randf(c, 403, -1.5f, 1.5f);
  float *sh = randf(c, 404, -0.5f, 0.5f), *ssc = randf(c, 405, -1, 1), *ssh = randf(c, 406, -1, 1);
  rn_conv_pre sp = {ssc, ssh, 0};
  float *ref = aligned_alloc(64, bytes), *y = aligned_alloc(64, bytes);
  int ok = 1;
  for (int v = 0; v < 4; v++) { /* fresh aligned, in place aligned, fresh misaligned, in place misaligned */
    const int inplace = v & 1, off = v >= 2 ? 4 : 0;
    float *r = ref + off, *o = y + off;
    for (int on = 0; on < 2; on++) {
      float *dst = on ? o : r;
      if (inplace) memcpy(dst, s, n * 4);
      else for (size_t i = 0; i < n; i++) dst[i] = NAN;
      rn_bn_set_add_stream_mb(on ? 1 : 0);
      rn_bn_add_apply(&d, m, x, sc, sh, inplace ? dst : s, scale, dst, spre ? &sp : NULL);
    }
    ok &= same_bits(r, o, n);
  }
  rn_bn_set_add_stream_mb(-1);
  size_t zeros = 0;
  for (size_t i = 0; i < n; i++) zeros += ref[i + 4] == 0.0f;
  CHECK(ok && (!relu || zeros > n / 10), "BN+add streaming stores m=%d c=%d scale=%g relu=%d spre=%d threads=%d: differ from "
        "plain stores", m, c, scale, relu, spre, threads);
  free(x), free(s), free(sc), free(sh), free(ssc), free(ssh), free(ref), free(y);
}

static void test_bn_add_bitwise(int m, int c, int eval, int threads, float scale, int relu) {
  rn_blas_set_threads(threads);
  size_t n = (size_t)m * c;
  rn_bn_desc d0 = {c, 0.1f, 1e-5f, 0}, d1 = {c, 0.1f, 1e-5f, relu};
  float *x = special(n, 301 + (uint64_t)m, -1.5f, 1.5f, 0), *g = randf(c, 302, -1.5f, 1.5f);
  float *b = randf(c, 303, -0.5f, 0.5f), *rm = randf(c, 304, -0.3f, 0.3f), *rv = randf(c, 305, 0.5f, 2.0f);
  float *sc = special(n, 306, -1, 1, 0), *dy = special(n, 307, -1, 1, 0), *bs = randf(n, 308, -1, 1);
  float *bx = randf(n, 309, -1, 1);
  float *rm0 = malloc(c * 4), *rv0 = malloc(c * 4), *rm1 = malloc(c * 4), *rv1 = malloc(c * 4);
  memcpy(rm0, rm, c * 4), memcpy(rv0, rv, c * 4), memcpy(rm1, rm, c * 4), memcpy(rv1, rv, c * 4);
  float *s0 = nanbuf(2 * c), *s1 = nanbuf(2 * c), *z = nanbuf(n), *y0 = nanbuf(n), *y1 = nanbuf(n), *w = nanbuf(n);
  float *ds0 = malloc(n * 4), *ds1 = malloc(n * 4), *gb = malloc(n * 4), *dx0 = malloc(n * 4), *dx1 = malloc(n * 4);
  float *dg0 = calloc(c, 4), *db0 = calloc(c, 4), *dg1 = calloc(c, 4), *db1 = calloc(c, 4);
  int ok = 1;
  /* per-image statistics as a convolution hands them over (4 "images" of m/4 rows) */
  int nimg = 4;
  double *st = calloc((size_t)nimg * 2 * c, sizeof(double));
  for (size_t i = 0; i < (size_t)m; i++) {
    double *p = st + (size_t)(i * nimg / m) * 2 * c;
    for (int j = 0; j < c; j++) p[j] += x[i * c + j], p[c + j] += (double)x[i * c + j] * x[i * c + j];
  }
  for (int use_stats = 0; use_stats < (eval ? 1 : 2); use_stats++) {
    memcpy(rm0, rm, c * 4), memcpy(rv0, rv, c * 4), memcpy(rm1, rm, c * 4), memcpy(rv1, rv, c * 4);
    if (eval) {
      rn_bn_forward_eval(&d0, m, x, g, b, rm, rv, z);
      rn_bn_add_forward_eval(&d1, m, x, g, b, rm, rv, sc, scale, y1, NULL);
    } else if (use_stats) {
      rn_bn_forward_train_stats(&d0, m, x, g, b, rm0, rv0, s0, z, nimg, st);
      rn_bn_add_forward_train(&d1, m, x, g, b, rm1, rv1, s1, nimg, st, sc, scale, y1, NULL);
    } else {
      rn_bn_forward_train(&d0, m, x, g, b, rm0, rv0, s0, z);
      rn_bn_add_forward_train(&d1, m, x, g, b, rm1, rv1, s1, 0, NULL, sc, scale, y1, NULL);
    }
    if (!eval) ok &= same_bits(s0, s1, 2 * c) && same_bits(rm0, rm1, c) && same_bits(rv0, rv1, c);
    rn_add_forward((int64_t)n, sc, z, scale, relu, y0);
    ok &= same_bits(y0, y1, n);
  }
  memcpy(w, sc, n * 4); /* output over the shortcut input (the model's in-place add) */
  if (eval) rn_bn_add_forward_eval(&d1, m, x, g, b, rm, rv, w, scale, w, NULL);
  else rn_bn_add_forward_train(&d1, m, x, g, b, rm1, rv1, s1, 0, NULL, w, scale, w, NULL);
  ok &= same_bits(w, y0, n);
  size_t zeros = 0;
  for (size_t i = 0; i < n; i++) zeros += y1[i] == 0.0f;
  for (int acc = 0; acc < 4; acc++) {
    int as = acc & 1, ax = acc >> 1;
    memcpy(ds0, as ? bs : dy, n * 4), memcpy(ds1, as ? bs : dy, n * 4);
    memcpy(dx0, ax ? bx : dy, n * 4), memcpy(dx1, ax ? bx : dy, n * 4);
    rn_add_backward((int64_t)n, relu ? y0 : NULL, dy, scale, ds0, as, gb, 0);
    if (eval) {
      rn_bn_backward_eval(&d0, m, x, NULL, g, rm, rv, gb, dx0, ax, dg0, db0);
      rn_bn_add_backward_eval(&d1, m, x, y1, g, rm, rv, dy, scale, ds1, as, dx1, ax, dg1, db1);
    } else {
      rn_bn_backward_train(&d0, m, x, NULL, g, s0, gb, dx0, ax, dg0, db0);
      rn_bn_add_backward_train(&d1, m, x, y1, g, s1, dy, scale, ds1, as, dx1, ax, dg1, db1, NULL, NULL);
    }
    ok &= same_bits(ds0, ds1, n) && same_bits(dx0, dx1, n) && same_bits(dg0, dg1, c) && same_bits(db0, db1, c);
  }
  /* shortcut gradient written over dy */
  memcpy(w, dy, n * 4);
  rn_add_backward((int64_t)n, relu ? y0 : NULL, dy, scale, ds0, 0, gb, 0);
  if (eval) {
    rn_bn_backward_eval(&d0, m, x, NULL, g, rm, rv, gb, dx0, 0, NULL, NULL);
    rn_bn_add_backward_eval(&d1, m, x, y1, g, rm, rv, w, scale, w, 0, dx1, 0, NULL, NULL);
  } else {
    rn_bn_backward_train(&d0, m, x, NULL, g, s0, gb, dx0, 0, NULL, NULL);
    rn_bn_add_backward_train(&d1, m, x, y1, g, s1, w, scale, w, 0, dx1, 0, NULL, NULL, NULL, NULL);
  }
  ok &= same_bits(w, ds0, n) && same_bits(dx0, dx1, n);
  /* and dx written over x as well (the model's gradient over its dead input, RN_DX_OVER_X) */
  {
    float *xx = malloc(n * 4);
    memcpy(w, dy, n * 4), memcpy(xx, x, n * 4);
    if (eval) rn_bn_add_backward_eval(&d1, m, xx, y1, g, rm, rv, w, scale, w, 0, xx, 0, NULL, NULL);
    else rn_bn_add_backward_train(&d1, m, xx, y1, g, s1, w, scale, w, 0, xx, 0, NULL, NULL, NULL, NULL);
    ok &= same_bits(w, ds0, n) && same_bits(xx, dx0, n);
    free(xx);
  }
  /* A lazy shortcut BN (rn_node.lazy = 3): the shortcut given as that BN's input with its affine
   * (spre), not as its stored output; and in training, that BN's backward with the channel sums
   * the fused backward computed (ssums) vs its own pass. */
  int lazy_ok = 1;
  {
    float *sx = special(n, 310, -2, 2, 0), *ssc = randf(c, 311, -1.5f, 1.5f), *ssh = randf(c, 312, -0.5f, 0.5f);
    float *sg = randf(c, 313, 0.5f, 1.5f), *ssave = malloc(2 * c * 4), *st0 = nanbuf(n), *sdx0 = nanbuf(n);
    float *sdx1 = nanbuf(n), *sdg0 = calloc(c, 4), *sdb0 = calloc(c, 4), *sdg1 = calloc(c, 4), *sdb1 = calloc(c, 4);
    double *ssums = malloc(2 * (size_t)c * sizeof(double));
    for (int j = 0; j < c; j++) ssave[j] = 0.05f * (float)(j % 7), ssave[c + j] = 0.5f + 0.1f * (float)(j % 5);
    rn_conv_pre sp = {ssc, ssh, 0};
    rn_bn_apply(&d0, m, sx, ssc, ssh, st0); /* the BN output the add would read */
    memcpy(rm0, rm, c * 4), memcpy(rv0, rv, c * 4), memcpy(rm1, rm, c * 4), memcpy(rv1, rv, c * 4);
    if (eval) {
      rn_bn_add_forward_eval(&d1, m, x, g, b, rm, rv, st0, scale, y0, NULL);
      rn_bn_add_forward_eval(&d1, m, x, g, b, rm, rv, sx, scale, y1, &sp);
    } else {
      rn_bn_add_forward_train(&d1, m, x, g, b, rm0, rv0, s0, 0, NULL, st0, scale, y0, NULL);
      rn_bn_add_forward_train(&d1, m, x, g, b, rm1, rv1, s1, 0, NULL, sx, scale, y1, &sp);
      lazy_ok &= same_bits(s0, s1, 2 * c);
      rn_bn_add_apply(&d1, m, x, s1, s1 + c, sx, scale, w, &sp); /* s1: any coefficients will do */
      rn_bn_add_apply(&d1, m, x, s1, s1 + c, st0, scale, z, NULL);
      lazy_ok &= same_bits(w, z, n);
    }
    lazy_ok &= same_bits(y0, y1, n);
    if (!eval) {
      memcpy(ds0, dy, n * 4), memcpy(ds1, dy, n * 4);
      rn_bn_add_backward_train(&d1, m, x, y1, g, s1, dy, scale, ds0, 0, dx0, 0, NULL, NULL, NULL, NULL);
      rn_bn_add_backward_train(&d1, m, x, y1, g, s1, ds1, scale, ds1, 0, dx1, 0, NULL, NULL, sx, ssums);
      lazy_ok &= same_bits(ds0, ds1, n) && same_bits(dx0, dx1, n);
      rn_bn_backward_train(&d0, m, sx, NULL, sg, ssave, ds0, sdx0, 0, sdg0, sdb0);
      rn_bn_backward_train_sums(&d0, m, sx, NULL, sg, ssave, ds1, sdx1, 0, sdg1, sdb1, 1, ssums, 0);
      lazy_ok &= same_bits(sdx0, sdx1, n) && same_bits(sdg0, sdg1, c) && same_bits(sdb0, sdb1, c);
    }
    free(sx), free(ssc), free(ssh), free(sg), free(ssave), free(st0), free(sdx0), free(sdx1), free(sdg0);
    free(sdb0), free(sdg1), free(sdb1), free(ssums);
  }
  CHECK(lazy_ok, "bn+add%s %s m=%d c=%d threads=%d scale=%g: over a lazy shortcut BN differs from over its output",
        relu ? "+relu" : "", eval ? "eval" : "train", m, c, threads, scale);
  ok &= lazy_ok;
  CHECK(ok && (!relu || zeros > n / 10), "bn+add%s %s m=%d c=%d threads=%d scale=%g: fused differs from BN then add "
        "(%zu zeros)", relu ? "+relu" : "", eval ? "eval" : "train", m, c, threads, scale, zeros);
  printf("  bn+add%-5s %-5s m=%-6d c=%-3d threads=%d scale=%-6g bitwise equal to bn, add: %s\n", relu ? "+relu" : "",
         eval ? "eval" : "train", m, c, threads, scale, ok ? "yes" : "NO");
  free(x), free(g), free(b), free(rm), free(rv), free(sc), free(dy), free(bs), free(bx), free(rm0), free(rv0);
  free(rm1), free(rv1), free(s0), free(s1), free(z), free(y0), free(y1), free(w), free(ds0), free(ds1), free(gb);
  free(dx0), free(dx1), free(dg0), free(db0), free(dg1), free(db1), free(st);
  rn_blas_set_threads(2);
}

/* ---------- option-A shortcut ---------- */
static rn_shortcut_a_desc SD;
static int SN;
static double *Sx, *Sr;
static void sc_ref(double *y) {
  const rn_shortcut_a_desc *d = &SD;
  int lo = (d->cout - d->cin) / 2;
  for (int i = 0; i < SN; i++)
    for (int oy = 0; oy < d->oh; oy++)
      for (int ox = 0; ox < d->ow; ox++)
        for (int co = 0; co < d->cout; co++)
          y[(((size_t)i * d->oh + oy) * d->ow + ox) * d->cout + co] =
              co >= lo && co < lo + d->cin
                  ? Sx[(((size_t)i * d->h + (size_t)oy * d->stride) * d->w + (size_t)ox * d->stride) * d->cin + co - lo]
                  : 0.0;
}
static double sc_loss(void) {
  size_t n = (size_t)SN * SD.oh * SD.ow * SD.cout;
  double *y = malloc(n * sizeof(double));
  sc_ref(y);
  double L = dotr(y, Sr, n);
  free(y);
  return L;
}
static void test_shortcut(int cin, int cout, int h, int w, int s, int n) {
  rn_err e;
  RN_ASSERT(rn_shortcut_a_desc_init(&SD, cin, cout, h, w, s, &e) == RN_OK);
  SN = n;
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * SD.oh * SD.ow * cout;
  float *x = randf(nx, 91, -1, 1), *r = randf(ny, 92, -1, 1), *y = nanbuf(ny), *dx = nanbuf(nx);
  float *base = randf(nx, 93, -1, 1), *dx1 = malloc(nx * 4);
  memcpy(dx1, base, nx * 4);
  Sx = tod(x, nx), Sr = tod(r, ny);
  double *yd = malloc(ny * sizeof(double));
  sc_ref(yd);
  rn_shortcut_a_forward(&SD, n, x, y);
  check_fwd("shortcut A forward", y, yd, ny, 0);
  rn_shortcut_a_backward(&SD, n, r, dx, 0);
  rn_shortcut_a_backward(&SD, n, r, dx1, 1);
  char what[64];
  snprintf(what, sizeof what, "shortcutA %d->%d %dx%d/%d dx", cin, cout, h, w, s);
  check_grad(what, dx, Sx, nx, sc_loss);
  check_acc("shortcut A dx", dx, base, dx1, nx);
  free(x), free(r), free(y), free(dx), free(base), free(dx1), free(Sx), free(Sr), free(yd);
}

/* ---------- softmax cross-entropy ---------- */
static int XN, XC;
static double XS, *Xz;
static const int32_t *Xl;
static double xent_ref(void) {
  double L = 0;
  for (int i = 0; i < XN; i++) {
    const double *z = Xz + (size_t)i * XC;
    double mx = z[0], se = 0;
    for (int j = 1; j < XC; j++) mx = fmax(mx, z[j]);
    for (int j = 0; j < XC; j++) se += exp(z[j] - mx);
    double lse = mx + log(se);
    for (int j = 0; j < XC; j++) {
      double t = (j == Xl[i] ? 1 - XS : 0) + XS / XC;
      L -= t * (z[j] - lse);
    }
  }
  return L / XN;
}
static void test_xent(int n, int classes, float smoothing) {
  XN = n, XC = classes, XS = smoothing;
  size_t nz = (size_t)n * classes;
  float *z = randf(nz, 101, -4, 4), *g = nanbuf(nz);
  int32_t *lab = malloc(n * sizeof(int32_t));
  rn_rng r = rn_rng_make(102);
  for (int i = 0; i < n; i++) lab[i] = (int32_t)rn_rng_below(&r, classes);
  Xz = tod(z, nz), Xl = lab;
  int t1 = -1, t5 = -1;
  double L = rn_softmax_xent(n, classes, z, lab, smoothing, g, &t1, &t5);
  double Lr = xent_ref();
  CHECK(fabs(L - Lr) < 1e-9 * (1 + fabs(Lr)), "xent loss %.12g vs ref %.12g", L, Lr);
  int e1 = 0, e5 = 0;
  for (int i = 0; i < n; i++) {
    int rank = 0;
    for (int j = 0; j < classes; j++) rank += z[(size_t)i * classes + j] > z[(size_t)i * classes + lab[i]];
    e1 += rank < 1, e5 += rank < 5;
  }
  CHECK(t1 == e1 && t5 == e5, "xent top1 %d (want %d) top5 %d (want %d)", t1, e1, t5, e5);
  char what[64];
  snprintf(what, sizeof what, "softmax CE n=%d C=%d eps=%g dlogits", n, classes, smoothing);
  check_grad(what, g, Xz, nz, xent_ref);
  free(z), free(g), free(lab), free(Xz);
}
static void test_xent_counts(void) {
  /* hand-made: row 0 label is the max, row 1 label 3rd, row 2 label 6th, row 3 label last */
  float z[4][7] = {{0, 5, 1, 2, 3, 4, -1}, {9, 8, 7, 6, 5, 4, 3}, {9, 8, 7, 6, 5, 4, 3}, {1, 2, 3, 4, 5, 6, 7}};
  int32_t lab[4] = {1, 2, 5, 0};
  int t1, t5;
  float g[28];
  rn_softmax_xent(4, 7, &z[0][0], lab, 0, g, &t1, &t5);
  CHECK(t1 == 1 && t5 == 2, "hand-made top1 %d (want 1) top5 %d (want 2)", t1, t5);
  /* uniform logits: loss = log(C) whatever the smoothing */
  float u[3 * 10] = {0};
  int32_t l3[3] = {0, 4, 9};
  double L = rn_softmax_xent(3, 10, u, l3, 0.1f, NULL, NULL, NULL);
  CHECK(fabs(L - log(10.0)) < 1e-12, "uniform logits loss %.15g, want log 10", L);
}

int main(int argc, char **argv) {
  rn_err e;
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  if (rn_blas_init(NULL, threads, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  rn_blas_reserve(1 << 16);
  test_conv(3, 4, 3, 2, 1, 7, 7, 2, 0);
  test_conv(5, 6, 3, 1, 1, 5, 6, 2, 7); /* several chunks */
  test_conv(4, 3, 1, 1, 0, 4, 5, 2, 0); /* pointwise: one GEMM */
  test_conv(5, 3, 1, 2, 0, 5, 5, 2, 3); /* 1x1 stride 2 */
  test_conv(2, 3, 7, 2, 3, 9, 9, 1, 0);
  for (int relu = 0; relu < 2; relu++) {
    test_bn(60, 7, 0, 0, relu);
    test_bn(60, 7, 1, 0, relu);
    test_bn(2 * 5 * 5, 19, 0, 3, relu); /* mean far from 0 */
    test_bn(3, 5, 0, 0, relu);          /* tiny batch */
    test_bn(70, 33, 0, 0.3f, relu);     /* several 16-channel blocks and a partial one */
    test_bn(20, 517, 0, 0.3f, relu);    /* channel sums: a 512-channel block, then 5 (CB in bn.c) */
    test_bn_threads(relu);
  }
  test_relu();
  test_maxpool(5, 9, 9, 3, 2, 1, 2, -1, 1);
  test_maxpool(3, 7, 8, 3, 2, 1, 2, -3, -1); /* all negative: padding must never win */
  test_maxpool(4, 6, 6, 2, 2, 0, 2, -1, 1);
  test_maxpool(3, 5, 5, 3, 1, 1, 1, -1, 1);
  test_maxpool(16, 9, 9, 3, 2, 1, 2, -1, 1); /* 16-channel vectors (AVX-512 path) */
  test_maxpool(32, 7, 8, 3, 2, 1, 2, -3, -1);
  test_maxpool_pre(5, 9, 9, 2), test_maxpool_pre(32, 12, 11, 3);
  test_maxpool_ties(2), test_maxpool_ties(16);
  test_maxpool_gather(5, 9, 9, 3, 2, 1, 2), test_maxpool_gather(16, 12, 11, 3, 2, 1, 2);
  test_maxpool_gather(64, 14, 14, 3, 2, 1, 2), test_maxpool_gather(37, 8, 9, 3, 1, 1, 2);
  test_maxpool_gather(32, 9, 7, 2, 2, 0, 1), test_maxpool_gather(19, 10, 10, 3, 3, 0, 1);
  test_maxpool_gather(48, 11, 11, 3, 2, 0, 2);
  test_avgpool();
  test_linear(5, 33, 10);
  test_linear(1, 7, 3);
  for (int relu = 0; relu < 2; relu++) {
    test_add(1.0f, relu);
    test_add(0.5f, relu);
    test_add(2.0f, relu);
    test_add(0.0f, relu);
  }
  for (int t = 1; t <= 2; t++) {
    test_bn_fused_bitwise(60, 7, 0, t);
    test_bn_fused_bitwise(60, 7, 1, t);
    test_bn_fused_bitwise(3000, 16, 0, t); /* threaded, several groups */
    test_bn_fused_bitwise(3000, 16, 1, t);
    test_bn_fused_bitwise(1500, 40, 0, t); /* 16-channel blocks + a partial one */
    test_bn_fused_bitwise(1500, 40, 1, t);
  }
  static const float scales[] = {1.0f, 0.0f, 1.0f / 0.7f};
  for (int i = 0; i < 3; i++) {
    test_add_fused_bitwise(777, scales[i]);
    test_add_fused_bitwise(100003, scales[i]); /* threaded */
  }
  for (int t = 1; t <= 2; t++)
    for (int i = 0; i < 3; i++)
      for (int relu = 0; relu < 2; relu++) {
        test_bn_add_bitwise(60, 7, 0, t, scales[i], relu);
        test_bn_add_bitwise(60, 7, 1, t, scales[i], relu);
        test_bn_add_bitwise(3000, 16, 0, t, scales[i], relu); /* threaded, several groups */
        test_bn_add_bitwise(1500, 40, 0, t, scales[i], relu); /* 8/16-channel blocks + a partial one */
        test_bn_add_bitwise(1500, 40, 1, t, scales[i], relu);
        test_bn_add_bitwise(40, 517, 0, t, scales[i], relu); /* a 512-channel block, then 5 */
        test_bn_add_stream(20000, 32, scales[i], relu, i & 1, t); /* 2.6 MB: above the 1 MB set */
        test_bn_add_stream(9000, 40, scales[i], relu, 0, t);      /* channels not a multiple of 16 */
      }
  test_shortcut(4, 8, 7, 7, 2, 2);
  test_shortcut(5, 8, 6, 5, 1, 2);
  test_shortcut(16, 32, 8, 8, 2, 1);
  test_xent(6, 10, 0.0f);
  test_xent(6, 10, 0.1f);
  test_xent(3, 1000, 0.1f);
  test_xent_counts();
  printf("test_layers_fd: worst gradient rel err %.3g (%s), tolerance %.0e\n", g_worst, g_worst_what, TOL);
  return tu_done("test_layers_fd");
}
