/* Winograd F(2x2,3x3) convolution (src/kernels/conv_wino.c) against the naive reference (double
 * accumulation): forward, dx (acc 0 and 1), dw accumulation, dx or dw NULL; even and odd sizes
 * (ragged last tiles), one pixel, 16..144 channels, chunks of a few tiles (chunk boundaries inside
 * images, a last short chunk) and automatic ones, on 1, 2 and 3 threads; up to 64 channels both
 * the small-channel path (per-thread groups of tiles, own products) and the chunked one, whose
 * products run on BLIS's micro-kernel with our own packing (rn_ukr) and on BLIS's driver; the
 * workspace at exactly its reported size (64-byte aligned, or 8 bytes past), filled with NaN, with
 * guard floats after it; the products' positions claimed dynamically against static shares (the
 * same bits). Then the dispatch: rn_conv_forward and
 * rn_conv_backward take it for a ResNet-50 shape (results equal to calling it directly) and not
 * when it is switched off or the shape does not qualify. The prologue and epilogues: the next BN's
 * statistics in the forward, a lazy BN's input applied in the input transforms (forward, dW), the
 * BN backward sums in dx's output transform, against the plain passes and sums of their outputs;
 * through the layer API too (rn_conv_forward_stats / _pre, rn_conv_backward_bn). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"
#include "rn/wino.h"
#include "testutil.h"

/* F(2,3) adds a few roundings per value (transforms with 0.5 factors and sums of 4-9 terms):
 * relative to the largest reference value the error stays ~1e-6 for these sizes. F(4,3)'s
 * transforms have factors up to 8 and 1/24: ~1e-5 (the known price of the larger tile). */
static const double TOL2 = 2e-5, TOL4 = 1e-4;
static double g_max[5];
static int g_small = 1; /* the path one_m runs (for messages) */
static int g_ukr = 1;   /* the chunked path's products: rn_ukr (1) or BLIS's driver (0) */
static int g_have_ukr;  /* rn_ukr is available (skx kernels) */
#define GUARD 64 /* floats after the reported workspace that must stay untouched */

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

/* Largest |a - b| over the per-image channel sums, relative to the largest |b| (at least 1). */
static double sums_err(const double *a, const double *b, size_t n) {
  double md = 0, mb = 1;
  for (size_t i = 0; i < n; i++) {
    const double dd = fabs(a[i] - b[i]);
    if (!(dd <= md)) md = dd; /* NaN too */
    if (fabs(b[i]) > mb) mb = fabs(b[i]);
  }
  return md / mb;
}
/* The BN's output as the convolution sees it: [relu](x * sc + sh), its instructions (FMA, max). */
static void bn_apply(const float *x, size_t rows, int c, const float *sc, const float *sh, int relu, float *y) {
  for (size_t r = 0; r < rows; r++)
    for (int j = 0; j < c; j++) {
      const float v = fmaf(x[r * c + j], sc[j], sh[j]);
      y[r * c + j] = relu && 0.0f > v ? 0.0f : v;
    }
}

/* The prologue and epilogues (rn_conv_wino_forward_ep, rn_conv_wino_backward_bn) against the plain
 * passes: the forward's statistics against sums of its stored output; a lazy BN's input against
 * the plain forward and dW on the BN's output (bitwise); dx's BN sums (mask from a stored output or
 * from the lazy BN, branch scale 1 / 0.5 / 0, stored masked or not, acc 0 and 1) against sums of
 * the plain dx, which must be stored unchanged (or masked). */
static void epilogues(const rn_conv_desc *d, int n, int threads, float *ws, const float *x, const float *wt,
                      const float *dy, const float *y, uint64_t seed, const char *tag) {
  const int cin = d->cin, cout = d->cout, hw = d->h * d->w;
  const size_t nx = (size_t)n * hw * cin, ny = (size_t)n * hw * cout, nw = (size_t)cout * 9 * cin;
  /* forward statistics */
  double *st = malloc(sizeof(double) * n * 2 * cout), *str = calloc((size_t)n * 2 * cout, sizeof(double));
  float *ys = nanbuf(ny);
  rn_conv_wino_forward_ep(d, n, x, wt, ys, ws, threads, st, NULL);
  for (int i = 0; i < n; i++)
    for (int p = 0; p < hw; p++)
      for (int c = 0; c < cout; c++) {
        const double v = ys[((size_t)i * hw + p) * cout + c];
        str[(size_t)i * 2 * cout + c] += v, str[(size_t)i * 2 * cout + cout + c] += v * v;
      }
  CHECK(memcmp(ys, y, ny * 4) == 0, "%s: forward with statistics: other output bits", tag);
  const double es = sums_err(st, str, (size_t)n * 2 * cout);
  CHECK(es < 1e-12, "%s: forward statistics rel err %.3g", tag, es);
  /* a lazy BN (+ReLU) before: forward and dW on its input = the plain passes on its output */
  float *sc = randf(cin, seed + 40), *sh = randf(cin, seed + 41), *xb = malloc(nx * 4);
  const int relu = (int)(seed % 2) == 0;
  bn_apply(x, (size_t)n * hw, cin, sc, sh, relu, xb);
  rn_conv_pre pre = {sc, sh, relu};
  float *yp = nanbuf(ny), *yb = nanbuf(ny);
  rn_conv_wino_forward_ep(d, n, x, wt, yp, ws, threads, NULL, &pre);
  rn_conv_wino_forward(d, n, xb, wt, yb, ws, threads);
  CHECK(memcmp(yp, yb, ny * 4) == 0, "%s: forward over a lazy BN (relu %d): not the bits of the BN's output", tag, relu);
  /* dx with BN sums: cases (mask from a stored output / from the lazy BN) x scale x store x acc */
  float *mask = randf(nx, seed + 42), *bx = randf(nx, seed + 43), *dx0 = randf(nx, seed + 44);
  float *dxp = malloc(nx * 4), *dxe = malloc(nx * 4), *dwp = calloc(nw, 4), *dwe = calloc(nw, 4);
  double *sums = malloc(sizeof(double) * n * 2 * cin), *sr = malloc(sizeof(double) * n * 2 * cin);
  static const float scales[3] = {1.0f, 0.5f, 0.0f};
  for (int k = 0; k < 6; k++) {
    const int lazy = k % 2, store = k / 2 % 2, acc = k / 3 % 2 ? 1 : k == 2;
    const float scale = scales[k % 3];
    memcpy(dxp, dx0, nx * 4), memcpy(dxe, dx0, nx * 4), memset(dwp, 0, nw * 4), memset(dwe, 0, nw * 4);
    rn_bn_sums bs = {lazy ? NULL : mask, lazy ? x : bx, sums, scale, store, lazy ? &pre : NULL};
    rn_conv_wino_backward(d, n, lazy ? xb : x, wt, dy, dxp, acc, dwp, ws, threads);
    rn_conv_wino_backward_bn(d, n, x, wt, dy, dxe, acc, dwe, ws, threads, &bs);
    memset(sr, 0, sizeof(double) * n * 2 * cin);
    int stored_ok = 1;
    for (size_t q = 0; q < nx; q++) {
      const size_t i = q / ((size_t)hw * cin);
      const int c = (int)(q % (size_t)cin);
      const float xv = lazy ? x[q] : bx[q];
      const int on = lazy ? (!pre.relu || fmaf(x[q], sc[c], sh[c]) > 0.0f) : mask[q] > 0.0f;
      const float g = on ? dxp[q] : 0.0f, gb = scale == 1.0f ? g : scale == 0.0f ? 0.0f : scale * g;
      sr[i * 2 * cin + c] += gb, sr[i * 2 * cin + cin + c] += (double)gb * xv;
      const float want = store ? g : dxp[q];
      stored_ok &= memcmp(&dxe[q], &want, 4) == 0;
    }
    const double eb = sums_err(sums, sr, (size_t)n * 2 * cin);
    CHECK(stored_ok, "%s: dx with BN sums (lazy %d store %d acc %d): other dx bits stored", tag, lazy, store, acc);
    CHECK(eb < 1e-12, "%s: dx BN sums (lazy %d scale %g acc %d) rel err %.3g", tag, lazy, scale, acc, eb);
    CHECK(memcmp(dwp, dwe, nw * 4) == 0, "%s: dW %s: other bits", tag, lazy ? "over a lazy BN" : "with dx's BN sums");
  }
  free(st), free(str), free(ys), free(sc), free(sh), free(xb), free(yp), free(yb), free(mask), free(bx), free(dx0);
  free(dxp), free(dxe), free(dwp), free(dwe), free(sums), free(sr);
}

static int cmax_of(const rn_conv_desc *d) { return d->cin > d->cout ? d->cin : d->cout; }

static void one_m(int cin, int cout, int h, int w, int n, int threads, int chunk, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, 3, 3, 1, 1, h, w, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  rn_conv_set_wino_chunk(chunk);
  CHECK(rn_conv_wino_shape(&d), "cin=%d cout=%d: shape does not qualify", cin, cout);
  size_t wsn = rn_conv_wino_workspace(&d, n, threads);
  /* odd seeds: a workspace 8 bytes past a 64-byte boundary (the packed panels align themselves; the
   * epilogue's double partial sums need 8) */
  const int off = 2 * (int)(seed & 1);
  float *ws0 = nanbuf(wsn + GUARD + 16), *ws = (float *)(((uintptr_t)ws0 + 63) & ~(uintptr_t)63) + off;
  for (int g = 0; g < GUARD; g++) ws[wsn + g] = 1234.5f;
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * h * w * cout, nw = (size_t)cout * 9 * cin;
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *dy = randf(ny, seed + 2);
  float *y = nanbuf(ny), *yr = malloc(ny * 4), *dxr = malloc(nx * 4), *dwr = malloc(nw * 4);
  rn_conv_wino_forward(&d, n, x, wt, y, ws, threads);
  rn_ref_conv_forward(&d, n, x, wt, yr);
  rn_ref_conv_backward(&d, n, x, wt, dy, dxr, dwr);
  double ef = relerr(y, yr, ny);

  float *dx = nanbuf(nx), *dw = randf(nw, seed + 3), *dwx = malloc(nw * 4), *dw0 = malloc(nw * 4);
  memcpy(dw0, dw, nw * 4);
  for (size_t i = 0; i < nw; i++) dwx[i] = dw0[i] + dwr[i];
  rn_conv_wino_backward(&d, n, x, wt, dy, dx, 0, dw, ws, threads);
  double edx = relerr(dx, dxr, nx), edw = relerr(dw, dwx, nw);

  float *dx1 = randf(nx, seed + 4), *dxx = malloc(nx * 4);
  for (size_t i = 0; i < nx; i++) dxx[i] = dx1[i] + dxr[i];
  rn_conv_wino_backward(&d, n, x, wt, dy, dx1, 1, NULL, ws, threads);
  double edx1 = relerr(dx1, dxx, nx);
  memcpy(dw, dw0, nw * 4);
  rn_conv_wino_backward(&d, n, x, wt, dy, NULL, 0, dw, ws, threads);
  double edw2 = relerr(dw, dwx, nw);

  char tag[160];
  snprintf(tag, sizeof tag, "F(%d,3) cin=%d cout=%d in=%dx%d n=%d T=%d chunk=%d %s", rn_conv_wino_tile(&d), cin, cout,
           h, w, n, threads, chunk, g_small && cmax_of(&d) <= 64 ? "small path" : g_ukr ? "chunked path (rn_ukr)"
                                                                                 : "chunked path (BLIS driver)");
  epilogues(&d, n, threads, ws, x, wt, dy, y, seed, tag);
  int guard_ok = 1;
  for (int g = 0; g < GUARD; g++) guard_ok &= ws[wsn + g] == 1234.5f;
  CHECK(guard_ok, "%s: wrote past its workspace", tag);
  const int tm = rn_conv_wino_tile(&d);
  const double TOL = tm == 4 ? TOL4 : TOL2;
  CHECK(ef < TOL, "%s forward rel err %.3g", tag, ef);
  CHECK(edx < TOL, "%s dx(acc=0) rel err %.3g", tag, edx);
  CHECK(edx1 < TOL, "%s dx(acc=1) rel err %.3g", tag, edx1);
  CHECK(edw < TOL, "%s dw rel err %.3g", tag, edw);
  CHECK(edw2 < TOL, "%s dw(dx=NULL) rel err %.3g", tag, edw2);
  double m = fmax(fmax(ef, edx), fmax(edx1, fmax(edw, edw2)));
  if (m > g_max[tm]) g_max[tm] = m;
  free(ws0), free(x), free(wt), free(dy), free(y), free(yr), free(dxr), free(dwr), free(dx), free(dw), free(dwx);
  free(dw0), free(dx1), free(dxx);
}

/* Both tile sizes; up to 64 channels both the small-channel path and the chunked one; the
 * chunked one with its products on rn_ukr and on BLIS's driver. */
static void one(int cin, int cout, int h, int w, int n, int threads, int chunk, uint64_t seed) {
  for (int small = 1; small >= (cin <= 64 && cout <= 64 ? 0 : 1); small--) {
    g_small = small;
    rn_conv_set_wino_small(small);
    const int chunked = !small || cin > 64 || cout > 64;
    for (int uk = g_have_ukr; uk >= (chunked ? 0 : g_have_ukr); uk--) {
      g_ukr = uk;
      rn_blas_set_ukr(uk);
      for (int m = 2; m <= 4; m += 2) {
        rn_conv_set_wino_tile(m);
        one_m(cin, cout, h, w, n, threads, chunk, seed);
      }
    }
  }
  rn_blas_set_ukr(1);
  g_ukr = 1;
  rn_conv_set_wino_small(1);
  g_small = 1;
  rn_conv_set_wino_tile(0);
}

/* Through rn_conv_forward / rn_conv_backward: the Winograd results exactly, for a qualifying
 * shape with the default minimum of 128 channels; switched off, the direct kernel's (which
 * differ in rounding). The small-channel path takes 32 and 64 channels at any size; off, the
 * earlier rule applies. */
static void dispatch(void) {
  rn_conv_set_wino_min_channels(0); /* the production rule */
  rn_conv_set_wino_chunk(0);
  rn_conv_desc d, c64s, c64l, c32s;
  rn_err e;
  if (rn_conv_desc_init(&d, 128, 128, 3, 3, 1, 1, 7, 7, &e) || rn_conv_desc_init(&c64s, 64, 64, 3, 3, 1, 1, 8, 8, &e) ||
      rn_conv_desc_init(&c64l, 64, 64, 3, 3, 1, 1, 56, 56, &e) || rn_conv_desc_init(&c32s, 32, 32, 3, 3, 1, 1, 8, 8, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  CHECK(rn_conv_wino_ok(&d), "128x128 3x3 at 7x7: not taken");
  CHECK(rn_conv_wino_ok(&c64s), "64 channels at 8x8: not taken");
  CHECK(rn_conv_wino_ok(&c64l) && rn_conv_wino_tile(&c64l) == 2, "64 channels at 56x56: not taken with F(2,3)");
  CHECK(rn_conv_wino_tile(&c64s) == 4, "64 channels at 8x8: not F(4,3)");
  CHECK(rn_conv_wino_ok(&c32s), "32 channels: not taken by the small-channel path");
  /* planned wherever the direct kernel can take all passes, whatever its width rules (128@7: its
   * rules put dW on the GEMM); with rn_conv_set_wino_pre_any(0) only where its rules take them */
  CHECK(rn_conv_pre_ok(&d) && rn_conv_direct_pre_any(&d) && !rn_conv_direct_pre_ok(&d) && rn_conv_pre_ok(&c32s) &&
            rn_conv_pre_ok(&c32s) == rn_conv_direct_pre_any(&c32s),
        "a lazy BN before a Winograd convolution: not planned where the direct kernel can take it");
  rn_conv_set_wino_pre_any(0);
  CHECK(!rn_conv_pre_ok(&d) && rn_conv_pre_ok(&c32s) == rn_conv_direct_pre_ok(&c32s),
        "wino pre-any off: a lazy BN before a Winograd convolution not by the direct kernel's width rules");
  rn_conv_set_wino_pre_any(1);
  /* small path off: the earlier rule (128+, or 64+ on at most 16x16), and a workspace planned with
   * it on serves the chunked path that then takes 64@8 (rn-bench --ab wino-small) */
  const size_t w64on = rn_conv_wino_workspace(&c64s, 128, 2);
  rn_conv_set_wino_small(0);
  CHECK(rn_conv_wino_ok(&c64s) && !rn_conv_wino_ok(&c64l) && !rn_conv_wino_ok(&c32s),
        "small path off: not the rule of 128+ channels, or 64+ on small images");
  CHECK(rn_conv_wino_workspace(&c64s, 128, 2) <= w64on, "64@8: a workspace planned with the small path on "
        "is too small for the chunked path");
  rn_conv_set_wino_small(1);
  {
    /* the two paths run: same results up to rounding, not the same bits (different summation) */
    const int nn = 2;
    const size_t n64 = (size_t)nn * 64 * 64, w64 = (size_t)64 * 9 * 64;
    float *xa = randf(n64, 21), *wa = randf(w64, 22), *ya = nanbuf(n64), *yb = nanbuf(n64);
    float *wsa = nanbuf(rn_conv_wino_workspace(&c64s, nn, 2));
    rn_conv_wino_forward(&c64s, nn, xa, wa, ya, wsa, 2);
    rn_conv_set_wino_small(0);
    rn_blas_set_ukr(0); /* BLIS's driver: on rn_ukr both sum each product in k order, the same bits */
    rn_conv_wino_forward(&c64s, nn, xa, wa, yb, wsa, 2);
    rn_blas_set_ukr(1);
    rn_conv_set_wino_small(1);
    CHECK(memcmp(ya, yb, n64 * 4) != 0 && relerr(ya, yb, n64) < TOL4,
          "64@8: the small-channel and chunked paths give the same bits (one not run?) or differ");
    free(xa), free(wa), free(ya), free(yb), free(wsa);
  }
  const int n = 2;
  size_t nx = (size_t)n * 49 * 128, nw = (size_t)128 * 9 * 128;
  size_t wsn = rn_conv_workspace(&d, n);
  CHECK(wsn >= rn_conv_wino_workspace(&d, n, rn_blas_threads()), "rn_conv_workspace below the Winograd workspace");
  float *ws = nanbuf(wsn), *ws2 = nanbuf(wsn), *x = randf(nx, 7), *wt = randf(nw, 8), *dy = randf(nx, 9);
  float *y1 = nanbuf(nx), *y2 = nanbuf(nx), *dx1 = nanbuf(nx), *dx2 = nanbuf(nx), *dw1 = calloc(nw, 4), *dw2 = calloc(nw, 4);
  rn_conv_forward(&d, n, x, wt, y1, ws);
  rn_conv_wino_forward(&d, n, x, wt, y2, ws2, rn_blas_threads());
  CHECK(memcmp(y1, y2, nx * 4) == 0, "rn_conv_forward: not the Winograd result");
  rn_conv_backward(&d, n, x, wt, dy, dx1, 0, dw1, ws);
  rn_conv_wino_backward(&d, n, x, wt, dy, dx2, 0, dw2, ws2, rn_blas_threads());
  CHECK(memcmp(dx1, dx2, nx * 4) == 0 && memcmp(dw1, dw2, nw * 4) == 0, "rn_conv_backward: not the Winograd result");
  {
    /* the statistics, a lazy BN and the BN sums through the layer API: Winograd's, and reported */
    double *s1 = malloc(sizeof(double) * n * 2 * 128), *s2 = malloc(sizeof(double) * n * 2 * 128);
    CHECK(rn_conv_forward_stats(&d, n, x, wt, y1, ws, s1) == 1, "rn_conv_forward_stats: statistics not reported");
    rn_conv_wino_forward_ep(&d, n, x, wt, y2, ws2, rn_blas_threads(), s2, NULL);
    CHECK(memcmp(y1, y2, nx * 4) == 0 && memcmp(s1, s2, sizeof(double) * n * 2 * 128) == 0,
          "rn_conv_forward_stats: not Winograd's output and statistics");
    rn_bn_sums b1 = {dy, x, s1, 1.0f, 1, NULL}, b2 = b1;
    b2.sums = s2;
    CHECK(rn_conv_backward_bn(&d, n, x, wt, dy, dx1, 0, dw1, ws, &b1) == 1, "rn_conv_backward_bn: sums not reported");
    rn_conv_wino_backward_bn(&d, n, x, wt, dy, dx2, 0, dw2, ws2, rn_blas_threads(), &b2);
    CHECK(memcmp(dx1, dx2, nx * 4) == 0 && memcmp(s1, s2, sizeof(double) * n * 2 * 128) == 0,
          "rn_conv_backward_bn: not Winograd's dx and sums");
    free(s1), free(s2);
  }
  {
    /* 32 channels at 8x8: a lazy BN's input through rn_conv_forward_pre = Winograd over its output */
    const size_t n32 = (size_t)n * 64 * 32, w32 = (size_t)32 * 9 * 32, ws32 = rn_conv_workspace(&c32s, n);
    float *xa = randf(n32, 31), *wa = randf(w32, 32), *sc = randf(32, 33), *sh = randf(32, 34), *xb = malloc(n32 * 4);
    float *ya = nanbuf(n32), *yb = nanbuf(n32), *wsa = nanbuf(ws32);
    bn_apply(xa, (size_t)n * 64, 32, sc, sh, 1, xb);
    rn_conv_pre pre = {sc, sh, 1};
    rn_conv_forward_pre(&c32s, n, xa, wa, ya, wsa, NULL, &pre);
    rn_conv_wino_forward(&c32s, n, xb, wa, yb, wsa, rn_blas_threads());
    CHECK(memcmp(ya, yb, n32 * 4) == 0, "rn_conv_forward_pre on a Winograd shape: not Winograd over the BN's output");
    free(xa), free(wa), free(sc), free(sh), free(xb), free(ya), free(yb), free(wsa);
  }
  rn_conv_set_wino(0);
  CHECK(!rn_conv_wino_ok(&d) && rn_conv_pre_ok(&d) == rn_conv_direct_pre_ok(&d), "switched off: still taken");
  rn_conv_forward(&d, n, x, wt, y1, ws);
  CHECK(memcmp(y1, y2, nx * 4) != 0 && relerr(y1, y2, nx) < TOL4, "switched off: same bits as Winograd (or wrong)");
  rn_conv_set_wino(1);
  free(ws), free(ws2), free(x), free(wt), free(dy), free(y1), free(y2), free(dx1), free(dx2), free(dw1), free(dw2);
}

/* A workspace planned for the batch serves a smaller last batch: automatic chunks of a 128@28
 * layer planned for 32 images, called with 1..32 (the chunk cap falls with n, and the equal
 * split never exceeds it; 9 images once needed 441 tiles where 392 were planned). Guard floats
 * after the reported size must stay untouched, and the results equal those of a workspace
 * planned for exactly n. */
static void partial_batches(void) {
  rn_conv_set_wino_min_channels(0);
  rn_conv_set_wino_chunk(0);
  rn_conv_set_wino_tile(0);
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, 128, 128, 3, 3, 1, 1, 28, 28, &e)) {
    CHECK(0, "desc: %s", e.msg);
    return;
  }
  const int nb = 32, G = 4096;
  const size_t wsb = rn_conv_wino_workspace(&d, nb, 2), per = (size_t)28 * 28 * 128, nw = (size_t)128 * 9 * 128;
  float *ws = nanbuf(wsb + G), *x = randf(per * nb, 11), *wt = randf(nw, 12), *dy = randf(per * nb, 13);
  float *y1 = malloc(per * nb * 4), *y2 = malloc(per * nb * 4), *dw1 = calloc(nw, 4), *dw2 = calloc(nw, 4);
  for (int g = 0; g < G; g++) ws[wsb + g] = 1234.5f;
  int bad = 0, diff = 0;
  for (int n = 1; n <= nb; n += (n < 12 ? 1 : 7)) {
    const size_t wsn = rn_conv_wino_workspace(&d, n, 2);
    float *wse = nanbuf(wsn);
    bad |= wsn > wsb;
    rn_conv_wino_forward(&d, n, x, wt, y1, ws, 2);
    rn_conv_wino_forward(&d, n, x, wt, y2, wse, 2);
    rn_conv_wino_backward(&d, n, x, wt, dy, NULL, 0, dw1, ws, 2);
    rn_conv_wino_backward(&d, n, x, wt, dy, NULL, 0, dw2, wse, 2);
    diff |= memcmp(y1, y2, per * (size_t)n * 4) != 0 || memcmp(dw1, dw2, nw * 4) != 0;
    free(wse);
  }
  for (int g = 0; g < G; g++) bad |= ws[wsb + g] != 1234.5f;
  CHECK(!bad, "128@28 planned for %d images: a smaller batch wrote past the workspace", nb);
  CHECK(!diff, "128@28: results depend on the workspace the batch was planned with");
  free(ws), free(x), free(wt), free(dy), free(y1), free(y2), free(dw1), free(dw2);
}

/* The chunked path's products on rn_ukr against BLIS's driver, 144 -> 176 channels at 20x20 (the
 * last 32-row panels half empty, 12-tile panels with a ragged last one, dW's K blocks of 256 tiles
 * and a last short one): rn_ukr ran (its counter) only when on; forward and dx the driver's bits
 * (the same micro-kernel over the whole K = 144 or 176), dW within rounding and not the same bits
 * (the driver's K blocks are longer). */
static void ukr_paths(void) {
  if (!g_have_ukr) {
    printf("test_conv_wino: rn_ukr unavailable (not the skx kernels): its path not run\n");
    return;
  }
  rn_conv_desc d;
  rn_err e;
  rn_conv_desc_init(&d, 144, 176, 3, 3, 1, 1, 20, 20, &e);
  rn_conv_set_wino_chunk(0);
  rn_conv_set_wino_tile(2);
  const int n = 3;
  const size_t nx = (size_t)n * 400 * 144, ny = (size_t)n * 400 * 176, nw = (size_t)176 * 9 * 144;
  float *x = randf(nx, 41), *wt = randf(nw, 42), *dy = randf(ny, 43), *ws = nanbuf(rn_conv_wino_workspace(&d, n, 2));
  float *y[2], *dx[2], *dw[2];
  long runs[2];
  for (int uk = 0; uk < 2; uk++) {
    rn_blas_set_ukr(uk);
    y[uk] = nanbuf(ny), dx[uk] = nanbuf(nx), dw[uk] = calloc(nw, 4);
    const long r0 = rn_conv_wino_ukr_products();
    rn_conv_wino_forward(&d, n, x, wt, y[uk], ws, 2);
    rn_conv_wino_backward(&d, n, x, wt, dy, dx[uk], 0, dw[uk], ws, 2);
    runs[uk] = rn_conv_wino_ukr_products() - r0;
  }
  rn_blas_set_ukr(1);
  /* 300 tiles in one chunk: 16 positions x (forward, dW, dx) */
  CHECK(runs[0] == 0 && runs[1] == 48, "144->176 @20: %ld / %ld products on rn_ukr with it off / on (want 0 / 48)",
        runs[0], runs[1]);
  CHECK(memcmp(y[0], y[1], ny * 4) == 0, "144->176 @20: forward on rn_ukr not the bits of BLIS's driver (rel %.3g)",
        relerr(y[1], y[0], ny));
  CHECK(memcmp(dx[0], dx[1], nx * 4) == 0, "144->176 @20: dx on rn_ukr not the bits of BLIS's driver (rel %.3g)",
        relerr(dx[1], dx[0], nx));
  CHECK(memcmp(dw[0], dw[1], nw * 4) != 0 && relerr(dw[1], dw[0], nw) < TOL2,
        "144->176 @20: dW on rn_ukr the same bits as BLIS's driver (not run?) or too far (%.3g)",
        relerr(dw[1], dw[0], nw));
  for (int uk = 0; uk < 2; uk++) free(y[uk]), free(dx[uk]), free(dw[uk]);
  free(x), free(wt), free(dy), free(ws);
  rn_conv_set_wino_tile(0);
}

/* The products' positions claimed one at a time (default) against static shares: the same bits
 * (forward with statistics, dx with BN sums, dW), 144 -> 176 at 20x20 in chunks of 37 tiles (9
 * chunks, the counter running on across them), on 2 and 3 threads, with rn_ukr and BLIS's driver. */
static void dyn_paths(void) {
  rn_conv_desc d;
  rn_err e;
  rn_conv_desc_init(&d, 144, 176, 3, 3, 1, 1, 20, 20, &e);
  rn_conv_set_wino_chunk(37);
  rn_conv_set_wino_tile(2);
  const int n = 3;
  const size_t nx = (size_t)n * 400 * 144, ny = (size_t)n * 400 * 176, nw = (size_t)176 * 9 * 144;
  float *x = randf(nx, 51), *wt = randf(nw, 52), *dy = randf(ny, 53);
  for (int T = 2; T <= 3; T++)
    for (int uk = 0; uk <= g_have_ukr; uk++) {
      rn_blas_set_ukr(uk);
      float *ws = nanbuf(rn_conv_wino_workspace(&d, n, T)), *y[2], *dx[2], *dw[2];
      double *st[2], *bs[2];
      for (int dyn = 0; dyn < 2; dyn++) {
        rn_conv_set_wino_dynamic(dyn);
        y[dyn] = nanbuf(ny), dx[dyn] = nanbuf(nx), dw[dyn] = calloc(nw, 4);
        st[dyn] = malloc(sizeof(double) * n * 2 * 176), bs[dyn] = malloc(sizeof(double) * n * 2 * 144);
        rn_conv_wino_forward_ep(&d, n, x, wt, y[dyn], ws, T, st[dyn], NULL);
        rn_bn_sums b = {NULL, x, bs[dyn], 1.0f, 0, NULL};
        rn_conv_wino_backward_bn(&d, n, x, wt, dy, dx[dyn], 0, dw[dyn], ws, T, &b);
      }
      CHECK(memcmp(y[0], y[1], ny * 4) == 0 && memcmp(st[0], st[1], sizeof(double) * n * 2 * 176) == 0 &&
                memcmp(dx[0], dx[1], nx * 4) == 0 && memcmp(bs[0], bs[1], sizeof(double) * n * 2 * 144) == 0 &&
                memcmp(dw[0], dw[1], nw * 4) == 0,
            "144->176 @20, chunks of 37, T=%d %s: claimed positions not the bits of static shares", T,
            uk ? "rn_ukr" : "BLIS's driver");
      CHECK(relerr(y[1], y[0], ny) == 0 && isfinite(y[1][0]), "144->176 @20: forward not finite");
      for (int k = 0; k < 2; k++) free(y[k]), free(dx[k]), free(dw[k]), free(st[k]), free(bs[k]);
      free(ws);
    }
  rn_conv_set_wino_dynamic(1);
  rn_blas_set_ukr(1);
  rn_conv_set_wino_chunk(0);
  rn_conv_set_wino_tile(0);
  free(x), free(wt), free(dy);
}

/* Switches that must change no bits: item 58, the transforms' prefetch (inputs, y for writing,
 * dx's BN-sum inputs), and item 60, F(4,3)'s input transforms carrying the two columns a tile
 * shares with the next along its row. Forward with statistics, dx with BN sums and dW: acc 0 with
 * a stored mask, acc 1 with a lazy BN+ReLU on x (forward and dW; dx's mask from it), the switch off against on, on the small path (16 -> 16
 * and 64 -> 16 at 32x32, lines of 16 or 8 tiles, the prefetch running past each line's end; 48 ->
 * 32 at 13 x 9, rows of 4 tiles of which the last is ragged, the threads' runs starting
 * mid-row) and the chunked one (144 -> 176 at 20x20; 144 -> 48 and 48 -> 144 at 11 x 11 in
 * chunks of 7 tiles, rows of 3: the carry where the transforms' input has <= 64 channels, dx and
 * forward / dW), F(2,3) and F(4,3), 2 and 3 threads. */
static void same_bits(void (*set)(int), const char *what) {
  static const struct { int cin, cout, h, w, T, chunk; } sh[] = {
      {16, 16, 32, 32, 2, 0}, {64, 16, 32, 32, 2, 0}, {48, 32, 13, 9, 3, 0}, {144, 176, 20, 20, 2, 0},
      {144, 48, 11, 11, 3, 7}, {48, 144, 11, 11, 3, 7}};
  const int n = 2;
  rn_conv_set_wino_min_channels(16); /* 144 -> 48 at 11 x 11 on Winograd (the rule: 64 there) */
  float sc[176], sh2[176];
  for (int c = 0; c < 176; c++) sc[c] = 0.5f + 0.01f * (float)c, sh2[c] = 0.1f - 0.002f * (float)c;
  for (int k = 0; k < 6; k++)
    for (int R = 2; R <= 4; R += 2)
      for (int acc = 0; acc < 2; acc++) {
        rn_conv_desc d;
        rn_err e;
        const int T = sh[k].T;
        rn_conv_desc_init(&d, sh[k].cin, sh[k].cout, 3, 3, 1, 1, sh[k].h, sh[k].w, &e);
        rn_conv_set_wino_tile(R);
        rn_conv_set_wino_chunk(sh[k].chunk);
        const size_t hw = (size_t)sh[k].h * sh[k].w, nx = n * hw * sh[k].cin, ny = n * hw * sh[k].cout;
        const size_t nw = (size_t)sh[k].cout * 9 * sh[k].cin;
        float *x = randf(nx, 61 + k), *wt = randf(nw, 62 + k), *dy = randf(ny, 63 + k), *mask = randf(nx, 64 + k);
        float *dx0 = randf(nx, 65 + k), *ws = nanbuf(rn_conv_wino_workspace(&d, n, T)), *y[2], *dx[2], *dw[2];
        double *st[2], *bs[2];
        const rn_conv_pre pre = {sc, sh2, 1};
        for (int on = 0; on < 2; on++) {
          set(on);
          y[on] = nanbuf(ny), dx[on] = malloc(nx * 4), dw[on] = calloc(nw, 4);
          memcpy(dx[on], dx0, nx * 4);
          st[on] = malloc(sizeof(double) * n * 2 * sh[k].cout), bs[on] = malloc(sizeof(double) * n * 2 * sh[k].cin);
          rn_conv_wino_forward_ep(&d, n, x, wt, y[on], ws, T, st[on], acc ? &pre : NULL);
          rn_bn_sums b = {acc ? NULL : mask, x, bs[on], 1.0f, 0, acc ? &pre : NULL};
          rn_conv_wino_backward_bn(&d, n, x, wt, dy, dx[on], acc, dw[on], ws, T, &b);
        }
        CHECK(memcmp(y[0], y[1], ny * 4) == 0 && memcmp(st[0], st[1], sizeof(double) * n * 2 * sh[k].cout) == 0 &&
                  memcmp(dx[0], dx[1], nx * 4) == 0 && memcmp(bs[0], bs[1], sizeof(double) * n * 2 * sh[k].cin) == 0 &&
                  memcmp(dw[0], dw[1], nw * 4) == 0 && isfinite(y[1][0]) && isfinite(dx[1][0]),
              "%d->%d @%dx%d, F(%d,3), acc %d, %d threads: %s changed the results", sh[k].cin, sh[k].cout,
              sh[k].h, sh[k].w, R, acc, T, what);
        for (int i = 0; i < 2; i++) free(y[i]), free(dx[i]), free(dw[i]), free(st[i]), free(bs[i]);
        free(x), free(wt), free(dy), free(mask), free(dx0), free(ws);
      }
  set(1);
  rn_conv_set_wino_tile(0);
  rn_conv_set_wino_chunk(0);
  rn_conv_set_wino_min_channels(0);
}

/* The small path's groups: the forward's statistics and dx's BN sums go to one slot per group of
 * 48 tiles and are added up in group order, so y, dx and both sums are the same bits for 1, 2 and
 * 3 threads, with the groups split statically or taken with work stealing (rn_conv_set_wino_
 * dynamic); and the slots stay inside a workspace planned for a larger batch (a canary after it).
 * Groups spanning 2 images (16 -> 16 at 32x32, F(4,3)), 9 (64 -> 32 at 9x7, 6 tiles per image)
 * and a short last one (48 -> 16 at 13x13, F(2,3)). */
static void small_groups(void) {
  static const struct { int cin, cout, h, w, R, n; } sh[] = {{16, 16, 32, 32, 4, 3}, {64, 32, 9, 7, 4, 20},
                                                            {48, 16, 13, 13, 2, 5}};
  rn_conv_set_wino_min_channels(16);
  for (int k = 0; k < 3; k++) {
    rn_conv_desc d;
    rn_err e;
    rn_conv_desc_init(&d, sh[k].cin, sh[k].cout, 3, 3, 1, 1, sh[k].h, sh[k].w, &e);
    rn_conv_set_wino_tile(sh[k].R);
    const int n = sh[k].n, G = 1024;
    const size_t hw = (size_t)sh[k].h * sh[k].w, nx = n * hw * sh[k].cin, ny = n * hw * sh[k].cout;
    const size_t nw = (size_t)sh[k].cout * 9 * sh[k].cin, wsn = rn_conv_wino_workspace(&d, n + 3, 3);
    const size_t ns = sizeof(double) * n * 2 * sh[k].cout, nb = sizeof(double) * n * 2 * sh[k].cin;
    float *x = randf(nx, 71 + k), *wt = randf(nw, 72 + k), *dy = randf(ny, 73 + k), *mask = randf(nx, 74 + k);
    float *ws = nanbuf(wsn + G), *y[2] = {nanbuf(ny), nanbuf(ny)}, *dx[2] = {nanbuf(nx), nanbuf(nx)};
    double *st[2] = {malloc(ns), malloc(ns)}, *bs[2] = {malloc(nb), malloc(nb)};
    for (int g = 0; g < G; g++) ws[wsn + g] = 1234.5f;
    int diff = 0, runs = 0;
    for (int T = 1; T <= 3; T++)
      for (int dyn = 0; dyn < 2; dyn++) {
        const int o = runs++ > 0;
        rn_conv_set_wino_dynamic(dyn);
        rn_conv_wino_forward_ep(&d, n, x, wt, y[o], ws, T, st[o], NULL);
        rn_bn_sums b = {mask, x, bs[o], 1.0f, 0, NULL};
        rn_conv_wino_backward_bn(&d, n, x, wt, dy, dx[o], 0, NULL, ws, T, &b);
        if (o)
          diff |= memcmp(y[0], y[1], ny * 4) != 0 || memcmp(st[0], st[1], ns) != 0 ||
                  memcmp(dx[0], dx[1], nx * 4) != 0 || memcmp(bs[0], bs[1], nb) != 0;
      }
    int bad = 0;
    for (int g = 0; g < G; g++) bad |= ws[wsn + g] != 1234.5f;
    CHECK(!diff && isfinite(st[1][0]) && isfinite(bs[1][0]),
          "%d->%d @%dx%d, F(%d,3), %d images: y, dx or the sums depend on the threads or the claiming", sh[k].cin,
          sh[k].cout, sh[k].h, sh[k].w, sh[k].R, n);
    CHECK(!bad, "%d->%d @%dx%d planned for %d images: %d images wrote past the workspace", sh[k].cin, sh[k].cout,
          sh[k].h, sh[k].w, n + 3, n);
    for (int i = 0; i < 2; i++) free(y[i]), free(dx[i]), free(st[i]), free(bs[i]);
    free(x), free(wt), free(dy), free(mask), free(ws);
  }
  rn_conv_set_wino_dynamic(1);
  rn_conv_set_wino_tile(0);
  rn_conv_set_wino_min_channels(0);
}

int main(void) {
  rn_err e;
  if (rn_blas_init(NULL, 3, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  rn_conv_set_wino_min_channels(16);
  rn_conv_desc probe;
  if (rn_conv_desc_init(&probe, 16, 16, 3, 3, 1, 1, 4, 4, &e) == RN_OK && !rn_conv_wino_shape(&probe)) {
    printf("test_conv_wino: no AVX-512: Winograd path unavailable, skipped\n");
    return 0;
  }
  rn_blas_set_ukr(1);
  g_have_ukr = rn_ukr_ok();
  static const int chans[] = {16, 32, 48, 144};
  int cases = 0;
  for (int threads = 1; threads <= 3; threads++)
    for (int v = 0; v < 6; v++) {
      rn_rng r = rn_rng_make(rn_key(29, (uint64_t)v, (uint64_t)threads, 0));
      int cin = chans[rn_rng_below(&r, 4)], cout = chans[rn_rng_below(&r, 4)];
      int h = 1 + (int)rn_rng_below(&r, 15), w = 1 + (int)rn_rng_below(&r, 15), n = 1 + (int)rn_rng_below(&r, 3);
      int chunk = (int)rn_rng_below(&r, 3) == 0 ? 0 : 1 + (int)rn_rng_below(&r, 9);
      one(cin, cout, h, w, n, threads, chunk, (uint64_t)(100 * v + threads));
      cases++;
    }
  /* ResNet-50 widths 7 (ragged tiles), 14, 28; one pixel; a chunk of one tile. */
  one(128, 144, 7, 7, 2, 2, 0, 1), one(32, 16, 14, 14, 2, 2, 5, 2), one(16, 32, 28, 28, 1, 2, 0, 3);
  one(16, 16, 1, 1, 3, 2, 0, 4), one(48, 32, 5, 3, 2, 3, 1, 5), one(16, 16, 2, 9, 2, 1, 7, 6);
  /* ResNet-50's widest: 512 channels at 7x7 (K = 512 per position). */
  one(512, 512, 7, 7, 2, 2, 0, 7);
  /* More than 256 tiles per chunk (dW's K blocks on rn_ukr), 144 -> 48 (half-empty panels). */
  one(144, 48, 28, 28, 2, 2, 0, 14), one(48, 144, 30, 26, 2, 3, 0, 15);
  /* The small path's groups of 48 tiles: several per thread and a short last one (CIFAR's 16@32,
   * 64 channels 4 vectors wide, 48 three), 64 -> 16 and 16 -> 64. */
  one(16, 16, 32, 32, 2, 3, 0, 8), one(64, 64, 20, 24, 2, 2, 0, 9), one(48, 64, 9, 13, 3, 3, 0, 10);
  one(64, 16, 16, 16, 2, 2, 0, 11), one(16, 64, 12, 12, 2, 1, 0, 12);
  one(64, 64, 56, 56, 2, 2, 0, 13);
  cases += 14;
  dispatch();
  ukr_paths();
  dyn_paths();
  same_bits(rn_conv_set_wino_pfx, "the prefetch");
  same_bits(rn_conv_set_wino_carry, "the carried columns");
  small_groups();
  partial_batches();
  printf("test_conv_wino: %d shapes, each with F(2,3) and F(4,3): max rel err %.3g and %.3g (tolerances %.0e, %.0e)\n",
         cases, g_max[2], g_max[4], TOL2, TOL4);
  return tu_done("test_conv_wino");
}
