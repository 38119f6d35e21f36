/* The direct AVX-512 convolution (stride 1, channels multiples of 16) against the naive reference:
 * 1x1 (read in place) and 2x2..5x5 kernels with every legal padding, widths 1..37 (all pixel-tile tails: 16, 8, 4, 1 and the
 * two-channel-block path for short lines), 16..64 channels, batches 1..5 on 1 and 2 threads
 * (images split unevenly), forward, dx (acc 0 and 1), dw accumulation, dx or dw NULL. Workspace
 * malloc'ed at exactly rn_conv_workspace's size and filled with NaN (ASan catches overruns). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"
#include "rn/wino.h"
#include "testutil.h"

static const double TOL = 5e-5;
static double g_max;
static int g_expect_direct = 1; /* 0: the production rules pick per direction (mixed paths) */

static double relerr(const float *a, const float *b, size_t n) {
  double md = 0, mb = 1e-3;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!isfinite(d)) return INFINITY;
    if (d > md) md = d;
    if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
  }
  return md / mb;
}
static float *randf(size_t n, uint64_t seed) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  rn_rng r = rn_rng_make(seed);
  for (size_t i = 0; i < n; i++) p[i] = rn_rng_uniform(&r) * 2 - 1;
  return p;
}
static float *nanbuf(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  for (size_t i = 0; i < n; i++) p[i] = NAN;
  return p;
}

static void ones(int cin, int cout, int k, int p, int s, int h, int w, int n, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, k, k, s, p, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  CHECK(!g_expect_direct ||
            (rn_conv_direct_ok(&d) && rn_conv_direct_bwd_ok(&d) &&
             ((s > 1 && k > 1 && !(k == 3 && p == 1)) || rn_conv_direct_dx_ok(&d))),
        "cin=%d cout=%d k=%d p=%d s=%d: direct path not taken", cin, cout, k, p, s);
  size_t wsn = rn_conv_workspace(&d, n);
  CHECK(!rn_conv_direct_shape(&d) || wsn >= rn_conv_direct_workspace(&d, n, rn_blas_threads()), "workspace too small");
  CHECK(!rn_conv_stem7_shape(&d) || wsn >= rn_conv_stem7_workspace(&d, rn_blas_threads()), "stem workspace too small");
  float *ws = nanbuf(wsn);
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * d.oh * d.ow * cout, nw = (size_t)cout * k * k * cin;
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *dy = randf(ny, seed + 2);
  float *y = nanbuf(ny), *yr = malloc(ny * 4), *dxr = malloc(nx * 4), *dwr = malloc(nw * 4);
  rn_conv_forward(&d, n, x, wt, y, ws);
  rn_ref_conv_forward(&d, n, x, wt, yr);
  rn_ref_conv_backward(&d, n, x, wt, dy, dxr, dwr);
  double ef = relerr(y, yr, ny);

  float *dx = nanbuf(nx), *dw = randf(nw, seed + 3), *dwx = malloc(nw * 4), *dw0 = malloc(nw * 4);
  memcpy(dw0, dw, nw * 4);
  for (size_t i = 0; i < nw; i++) dwx[i] = dw0[i] + dwr[i];
  rn_conv_backward(&d, n, x, wt, dy, dx, 0, dw, ws);
  double edx = relerr(dx, dxr, nx), edw = relerr(dw, dwx, nw);

  float *dx1 = randf(nx, seed + 4), *dxx = malloc(nx * 4);
  for (size_t i = 0; i < nx; i++) dxx[i] = dx1[i] + dxr[i];
  rn_conv_backward(&d, n, x, wt, dy, dx1, 1, NULL, ws);
  double edx1 = relerr(dx1, dxx, nx);
  memcpy(dw, dw0, nw * 4);
  rn_conv_backward(&d, n, x, wt, dy, NULL, 0, dw, ws);
  double edw2 = relerr(dw, dwx, nw);

  char tag[128];
  snprintf(tag, sizeof tag, "cin=%d cout=%d k=%d p=%d s=%d in=%dx%d n=%d T=%d", cin, cout, k, p, s, h, w, n,
           rn_blas_threads());
  CHECK(ef < TOL, "%s forward rel err %.3g", tag, ef);
  CHECK(edx < TOL, "%s dx(acc=0) rel err %.3g", tag, edx);
  CHECK(edx1 < TOL, "%s dx(acc=1) rel err %.3g", tag, edx1);
  CHECK(edw < TOL, "%s dw rel err %.3g", tag, edw);
  CHECK(edw2 < TOL, "%s dw(dx=NULL) rel err %.3g", tag, edw2);
  double m = fmax(fmax(ef, edx), fmax(edx1, fmax(edw, edw2)));
  if (m > g_max) g_max = m;
  free(ws), free(x), free(wt), free(dy), free(y), free(yr), free(dxr), free(dwr), free(dx), free(dw), free(dwx);
  free(dw0), free(dx1), free(dxx);
}

/* BN statistics from the forward epilogue: per image and channel, the sum and the sum of squares of
 * the output, against double sums over the output the same call wrote (only the order of the
 * double additions differs: rel. err ~1e-15). */
static void stats_case(int cin, int cout, int k, int p, int s, int h, int w, int n, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, k, k, s, p, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * d.oh * d.ow * cout, nw = (size_t)cout * k * k * cin;
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *y = nanbuf(ny), *ws = nanbuf(rn_conv_workspace(&d, n));
  double *st = malloc((size_t)n * 2 * cout * sizeof(double));
  for (size_t i = 0; i < (size_t)n * 2 * cout; i++) st[i] = NAN;
  int got = rn_conv_forward_stats(&d, n, x, wt, y, ws, st);
  const int direct = rn_conv_direct_ok(&d) || rn_conv_stem7_shape(&d);
  CHECK(got == direct, "stats k=%d s=%d cin=%d: returned %d, direct path %d", k, s, cin, got, direct);
  double worst = 0;
  if (got)
    for (int i = 0; i < n; i++)
      for (int c = 0; c < cout; c++) {
        double s1 = 0, s2 = 0, a = 0;
        for (int q = 0; q < d.oh * d.ow; q++) {
          double v = y[((size_t)i * d.oh * d.ow + q) * cout + c];
          s1 += v, s2 += v * v, a += fabs(v);
        }
        double e1 = fabs(st[(size_t)i * 2 * cout + c] - s1) / (a > 1e-30 ? a : 1e-30);
        double e2 = fabs(st[((size_t)i * 2 + 1) * cout + c] - s2) / (s2 > 1e-30 ? s2 : 1e-30);
        if (!(e1 <= worst)) worst = e1; /* NaN (a channel never written) counts as worst */
        if (!(e2 <= worst)) worst = e2;
      }
  CHECK(worst < 1e-12, "stats k=%d s=%d cin=%d cout=%d %dx%d n=%d: rel err %.3g", k, s, cin, cout, h, w, n, worst);
  free(x), free(wt), free(y), free(ws), free(st);
}

/* BN backward sums from the dx epilogue (rn_conv_backward_bn): dx bitwise equal to the plain
 * backward's (masked by mask > 0 when a mask is given: stored as g); per image and input channel,
 * sum gb and sum gb*x with g = (mask > 0 ? dx : 0) (or dx without a mask) and gb = g, 0 or scale*g,
 * against double sums over the dx the same call wrote; dx accumulated (acc) too. */
static void bsums_case(int cin, int cout, int k, int p, int s, int h, int w, int n, int use_mask, int acc,
                       float scale, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, k, k, s, p, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * d.oh * d.ow * cout, nw = (size_t)cout * k * k * cin;
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *dy = randf(ny, seed + 2), *mask = randf(nx, seed + 3);
  float *xb = randf(nx, seed + 4), *base = randf(nx, seed + 5), *ws = nanbuf(rn_conv_workspace(&d, n));
  float *dx0 = malloc(nx * 4), *dx1 = malloc(nx * 4), *dw0 = calloc(nw, 4), *dw1 = calloc(nw, 4);
  memcpy(dx0, base, nx * 4), memcpy(dx1, base, nx * 4);
  double *st = malloc((size_t)n * 2 * cin * sizeof(double));
  for (size_t i = 0; i < (size_t)n * 2 * cin; i++) st[i] = NAN;
  rn_conv_backward(&d, n, x, wt, dy, dx0, acc, dw0, ws);
  rn_bn_sums bs = {use_mask ? mask : NULL, xb, st, scale, use_mask, NULL}; /* g stored when masked */
  int got = rn_conv_backward_bn(&d, n, x, wt, dy, dx1, acc, dw1, ws, &bs);
  /* 1x1 stride 2 (direct dx, spread2) computes no sums */
  CHECK(got == (rn_conv_direct_dx_ok(&d) && (s == 1 || k > 1)), "bn sums k=%d s=%d cin=%d: returned %d, direct dx %d", k, s, cin,
        got, rn_conv_direct_dx_ok(&d));
  if (got && use_mask) /* the stored dx is g: the plain dx masked */
    for (size_t i = 0; i < nx; i++) dx0[i] = mask[i] > 0.0f ? dx0[i] : 0.0f;
  CHECK(!memcmp(dx0, dx1, nx * 4) && !memcmp(dw0, dw1, nw * 4), "bn sums k=%d cin=%d: dx/dW differ from the plain "
        "backward", k, cin);
  double worst = 0;
  size_t masked = 0;
  if (got)
    for (int i = 0; i < n; i++)
      for (int c = 0; c < cin; c++) {
        double s1 = 0, s2 = 0, a1 = 0, a2 = 0;
        for (int q = 0; q < h * w; q++) {
          size_t o = ((size_t)i * h * w + q) * cin + c;
          float gf = use_mask && !(mask[o] > 0.0f) ? 0.0f : dx1[o];
          double g = scale == 1.0f ? gf : scale == 0.0f ? 0.0f : scale * gf; /* gb */
          masked += use_mask && !(mask[o] > 0.0f);
          s1 += g, s2 += g * xb[o], a1 += fabs(g), a2 += fabs(g * xb[o]);
        }
        double e1 = fabs(st[(size_t)i * 2 * cin + c] - s1) / (a1 > 1e-30 ? a1 : 1e-30);
        double e2 = fabs(st[((size_t)i * 2 + 1) * cin + c] - s2) / (a2 > 1e-30 ? a2 : 1e-30);
        if (!(e1 <= worst)) worst = e1; /* NaN (a channel never written) counts as worst */
        if (!(e2 <= worst)) worst = e2;
      }
  CHECK(worst < 1e-12 && (!use_mask || !got || masked > nx / 4), "bn sums k=%d s=%d cin=%d cout=%d %dx%d n=%d mask=%d "
        "acc=%d scale=%g: rel err %.3g (%zu masked)", k, s, cin, cout, h, w, n, use_mask, acc, scale, worst, masked);
  free(x), free(wt), free(dy), free(mask), free(xb), free(base), free(ws), free(dx0), free(dx1), free(dw0), free(dw1);
  free(st);
}

/* A convolution over a lazy BN's output (rn_conv_pre: never stored; the kernel applies
 * [relu](x * sc + sh) to the BN's input x itself): forward (with statistics), dx with the BN sums
 * (mask from x * sc + sh > 0) and dW must be bitwise those of the same calls on the stored output
 * a = [relu](fmaf(x, sc, sh)) (mask a > 0). 3x3: the padded copy; 1x1 stride 1: bands of lines
 * (forward) and the dW kernel's packing. */
static void pre_case(int cin, int cout, int k, int p, int h, int w, int n, int relu, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, k, k, 1, p, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  CHECK(rn_conv_pre_ok(&d), "pre k=%d cin=%d %dx%d: rn_conv_pre_ok refused", k, cin, h, w);
  if (!rn_conv_pre_ok(&d)) return;
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * d.oh * d.ow * cout, nw = (size_t)cout * k * k * cin;
  size_t ns = (size_t)n * 2 * (cin > cout ? cin : cout);
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *dy = randf(ny, seed + 2), *sc = randf(cin, seed + 3);
  float *sh = randf(cin, seed + 4), *a = malloc(nx * 4), *y0 = nanbuf(ny), *y1 = nanbuf(ny);
  float *ws = nanbuf(rn_conv_workspace(&d, n)), *dx0 = nanbuf(nx), *dx1 = nanbuf(nx);
  float *dw0 = calloc(nw, 4), *dw1 = calloc(nw, 4);
  double *st0 = malloc(ns * sizeof(double)), *st1 = malloc(ns * sizeof(double));
  size_t zeros = 0;
  for (size_t i = 0; i < nx; i++) {
    const int c = (int)(i % (size_t)cin);
    float v = fmaf(x[i], sc[c], sh[c]);
    a[i] = relu && !(v > 0.0f) ? 0.0f : v;
    zeros += a[i] == 0.0f;
  }
  rn_conv_pre pre = {sc, sh, relu};
  int g0 = rn_conv_forward_stats(&d, n, a, wt, y0, ws, st0);
  int g1 = rn_conv_forward_pre(&d, n, x, wt, y1, ws, st1, &pre);
  CHECK(g0 && g1 && !memcmp(y0, y1, ny * 4) && !memcmp(st0, st1, (size_t)n * 2 * cout * sizeof(double)),
        "pre k=%d cin=%d cout=%d %dx%d n=%d relu=%d: forward/statistics differ from the stored BN output", k, cin,
        cout, h, w, n, relu);
  rn_bn_sums b0 = {relu ? a : NULL, x, st0, 1.0f, relu, NULL}, b1 = {NULL, x, st1, 1.0f, relu, &pre};
  g0 = rn_conv_backward_bn(&d, n, a, wt, dy, dx0, 0, dw0, ws, &b0);
  g1 = rn_conv_backward_bn(&d, n, x, wt, dy, dx1, 0, dw1, ws, &b1);
  CHECK(g0 && g1 && !memcmp(dx0, dx1, nx * 4) && !memcmp(dw0, dw1, nw * 4) &&
            !memcmp(st0, st1, (size_t)n * 2 * cin * sizeof(double)) && (!relu || zeros > nx / 5),
        "pre k=%d cin=%d cout=%d %dx%d n=%d relu=%d: dx/dW/BN sums differ from the stored BN output (%zu zeros)", k,
        cin, cout, h, w, n, relu, zeros);
  /* and the plain path agrees with the naive reference on the stored output (ones() covers it) */
  free(x), free(wt), free(dy), free(sc), free(sh), free(a), free(y0), free(y1), free(ws), free(dx0), free(dx1);
  free(dw0), free(dw1), free(st0), free(st1);
}

/* The forward's images claimed one unit at a time by the threads (rn_conv_set_direct_dynamic) or
 * in static shares: output and per-image statistics bitwise the same, with a lazy BN (pre) or
 * without; n not a multiple of the thread count or of the images swept together (conv_images: a
 * unit is a group there, and the static shares cut groups short at a thread's end). */
static void dyn_case(int cin, int cout, int k, int p, int s, int h, int w, int n, int use_pre, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, k, k, s, p, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * d.oh * d.ow * cout, nw = (size_t)cout * k * k * cin;
  size_t ns = (size_t)n * 2 * cout;
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *sc = randf(cin, seed + 3), *sh = randf(cin, seed + 4);
  float *y0 = nanbuf(ny), *y1 = nanbuf(ny), *ws = nanbuf(rn_conv_workspace(&d, n));
  double *st0 = malloc(ns * sizeof(double)), *st1 = malloc(ns * sizeof(double));
  rn_conv_pre pre = {sc, sh, 1};
  rn_conv_set_direct_dynamic(0);
  int g0 = use_pre ? rn_conv_forward_pre(&d, n, x, wt, y0, ws, st0, &pre) : rn_conv_forward_stats(&d, n, x, wt, y0, ws, st0);
  rn_conv_set_direct_dynamic(1);
  int g1 = use_pre ? rn_conv_forward_pre(&d, n, x, wt, y1, ws, st1, &pre) : rn_conv_forward_stats(&d, n, x, wt, y1, ws, st1);
  CHECK(g0 && g1 && !memcmp(y0, y1, ny * 4) && !memcmp(st0, st1, ns * sizeof(double)),
        "dynamic images k=%d s=%d cin=%d cout=%d %dx%d n=%d pre=%d: output or statistics differ from static shares",
        k, s, cin, cout, h, w, n, use_pre);
  free(x), free(wt), free(sc), free(sh), free(y0), free(y1), free(ws), free(st0), free(st1);
}

/* 7 x 4 tiles for 1x1 stride-1 passes over 1024k input channels on 14k-wide lines
 * (rn_conv_set_tile74, item 50) against 14 x 2: the forward's output (also over a lazy BN's output,
 * pre) and the dx (the forward kernel over dy's 1024k channels, with the BN sums of a mask) bitwise
 * the same; the statistics and BN sums, added per 7 pixels instead of 14, within 1e-12 (relative to
 * the sum of magnitudes). cout 80: one 4-block group and a 1-block tail; 112: a 3-block tail (14 x 2
 * and 14 x 1 tiles); 272 (> 1 MB of weights: four blocks per sweep): four groups and a tail. */
static double sums_rel(const double *a, const double *b, size_t n) {
  double md = 0, mb = 1e-30;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
    md = fmax(md, fabs(a[i] - b[i])), mb = fmax(mb, fabs(b[i]));
  }
  return md / mb;
}
static void t74_case(int cin, int cout, int h, int w, int n, int use_pre, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, 1, 1, 1, 0, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * h * w * cout, nw = (size_t)cout * cin;
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *sc = randf(cin, seed + 3), *sh = randf(cin, seed + 4);
  float *y0 = nanbuf(ny), *y1 = nanbuf(ny), *ws = nanbuf(rn_conv_workspace(&d, n));
  double *st0 = malloc((size_t)n * 2 * cout * sizeof(double)), *st1 = malloc((size_t)n * 2 * cout * sizeof(double));
  rn_conv_pre pre = {sc, sh, 1};
  rn_conv_set_sweep1(0); /* its line-by-line tiles, not the plane sweep (sweep_case) */
  CHECK(rn_conv_tile74_passes(&d) & 1, "tile74 %d->%d %dx%d: the forward does not take 7 x 4 tiles", cin, cout, h, w);
  rn_conv_set_tile74(0);
  CHECK(!rn_conv_tile74_passes(&d), "tile74 %d->%d: switched off, still applies", cin, cout);
  int g0 = use_pre ? rn_conv_forward_pre(&d, n, x, wt, y0, ws, st0, &pre) : rn_conv_forward_stats(&d, n, x, wt, y0, ws, st0);
  rn_conv_set_tile74(1);
  int g1 = use_pre ? rn_conv_forward_pre(&d, n, x, wt, y1, ws, st1, &pre) : rn_conv_forward_stats(&d, n, x, wt, y1, ws, st1);
  double es = sums_rel(st1, st0, (size_t)n * 2 * cout);
  CHECK(g0 && g1 && !memcmp(y0, y1, ny * 4) && es < 1e-12,
        "tile74 forward %d->%d %dx%d n=%d pre=%d: output differs from 14 x 2 tiles, or statistics rel err %.3g", cin,
        cout, h, w, n, use_pre, es);
  /* dx of the transposed shape: dy has cin (1024k) channels, dx cout */
  rn_conv_desc t;
  if (rn_conv_desc_init(&t, cout, cin, 1, 1, 1, 0, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  float *mask = randf(ny, seed + 5), *xb = randf(ny, seed + 6), *dx0 = nanbuf(ny), *dx1 = nanbuf(ny);
  float *wst = nanbuf(rn_conv_workspace(&t, n));
  double *bs0 = malloc((size_t)n * 2 * cout * sizeof(double)), *bs1 = malloc((size_t)n * 2 * cout * sizeof(double));
  rn_bn_sums b0 = {mask, xb, bs0, 1.0f, 1, NULL}, b1 = {mask, xb, bs1, 1.0f, 1, NULL};
  CHECK(rn_conv_tile74_passes(&t) == 2, "tile74 %d->%d %dx%d: the dx does not take 7 x 4 tiles (%d)", cout, cin, h,
        w, rn_conv_tile74_passes(&t));
  rn_conv_set_tile74(0);
  int h0 = rn_conv_backward_bn(&t, n, y0, wt, x, dx0, 0, NULL, wst, &b0);
  rn_conv_set_tile74(1);
  int h1 = rn_conv_backward_bn(&t, n, y0, wt, x, dx1, 0, NULL, wst, &b1);
  double eb = sums_rel(bs1, bs0, (size_t)n * 2 * cout);
  CHECK(h0 && h1 && !memcmp(dx0, dx1, ny * 4) && eb < 1e-12,
        "tile74 dx %d->%d %dx%d n=%d: dx differs from 14 x 2 tiles, or BN sums rel err %.3g", cout, cin, h, w, n, eb);
  rn_conv_set_sweep1(1);
  free(x), free(wt), free(sc), free(sh), free(y0), free(y1), free(ws), free(st0), free(st1);
  free(mask), free(xb), free(dx0), free(dx1), free(wst), free(bs0), free(bs1);
}

/* The plane sweep of 1x1 stride-1 passes over >= 512 input channels (rn_conv_set_sweep1, item 51)
 * against line by line: the forward's output (also over a lazy BN's output, pre) and the dx (over
 * dy's >= 512 channels, with the BN sums of a mask; acc: added into a dx that holds values) bitwise
 * the same, the statistics and BN sums within 1e-12. Output channel blocks 3 (7 x 2 and 7 x 1
 * tiles), 5 (a group of four and 7 x 1), 6 (four and 7 x 2); 7-pixel tiles within 7-, 14- and
 * 28-wide lines, and over bands of lines (pre: pre1_lines). */
static void sweep_case(int cin, int cout, int h, int w, int n, int use_pre, int acc, uint64_t seed) {
  rn_conv_desc d, t;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, 1, 1, 1, 0, h, w, &e) || rn_conv_desc_init(&t, cout, cin, 1, 1, 1, 0, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * h * w * cout, nw = (size_t)cout * cin;
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *sc = randf(cin, seed + 3), *sh = randf(cin, seed + 4);
  float *y0 = nanbuf(ny), *y1 = nanbuf(ny), *ws = nanbuf(rn_conv_workspace(&d, n));
  double *st0 = malloc((size_t)n * 2 * cout * sizeof(double)), *st1 = malloc((size_t)n * 2 * cout * sizeof(double));
  rn_conv_pre pre = {sc, sh, 1};
  CHECK(rn_conv_sweep1_passes(&d) == 1 && rn_conv_sweep1_passes(&t) == 2,
        "sweep1 %d->%d %dx%d: passes %d and (transposed) %d, expected 1 and 2", cin, cout, h, w,
        rn_conv_sweep1_passes(&d), rn_conv_sweep1_passes(&t));
  rn_conv_set_sweep1(0);
  CHECK(!rn_conv_sweep1_passes(&d) && !rn_conv_sweep1_passes(&t), "sweep1 %d->%d: switched off, still applies", cin,
        cout);
  int g0 = use_pre ? rn_conv_forward_pre(&d, n, x, wt, y0, ws, st0, &pre) : rn_conv_forward_stats(&d, n, x, wt, y0, ws, st0);
  rn_conv_set_sweep1(1);
  int g1 = use_pre ? rn_conv_forward_pre(&d, n, x, wt, y1, ws, st1, &pre) : rn_conv_forward_stats(&d, n, x, wt, y1, ws, st1);
  double es = sums_rel(st1, st0, (size_t)n * 2 * cout);
  CHECK(g0 && g1 && !memcmp(y0, y1, ny * 4) && es < 1e-12,
        "sweep1 forward %d->%d %dx%d n=%d pre=%d: output differs from line by line, or statistics rel err %.3g", cin,
        cout, h, w, n, use_pre, es);
  /* dx of the transposed shape: dy (y0) has cin (>= 512) channels, dx cout */
  float *mask = randf(ny, seed + 5), *xb = randf(ny, seed + 6), *dx0 = acc ? randf(ny, seed + 7) : nanbuf(ny);
  float *dx1 = nanbuf(ny), *wst = nanbuf(rn_conv_workspace(&t, n));
  memcpy(dx1, dx0, ny * 4);
  double *bs0 = malloc((size_t)n * 2 * cout * sizeof(double)), *bs1 = malloc((size_t)n * 2 * cout * sizeof(double));
  rn_bn_sums b0 = {mask, xb, bs0, 1.0f, 1, NULL}, b1 = {mask, xb, bs1, 1.0f, 1, NULL};
  int h0 = 1, h1 = 1;
  rn_conv_set_sweep1(0);
  if (acc) rn_conv_backward(&t, n, y0, wt, x, dx0, 1, NULL, wst);
  else h0 = rn_conv_backward_bn(&t, n, y0, wt, x, dx0, 0, NULL, wst, &b0);
  rn_conv_set_sweep1(1);
  if (acc) rn_conv_backward(&t, n, y0, wt, x, dx1, 1, NULL, wst);
  else h1 = rn_conv_backward_bn(&t, n, y0, wt, x, dx1, 0, NULL, wst, &b1);
  double eb = acc ? 0 : sums_rel(bs1, bs0, (size_t)n * 2 * cout);
  CHECK(h0 && h1 && !memcmp(dx0, dx1, ny * 4) && eb < 1e-12,
        "sweep1 dx %d->%d %dx%d n=%d acc=%d: dx differs from line by line, or BN sums rel err %.3g", cout, cin, h, w, n,
        acc, eb);
  free(x), free(wt), free(sc), free(sh), free(y0), free(y1), free(ws), free(st0), free(st1);
  free(mask), free(xb), free(dx0), free(dx1), free(wst), free(bs0), free(bs1);
}

/* The 1x1 backward in bands of dW then dx (rn_conv_set_dw_interleave, item 39): against the
 * interleave off (dW over all of a thread's images first), dx and the BN sums of the BN before (a
 * lazy one, pre, or a stored output as mask) must be bitwise the same and dW within TOL, for
 * 512 KB bands and for 1 KB ones (one line each). */
static void il_case(int cin, int cout, int h, int w, int n, int use_pre, int acc, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, 1, 1, 1, 0, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  CHECK(rn_conv_direct_bwd_ok(&d) && rn_conv_direct_dx_ok(&d), "il %d->%d @%dx%d: not direct", cin, cout, h, w);
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * h * w * cout, nw = (size_t)cout * cin;
  size_t ns = (size_t)n * 2 * cin;
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *dy = randf(ny, seed + 2), *sc = randf(cin, seed + 5);
  float *sh = randf(cin, seed + 6), *base = randf(nx, seed + 7), *dwb = randf(nw, seed + 8), *mask = randf(nx, seed + 9);
  float *ws = nanbuf(rn_conv_workspace(&d, n));
  rn_conv_pre pre = {sc, sh, 1};
  float *dx[3], *dw[3];
  double *st[3];
  static const int kb[3] = {0, 512, 1};
  for (int v = 0; v < 3; v++) {
    dx[v] = malloc(nx * 4), dw[v] = malloc(nw * 4), st[v] = malloc(ns * sizeof(double));
    memcpy(dx[v], base, nx * 4), memcpy(dw[v], dwb, nw * 4);
    rn_bn_sums bs = {use_pre ? NULL : mask, x, st[v], 1.0f, 0, use_pre ? &pre : NULL};
    rn_conv_set_dw_interleave(kb[v]);
    CHECK(rn_conv_backward_bn(&d, n, x, wt, dy, dx[v], acc, dw[v], ws, &bs), "il %d->%d: no BN sums", cin, cout);
  }
  rn_conv_set_dw_interleave(512);
  for (int v = 1; v < 3; v++) {
    double edw = relerr(dw[v], dw[0], nw);
    CHECK(!memcmp(dx[0], dx[v], nx * 4) && !memcmp(st[0], st[v], ns * sizeof(double)) && edw < TOL,
          "il %d->%d @%dx%d n=%d pre=%d acc=%d bands of %d KB: dx %s, BN sums %s, dW rel err %.3g", cin, cout, h, w, n,
          use_pre, acc, kb[v], memcmp(dx[0], dx[v], nx * 4) ? "differ" : "same",
          memcmp(st[0], st[v], ns * sizeof(double)) ? "differ" : "same", edw);
  }
  for (int v = 0; v < 3; v++) free(dx[v]), free(dw[v]), free(st[v]);
  free(x), free(wt), free(dy), free(sc), free(sh), free(base), free(dwb), free(mask), free(ws);
}

/* The 1x1 dW kernel reading x and dy in place with the next chunk prefetched
 * (rn_conv_set_dw1x1_inplace; cin + cout <= 640: x in place up to 256 channels without a lazy BN, dy
 * up to 256): against a double reference, and bitwise against the packing path (switch off), for
 * whole images, for bands of pixels that start inside a chunk (rn_conv_dw1x1_pixels), and through
 * rn_conv_backward_bn (2 threads, interleaved bands: dx, dW and BN sums). */
static void ip_case(int cin, int cout, int h, int w, int n, int use_pre, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, 1, 1, 1, 0, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  const size_t P = (size_t)n * h * w, nx = P * cin, ny = P * cout, nw = (size_t)cout * cin;
  float *x = randf(nx, seed), *dy = randf(ny, seed + 1), *sc = randf(cin, seed + 2), *sh = randf(cin, seed + 3);
  float *wt = randf(nw, seed + 4), *pack = nanbuf(rn_conv_dw1x1_pack_floats(&d)), *ws = nanbuf(rn_conv_workspace(&d, n));
  rn_conv_pre pre = {sc, sh, 1};
  const rn_conv_pre *pp = use_pre ? &pre : NULL;
  float *a = malloc(nx * 4), *ref = malloc(nw * 4), *dw[2], *dwb[2], *dx[2], *dwf[2];
  double *st[2];
  for (size_t i = 0; i < nx; i++) {
    const float v = fmaf(x[i], sc[i % (size_t)cin], sh[i % (size_t)cin]);
    a[i] = use_pre ? (v > 0.0f ? v : 0.0f) : x[i];
  }
  for (int co = 0; co < cout; co++)
    for (int ci = 0; ci < cin; ci++) {
      double acc = 0;
      for (size_t p = 0; p < P; p++) acc += (double)dy[p * cout + co] * a[p * cin + ci];
      ref[(size_t)co * cin + ci] = (float)acc;
    }
  const size_t b = P / 3 | 1; /* an odd pixel: inside a chunk */
  for (int v = 0; v < 2; v++) {
    rn_conv_set_dw1x1_inplace(v == 0);
    dw[v] = calloc(nw, 4), dwb[v] = calloc(nw, 4), dx[v] = nanbuf(nx), dwf[v] = calloc(nw, 4);
    st[v] = malloc((size_t)n * 2 * cin * sizeof(double));
    rn_conv_dw1x1(&d, 0, n, use_pre ? x : a, dy, dw[v], pack, pp);
    rn_conv_dw1x1_pixels(&d, 0, b, use_pre ? x : a, dy, dwb[v], pack, pp);
    rn_conv_dw1x1_pixels(&d, b, P, use_pre ? x : a, dy + b * cout, dwb[v], pack, pp);
    rn_bn_sums bs = {use_pre ? NULL : x, x, st[v], 1.0f, 0, pp};
    CHECK(rn_conv_backward_bn(&d, n, use_pre ? x : a, wt, dy, dx[v], 0, dwf[v], ws, &bs), "ip %d->%d: no BN sums",
          cin, cout);
  }
  rn_conv_set_dw1x1_inplace(1);
  const double e0 = relerr(dw[0], ref, nw), e1 = relerr(dwb[0], ref, nw), e2 = relerr(dwf[0], ref, nw);
  CHECK(e0 < TOL && e1 < TOL && e2 < TOL, "ip %d->%d @%dx%d n=%d pre=%d: dW rel err %.3g (images), %.3g (bands), %.3g (backward)",
        cin, cout, h, w, n, use_pre, e0, e1, e2);
  CHECK(!memcmp(dw[0], dw[1], nw * 4) && !memcmp(dwb[0], dwb[1], nw * 4) && !memcmp(dwf[0], dwf[1], nw * 4) &&
            !memcmp(dx[0], dx[1], nx * 4) && !memcmp(st[0], st[1], (size_t)n * 2 * cin * sizeof(double)),
        "ip %d->%d @%dx%d n=%d pre=%d: in place differs from packing (images %d, bands %d, backward dW %d dx %d sums %d)",
        cin, cout, h, w, n, use_pre, !!memcmp(dw[0], dw[1], nw * 4), !!memcmp(dwb[0], dwb[1], nw * 4),
        !!memcmp(dwf[0], dwf[1], nw * 4), !!memcmp(dx[0], dx[1], nx * 4),
        !!memcmp(st[0], st[1], (size_t)n * 2 * cin * sizeof(double)));
  for (int v = 0; v < 2; v++) free(dw[v]), free(dwb[v]), free(dx[v]), free(dwf[v]), free(st[v]);
  free(x), free(dy), free(sc), free(sh), free(wt), free(pack), free(ws), free(a), free(ref);
}

static void one(int cin, int cout, int k, int p, int h, int w, int n, uint64_t seed) {
  ones(cin, cout, k, p, 1, h, w, n, seed);
}

/* The ImageNet stem (conv_stem7.c: forward and dW; dx, when asked for, on the GEMM path): forward
 * 2- and 1-block tiles, dW 4- and 1-block tiles (cout 64, 48, 80), 14-, 7-, 4- and 1-pixel tiles
 * (ow 15, 17, 11, 1), one-line and odd-sized images, uneven image splits; its statistics epilogue. */
static void stem_cases(void) {
  ones(3, 64, 7, 3, 2, 29, 29, 3, 35), ones(3, 48, 7, 3, 2, 9, 33, 2, 36), ones(3, 80, 7, 3, 2, 1, 22, 3, 37);
  ones(3, 16, 7, 3, 2, 2, 1, 3, 40);
  stats_case(3, 64, 7, 3, 2, 20, 29, 3, 38), stats_case(3, 80, 7, 3, 2, 5, 33, 2, 39);
}

int main(void) {
  rn_err e;
  if (rn_blas_init(NULL, 2, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  if (!rn_conv_direct_enabled()) {
    printf("test_conv_direct: direct path unavailable (no AVX-512): skipped\n");
    return 0;
  }
  rn_conv_set_wino(0); /* the 128+ channel 3x3 shapes would take Winograd (test_conv_wino) */
  /* The stem on 2 threads first: once a workspace has been planned for one thread, convolutions
   * never use more (conv.c), so the 2-thread passes of the loops below run on one thread after
   * their first 1-thread shape. */
  rn_blas_set_threads(2);
  g_expect_direct = 0;
  stem_cases();
  g_expect_direct = 1;
  rn_conv_set_direct_all_widths(1); /* every tail tile, whatever the speed rule */
  static const int kp[][2] = {{3, 1}, {3, 0}, {3, 2}, {2, 0}, {2, 1}, {5, 2}, {5, 4}, {1, 0}};
  static const int chans[] = {16, 32, 48, 64};
  int cases = 0;
  for (int threads = 2; threads >= 1; threads--) {
    rn_blas_set_threads(threads);
    for (int a = 0; a < (int)(sizeof kp / sizeof *kp); a++)
      for (int v = 0; v < 5; v++) {
        rn_rng r = rn_rng_make(rn_key(17, (uint64_t)a, (uint64_t)v, (uint64_t)threads));
        int cin = chans[rn_rng_below(&r, 4)], cout = chans[rn_rng_below(&r, 4)];
        int h = 1 + (int)rn_rng_below(&r, 12), w = 1 + (int)rn_rng_below(&r, 37);
        int n = 1 + (int)rn_rng_below(&r, 5);
        if (h + 2 * kp[a][1] < kp[a][0] || w + 2 * kp[a][1] < kp[a][0]) continue;
        one(cin, cout, kp[a][0], kp[a][1], h, w, n, (uint64_t)(100 * a + v));
        cases++;
      }
    /* CIFAR ResNet shapes (small batch). */
    one(16, 16, 3, 1, 32, 32, 3, 1), one(32, 32, 3, 1, 16, 16, 2, 2), one(64, 64, 3, 1, 8, 8, 5, 3);
    one(16, 64, 3, 1, 8, 8, 2, 4), one(64, 16, 3, 1, 8, 8, 2, 5);
    /* ResNet-50 line widths 7, 14, 28 (7 x 2-block and 14-pixel tiles), odd channel-block counts. */
    one(48, 48, 3, 1, 7, 7, 3, 6), one(32, 64, 3, 1, 14, 14, 2, 7), one(16, 32, 3, 1, 28, 28, 2, 8);
    one(80, 48, 3, 1, 5, 14, 2, 9);
    /* More than 128 input channels: the 3-wide kernel's partial sums per 128 channels. */
    one(272, 32, 3, 1, 6, 9, 2, 25), one(256, 48, 3, 1, 7, 7, 2, 26), one(32, 160, 3, 1, 5, 21, 2, 27);
    one(128, 128, 3, 1, 28, 28, 2, 28);
    /* Weights > 1 MB on 7x7 and 14x14 images: several images per sweep (conv_images), groups of 6
     * and 2 with partial groups at the end of a thread's images; forward and dx. */
    one(256, 128, 3, 1, 7, 7, 9, 41), one(128, 256, 3, 1, 14, 14, 3, 42);
    cases += 2;
    /* ResNet-50 1x1 shapes (expansion, reduction) at 7/14/28-wide lines, read in place (no padding). */
    one(64, 256, 1, 0, 14, 14, 2, 10), one(256, 64, 1, 0, 7, 7, 3, 11), one(32, 128, 1, 0, 28, 28, 1, 12);
    /* Stride 2 (forward and dW direct; dx direct for 1x1 (spread2) and 3x3 pad 1 (by pixel parity),
     * on the GEMM path for other pads and sizes): CIFAR/ResNet-50 down-sampling 3x3 and 1x1, odd
     * and even input sizes, the 7-wide tiles. */
    ones(16, 32, 3, 1, 2, 32, 32, 2, 13), ones(32, 64, 3, 1, 2, 15, 17, 3, 14), ones(64, 64, 3, 1, 2, 14, 14, 2, 15);
    ones(64, 128, 1, 0, 2, 28, 28, 2, 16), ones(48, 16, 1, 0, 2, 9, 11, 3, 17), ones(32, 32, 5, 2, 2, 13, 29, 2, 18);
    /* 3x3 stride 2 on tile3 (up to 64 channels): 16-pixel single-block tiles and 1-pixel tails
     * (ow 19), pairs with 8-, 4- and 1-pixel tiles (ow 10, 14), pads 0 and 2. */
    ones(32, 16, 3, 1, 2, 9, 37, 2, 44), ones(16, 48, 3, 0, 2, 11, 21, 3, 45), ones(32, 32, 3, 2, 2, 12, 25, 2, 46);
    /* 3x3 stride-2 dx by pixel parity (dx_parity): classes 14 wide (14-pixel tiles), 7 wide (7 x 4
     * blocks), one line and one pixel (1 x 2 input: the odd classes are empty or one pixel wide),
     * odd sizes (odd classes one pixel shorter), more than 256 dy channels (per-tap partial sums). */
    ones(128, 64, 3, 1, 2, 28, 28, 2, 62), ones(64, 128, 3, 1, 2, 14, 14, 3, 63), ones(16, 16, 3, 1, 2, 1, 2, 2, 64);
    ones(48, 32, 3, 1, 2, 13, 11, 3, 65), ones(32, 272, 3, 1, 2, 7, 9, 2, 66);
    /* 1x1 dW kernel (conv_dw1x1.c): input channels past a 64-block (48 and 16 left: 3- and 1-vector
     * tiles), 96 output channels (6/6/4 tiles per 16), chunks of 64 pixels across image borders;
     * stride 2 over whole lines, also lines wider than a chunk (ow 75). */
    one(112, 96, 1, 0, 9, 10, 3, 32), ones(208, 48, 1, 0, 2, 13, 15, 2, 33), ones(16, 32, 1, 0, 2, 3, 150, 2, 34);
    /* Over a lazy BN's output: 3x3 (padded copy), 1x1 in one band (64 x 14 x 14), in bands with a
     * shorter last one (64K floats per band: 128 ch @28: 18 + 10 lines; 64 ch @56: 18 x 3 + 2),
     * with and without ReLU. */
    pre_case(32, 32, 3, 1, 14, 14, 2, 1, 70), pre_case(16, 48, 3, 1, 9, 11, 3, 0, 71);
    pre_case(64, 256, 1, 0, 14, 14, 3, 1, 72), pre_case(128, 128, 1, 0, 28, 28, 2, 1, 73);
    pre_case(64, 64, 1, 0, 56, 56, 2, 1, 74), pre_case(48, 96, 1, 0, 5, 9, 3, 0, 75);
    /* The 1x1 dW read in place: both sides (64->64, 96->512, 512->64, and 112/48 input channels:
     * 3-vector tails), x only (16->528), dy only (528->16; a lazy BN: 64->256), a last partial
     * chunk and chunks across images (99- and 65-pixel images), 16 output channels. */
    ip_case(64, 64, 9, 11, 3, 0, 80), ip_case(112, 96, 5, 13, 2, 0, 81), ip_case(96, 512, 7, 9, 2, 0, 82);
    ip_case(512, 64, 4, 7, 3, 0, 83), ip_case(64, 256, 9, 9, 2, 1, 84), ip_case(48, 16, 5, 13, 3, 0, 85);
    ip_case(16, 528, 5, 7, 2, 0, 86), ip_case(528, 16, 7, 5, 2, 0, 87);
    /* Images claimed dynamically against static shares (groups of several images: 256->128 @7,
     * 128->256 @14; one at a time: the rest; odd n) */
    dyn_case(256, 128, 3, 1, 1, 7, 7, 9, 0, 90), dyn_case(128, 256, 3, 1, 1, 14, 14, 5, 1, 91);
    dyn_case(64, 256, 1, 0, 1, 14, 14, 5, 1, 92), dyn_case(32, 32, 3, 1, 2, 15, 17, 3, 0, 93);
    dyn_case(16, 16, 3, 1, 1, 32, 32, 7, 1, 94), dyn_case(256, 64, 1, 0, 1, 7, 7, 1, 0, 95);
    /* 1024 input channels on 14- and 28-wide lines: 7 x 4 tiles (item 50) forward, and in the dx
     * of 80->1024 (dy of 1024 channels); > 1 MB of weights (1024->272: four blocks per sweep). */
    rn_conv_set_sweep1(0); /* (the plane sweep, item 51, takes these shapes: line by line here) */
    one(1024, 80, 1, 0, 14, 14, 2, 96), one(80, 1024, 1, 0, 3, 28, 2, 97), one(1024, 272, 1, 0, 2, 14, 1, 98);
    rn_conv_set_sweep1(1);
    t74_case(1024, 80, 14, 14, 3, 0, 99), t74_case(1024, 112, 4, 28, 2, 1, 100), t74_case(2048, 272, 2, 14, 2, 0, 101);
    /* The plane sweep (item 51): 512-2048 input channels, forward and the dx over dy of as many
     * channels; 3, 5 and 6 output-channel blocks; 7-, 14- and 28-wide lines. */
    one(512, 48, 1, 0, 7, 7, 3, 102), one(80, 1024, 1, 0, 3, 28, 2, 103), one(2048, 96, 1, 0, 2, 14, 2, 104);
    sweep_case(512, 48, 7, 7, 3, 0, 0, 105), sweep_case(1024, 80, 4, 28, 2, 1, 0, 106);
    sweep_case(2048, 96, 14, 14, 2, 0, 1, 107), sweep_case(512, 80, 5, 14, 3, 1, 1, 108);
    cases += 66;
  }
  /* Disabled: the GEMM path serves the same shape. */
  rn_conv_set_direct(0);
  rn_conv_desc d;
  CHECK(rn_conv_desc_init(&d, 16, 16, 3, 3, 1, 1, 8, 8, &e) == RN_OK && !rn_conv_direct_ok(&d) &&
            rn_conv_direct_shape(&d), "switch off must disable the direct path");
  CHECK(rn_conv_desc_init(&d, 16, 16, 3, 3, 3, 1, 8, 8, &e) == RN_OK && !rn_conv_direct_shape(&d), "stride 3 accepted");
  CHECK(rn_conv_desc_init(&d, 24, 16, 3, 3, 1, 1, 8, 8, &e) == RN_OK && !rn_conv_direct_shape(&d), "cin 24 accepted");
  rn_conv_set_direct(1);
  rn_conv_set_direct_all_widths(0);
  CHECK(rn_conv_desc_init(&d, 512, 512, 3, 3, 1, 1, 13, 13, &e) == RN_OK && rn_conv_direct_shape(&d) &&
            !rn_conv_direct_ok(&d) && !rn_conv_direct_bwd_ok(&d), "13-wide accepted");
  CHECK(rn_conv_desc_init(&d, 512, 512, 3, 3, 1, 1, 7, 7, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            !rn_conv_direct_bwd_ok(&d), "7-wide: forward direct, backward GEMM expected");
  CHECK(rn_conv_desc_init(&d, 128, 128, 3, 3, 1, 1, 28, 28, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            rn_conv_direct_bwd_ok(&d), "28-wide refused");
  CHECK(rn_conv_desc_init(&d, 16, 16, 3, 3, 1, 1, 32, 32, &e) == RN_OK && rn_conv_direct_shape(&d), "32-wide refused");
  CHECK(rn_conv_desc_init(&d, 512, 512, 3, 3, 1, 1, 7, 7, &e) == RN_OK && rn_conv_direct_dx_ok(&d),
        "7-wide dx: direct expected");
  CHECK(rn_conv_desc_init(&d, 64, 256, 1, 1, 1, 0, 56, 56, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            rn_conv_direct_bwd_ok(&d) && rn_conv_direct_dx_ok(&d), "1x1@56: direct fwd/dW/dx expected");
  CHECK(rn_conv_desc_init(&d, 512, 128, 1, 1, 1, 0, 7, 7, &e) == RN_OK && !rn_conv_direct_dx_ok(&d),
        "1x1@7: GEMM dx expected");
  CHECK(rn_conv_desc_init(&d, 256, 64, 1, 1, 1, 0, 14, 14, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            rn_conv_direct_bwd_ok(&d), "1x1@14: direct fwd and dW expected");
  CHECK(rn_conv_desc_init(&d, 256, 512, 1, 1, 2, 0, 56, 56, &e) == RN_OK && rn_conv_direct_bwd_ok(&d) &&
            rn_conv_direct_dx_ok(&d), "1x1 stride 2 @56: direct dW and dx expected");
  CHECK(rn_conv_desc_init(&d, 512, 1024, 1, 1, 2, 0, 28, 28, &e) == RN_OK && rn_conv_direct_dx_ok(&d) &&
            rn_conv_direct_ok(&d) && rn_conv_direct_bwd_ok(&d),
        "1x1 stride 2 @28 (14-wide output, 2 MB of dW): direct fwd, dx and dW expected");
  CHECK(rn_conv_desc_init(&d, 1024, 2048, 1, 1, 2, 0, 14, 14, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            rn_conv_direct_dx_ok(&d) && !rn_conv_direct_bwd_ok(&d),
        "1x1 stride 2 @14 (7-wide output, 8 MB of dW): direct fwd and dx, GEMM dW expected");
  CHECK(rn_conv_desc_init(&d, 256, 512, 1, 1, 2, 0, 14, 14, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            rn_conv_direct_dx_ok(&d) && rn_conv_direct_bwd_ok(&d),
        "1x1 stride 2 @14 (7-wide output, 512 KB of dW): direct fwd, dx and dW expected");
  CHECK(rn_conv_desc_init(&d, 256, 512, 1, 1, 2, 0, 24, 24, &e) == RN_OK && !rn_conv_direct_ok(&d) &&
            !rn_conv_direct_dx_ok(&d) && !rn_conv_direct_bwd_ok(&d),
        "1x1 stride 2 @24 (12-wide output, not measured): GEMM expected");
  CHECK(rn_conv_desc_init(&d, 128, 256, 3, 3, 2, 1, 28, 28, &e) == RN_OK && rn_conv_direct_dx_ok(&d),
        "3x3 stride 2: direct dx (pixel parity) expected");
  CHECK(rn_conv_desc_init(&d, 128, 256, 3, 3, 2, 0, 28, 28, &e) == RN_OK && !rn_conv_direct_dx_ok(&d),
        "3x3 stride 2 pad 0: GEMM dx expected");
  CHECK(rn_conv_desc_init(&d, 512, 512, 3, 3, 2, 1, 14, 14, &e) == RN_OK && rn_conv_direct_dx_ok(&d) &&
            !rn_conv_direct_bwd_ok(&d),
        "3x3 stride 2 @14 (7-wide classes): direct dx, GEMM dW expected");
  CHECK(rn_conv_desc_init(&d, 256, 256, 3, 3, 2, 1, 12, 12, &e) == RN_OK && !rn_conv_direct_dx_ok(&d),
        "3x3 stride 2 @12 (6-wide classes): GEMM dx expected");
  CHECK(rn_conv_desc_init(&d, 512, 2048, 1, 1, 1, 0, 7, 7, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            !rn_conv_direct_bwd_ok(&d) && !rn_conv_direct_dx_ok(&d) &&
            rn_conv_desc_init(&d, 2048, 512, 1, 1, 1, 0, 7, 7, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            !rn_conv_direct_bwd_ok(&d) && !rn_conv_direct_dx_ok(&d),
        "1x1@7: direct fwd, GEMM dW and dx expected");
  CHECK(rn_conv_desc_init(&d, 512, 128, 1, 1, 1, 0, 12, 12, &e) == RN_OK && !rn_conv_direct_ok(&d),
        "1x1@12 (not measured): GEMM fwd expected");
  CHECK(rn_conv_desc_init(&d, 64, 256, 1, 1, 1, 0, 56, 56, &e) == RN_OK && rn_conv_pre_ok(&d) &&
            rn_conv_desc_init(&d, 256, 1024, 1, 1, 1, 0, 14, 14, &e) == RN_OK && rn_conv_pre_ok(&d),
        "1x1 stride 1 @56/@14: reading a lazy BN expected");
  CHECK(rn_conv_desc_init(&d, 512, 2048, 1, 1, 1, 0, 7, 7, &e) == RN_OK && !rn_conv_pre_ok(&d) &&
            rn_conv_desc_init(&d, 256, 512, 1, 1, 2, 0, 56, 56, &e) == RN_OK && !rn_conv_pre_ok(&d),
        "1x1@7 (GEMM dW and dx) or stride 2: no lazy BN expected");
  CHECK(rn_conv_desc_init(&d, 3, 16, 3, 3, 1, 1, 32, 32, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            rn_conv_direct_bwd_ok(&d) && !rn_conv_direct_dx_ok(&d), "CIFAR stem: direct fwd and dW, GEMM dx expected");
  CHECK(rn_conv_desc_init(&d, 4, 16, 3, 3, 1, 1, 32, 32, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            !rn_conv_direct_bwd_ok(&d), "4-channel stem: GEMM dW expected (36 accumulators)");
  CHECK(rn_conv_desc_init(&d, 3, 64, 7, 7, 2, 3, 224, 224, &e) == RN_OK && !rn_conv_direct_shape(&d) &&
            rn_conv_stem7_shape(&d), "ImageNet stem: its own kernel expected");
  CHECK(rn_conv_desc_init(&d, 3, 64, 7, 7, 2, 2, 224, 224, &e) == RN_OK && !rn_conv_stem7_shape(&d),
        "7x7 pad 2: not the stem kernel");
  CHECK(rn_conv_desc_init(&d, 4, 64, 7, 7, 2, 3, 224, 224, &e) == RN_OK && !rn_conv_stem7_shape(&d),
        "4-channel 7x7: not the stem kernel");
  CHECK(rn_conv_desc_init(&d, 32, 64, 3, 3, 2, 1, 16, 16, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            rn_conv_direct_bwd_ok(&d) && rn_conv_direct_dx_ok(&d), "3x3 stride 2, 32 ch: direct fwd/dW/dx expected");
  CHECK(rn_conv_desc_init(&d, 256, 256, 3, 3, 2, 1, 28, 28, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            rn_conv_direct_bwd_ok(&d) && rn_conv_direct_dx_ok(&d) && rn_conv_pre_ok(&d),
        "3x3 stride 2, 256 ch @28: direct fwd, dx and dW expected, reading a lazy BN");
  CHECK(rn_conv_desc_init(&d, 256, 256, 3, 3, 2, 1, 14, 14, &e) == RN_OK && rn_conv_direct_ok(&d) &&
            !rn_conv_direct_bwd_ok(&d) && rn_conv_direct_dx_ok(&d) && !rn_conv_pre_ok(&d) &&
            rn_conv_desc_init(&d, 384, 384, 3, 3, 2, 1, 28, 28, &e) == RN_OK && !rn_conv_direct_bwd_ok(&d),
        "3x3 stride 2, 256 ch @14 or 384 ch @28: GEMM dW expected");
  /* Streaming stores: a 1x1 forward with > 16 MB of 64-byte aligned output takes them; the result
   * must be bitwise that of the same kernel with ordinary stores (unaligned y) and match the GEMM. */
  {
    rn_blas_set_threads(2);
    rn_conv_desc sd;
    CHECK(rn_conv_desc_init(&sd, 64, 256, 1, 1, 1, 0, 64, 64, &e) == RN_OK && rn_conv_direct_ok(&sd), "1x1 big: direct");
    const int sn = 5;
    size_t nx = (size_t)sn * 64 * 64 * 64, ny = (size_t)sn * 64 * 64 * 256, nw = 256 * 64;
    float *x = randf(nx, 91), *wt = randf(nw, 92), *ws = nanbuf(rn_conv_workspace(&sd, sn));
    float *ya = aligned_alloc(64, ny * 4), *yu0 = malloc(ny * 4 + 64), *yg = malloc(ny * 4);
    float *yu = ((uintptr_t)yu0 & 63) ? yu0 : yu0 + 1; /* not 64-byte aligned: ordinary stores */
    rn_conv_forward(&sd, sn, x, wt, ya, ws);
    rn_conv_forward(&sd, sn, x, wt, yu, ws);
    rn_conv_set_direct(0);
    rn_conv_forward(&sd, sn, x, wt, yg, ws);
    rn_conv_set_direct(1);
    CHECK(memcmp(ya, yu, ny * 4) == 0, "streaming-store output differs from the ordinary stores");
    rn_conv_set_stream_mb(0); /* off (--ab stream): ordinary stores into the aligned buffer too */
    memset(ya, 0xff, ny * 4);
    rn_conv_forward(&sd, sn, x, wt, ya, ws);
    CHECK(memcmp(ya, yu, ny * 4) == 0, "output with streaming stores off differs");
    rn_conv_set_stream_mb(16);
    double es = relerr(ya, yg, ny);
    CHECK(es < TOL, "streaming 1x1 vs GEMM rel err %.3g", es);
    free(x), free(wt), free(ws), free(ya), free(yu0), free(yg);
  }
  /* BN statistics in the forward epilogue: generic tile (5x5, stride 2, 1x1 with streaming-size
   * output excluded), 3-wide tile (16/32/64/160 channels, >= 128 input channels), the CIFAR stem,
   * 7-wide tiles; and a GEMM-path shape (no statistics: returns 0). */
  for (int threads = 2; threads >= 1; threads--) {
    rn_blas_set_threads(threads);
    stats_case(16, 16, 3, 1, 1, 32, 32, 3, 40), stats_case(32, 64, 3, 1, 2, 16, 16, 3, 41);
    stats_case(160, 48, 3, 1, 1, 9, 14, 2, 42), stats_case(3, 16, 3, 1, 1, 32, 32, 2, 43);
    stats_case(64, 128, 1, 0, 1, 14, 14, 3, 44), stats_case(32, 32, 5, 2, 1, 11, 13, 2, 45);
    stats_case(64, 64, 3, 1, 1, 7, 7, 5, 46), stats_case(512, 64, 1, 0, 1, 7, 7, 2, 47);
    stats_case(256, 128, 3, 1, 1, 7, 7, 9, 48), stats_case(128, 256, 3, 1, 1, 14, 14, 3, 49); /* conv_images */
  }
  /* BN backward sums in the dx epilogue: 3-wide tile (16/32/64/160 channels), generic tile (5x5),
   * 1x1, 7-wide lines, with and without the ReLU mask, dx overwritten and accumulated; and
   * stride-2 shapes (3x3: dx by pixel parity, with sums; 1x1: direct dx without sums, returns 0).
   * randf: values in [-1, 1), so about half the mask is <= 0. */
  for (int threads = 2; threads >= 1; threads--) {
    rn_blas_set_threads(threads);
    for (int m = 0; m < 2; m++) {
      bsums_case(16, 16, 3, 1, 1, 32, 32, 3, m, 0, 1.0f, 50), bsums_case(32, 64, 3, 1, 1, 16, 16, 3, m, 1, 1.0f, 51);
      bsums_case(160, 48, 3, 1, 1, 9, 16, 2, m, 0, 1.0f, 52), bsums_case(32, 32, 5, 2, 1, 11, 16, 2, m, 0, 1.0f, 53);
      bsums_case(64, 128, 1, 0, 1, 14, 14, 3, m, 0, 1.0f, 54), bsums_case(64, 64, 3, 1, 1, 7, 7, 5, m, 0, 1.0f, 55);
      bsums_case(512, 64, 1, 0, 1, 28, 28, 2, m, 1, 1.0f, 56), bsums_case(32, 64, 3, 1, 2, 16, 16, 2, m, 0, 1.0f, 57);
      bsums_case(64, 128, 1, 0, 2, 28, 28, 2, m, 1, 1.0f, 60); /* 1x1 stride 2: direct dx, no sums */
      bsums_case(128, 256, 3, 1, 1, 7, 7, 9, m, m, 1.0f, 61); /* dx over several images (conv_images) */
      bsums_case(48, 32, 3, 1, 2, 13, 11, 2, m, 1 - m, 1.0f / 0.7f, 67); /* stride 2 by parity, odd sizes */
      /* a BN+add's branch scale (stochastic depth): 1/p and 0 (dropped branch) */
      bsums_case(16, 16, 3, 1, 1, 32, 32, 3, m, 1, 1.0f / 0.7f, 58), bsums_case(64, 128, 1, 0, 1, 14, 14, 3, m, 0, 0.0f, 59);
    }
  }
  /* The 1x1 backward in bands (item 39): ResNet-50's bottleneck shapes at reduced size, bands of
   * lines (64->256 @56: 9-line bands of 512 KB and a 2-line last one; 256->64: 36 + 20), groups of
   * small images (14x14: two per dW group, a partial group), a lazy BN before or a stored mask, dx
   * overwritten or accumulated; on 2 and 1 threads. */
  for (int threads = 2; threads >= 1; threads--) {
    rn_blas_set_threads(threads);
    il_case(64, 256, 56, 56, 2, 1, 0, 80), il_case(256, 64, 56, 56, 2, 0, 1, 81);
    il_case(128, 512, 28, 28, 2, 1, 0, 82), il_case(64, 256, 14, 14, 5, 1, 1, 83);
    il_case(32, 48, 17, 30, 3, 0, 0, 84);
    cases += 5;
  }
  /* Item 50 under the production rules: ResNet-50's layer3 conv1 and layer4.0.conv1 forward and
   * layer3's conv3 dx take 7 x 4 tiles; stride 2, 7-wide lines and 512 channels do not (the width
   * rules are on since the checks above). */
  {
    /* (with the plane sweep on, it takes every one of these 7 x 4 passes: none is left) */
    rn_conv_desc q;
    CHECK(rn_conv_desc_init(&q, 1024, 256, 1, 1, 1, 0, 14, 14, &e) == RN_OK && !rn_conv_tile74_passes(&q) &&
              !rn_conv_desc_init(&q, 256, 1024, 1, 1, 1, 0, 14, 14, &e) && !rn_conv_tile74_passes(&q),
          "tile74 passes of 1024->256 or 256->1024 @14 where the plane sweep takes them");
    rn_conv_set_sweep1(0);
    static const int t74[][5] = {{1024, 256, 1, 14, 1}, {1024, 512, 1, 14, 1}, {256, 1024, 1, 14, 2}, {512, 1024, 2, 28, 0},
                                 {2048, 512, 1, 7, 0},   {512, 128, 1, 28, 0},   {512, 2048, 1, 7, 0},   {256, 1024, 1, 56, 2}};
    for (int i = 0; i < (int)(sizeof t74 / sizeof *t74); i++) {
      CHECK(rn_conv_desc_init(&q, t74[i][0], t74[i][1], 1, 1, t74[i][2], 0, t74[i][3], t74[i][3], &e) == RN_OK &&
                rn_conv_tile74_passes(&q) == t74[i][4],
            "tile74 passes of %d->%d s%d @%d: %d, expected %d", t74[i][0], t74[i][1], t74[i][2], t74[i][3],
            rn_conv_tile74_passes(&q), t74[i][4]);
    }
    rn_conv_set_sweep1(1);
    /* Item 51 under the production rules: the plane sweep takes the forward of the conv1s that
     * shrink >= 512 channels and the dx of the conv3s (dy of >= 512 channels) at 28 and 14 wide, and
     * the forward of layer 4's 7-wide 1x1s (their dx stays on the GEMM path); not stride 2, 256
     * channels, or planes > 2 MB. */
    static const int sw[][5] = {{1024, 256, 1, 14, 1}, {256, 1024, 1, 14, 2}, {512, 128, 1, 28, 1}, {128, 512, 1, 28, 2},
                                {512, 256, 1, 28, 1},   {1024, 512, 1, 14, 3}, {512, 1024, 1, 14, 3}, {2048, 512, 1, 7, 1},
                                {512, 2048, 1, 7, 1},   {512, 1024, 2, 28, 0}, {256, 64, 1, 56, 0},   {64, 256, 1, 56, 0},
                                {1024, 256, 1, 28, 0},  {496, 128, 1, 28, 0}};
    for (int i = 0; i < (int)(sizeof sw / sizeof *sw); i++) {
      CHECK(rn_conv_desc_init(&q, sw[i][0], sw[i][1], 1, 1, sw[i][2], 0, sw[i][3], sw[i][3], &e) == RN_OK &&
                rn_conv_sweep1_passes(&q) == sw[i][4],
            "sweep1 passes of %d->%d s%d @%d: %d, expected %d", sw[i][0], sw[i][1], sw[i][2], sw[i][3],
            rn_conv_sweep1_passes(&q), sw[i][4]);
    }
  }
  /* The production rules mix paths within one layer (direct forward, GEMM dW, direct dx, ...):
   * same accuracy checks on both thread counts. */
  g_expect_direct = 0;
  for (int threads = 2; threads >= 1; threads--) {
    rn_blas_set_threads(threads);
    one(48, 48, 3, 1, 7, 7, 3, 19), one(32, 64, 3, 1, 14, 14, 2, 20);
    ones(32, 64, 1, 0, 1, 28, 28, 2, 21), ones(64, 32, 1, 0, 1, 14, 14, 2, 22), ones(64, 32, 1, 0, 1, 7, 7, 3, 24), ones(32, 64, 3, 1, 2, 16, 16, 3, 23);
    ones(256, 256, 3, 1, 1, 14, 14, 5, 43); /* dW on the GEMM, dx direct over image pairs */
    ones(256, 256, 3, 1, 2, 14, 14, 3, 68); /* stride 2: dW on the GEMM, dx direct (pixel parity) */
    /* First convolutions (1-3 input channels): forward and dW direct (dw_stem), dx on the GEMM path. */
    ones(3, 16, 3, 1, 1, 32, 32, 2, 29), ones(3, 32, 3, 1, 1, 9, 30, 2, 30), ones(1, 16, 3, 1, 1, 28, 28, 3, 31);
    ones(2, 32, 3, 1, 1, 8, 8, 5, 32); /* 64-pixel images: several per dW group */
    stem_cases(); /* on one thread here: see the start of main */
    cases += 15;
  }
  printf("test_conv_direct: %d shapes; max rel err %.3g (tol %.0e)\n", cases, g_max, TOL);
  return tu_done("test_conv_direct");
}
