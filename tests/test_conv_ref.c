/* rn_conv_forward / rn_conv_backward (GEMM + blocked im2col/col2im) against the naive direct
 * convolution over many shapes: 1x1/3x3/5x5/7x7, stride 1/2/3, padding 0..3, odd and non-square
 * spatial sizes, channel counts off multiples of 16, batch 1..4 run with a workspace planned for
 * batch 4, forced chunk sizes that cut through rows and images, both acc modes for dx, dw
 * accumulation, dx/dw NULL. Buffers that must be overwritten start as NaN; the workspace is
 * malloc'ed at exactly the reported size (ASan catches any overrun). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"
#include "testutil.h"

/* max|a-b| / max(max|b|, floor); any NaN/Inf in a gives +Inf (tu_max_rel_err lets a NaN be
 * overwritten by a later finite difference). */
static double relerr(const float *a, const float *b, size_t n, double floor) {
  double md = 0, mb = floor;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!isfinite(d)) return INFINITY;
    if (d > md) md = d;
    if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
  }
  return md / mb;
}

static double g_max_fwd, g_max_dx, g_max_dw;
static const double TOL = 5e-5;

static float *randf(size_t n, uint64_t seed) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  rn_rng r = rn_rng_make(seed);
  for (size_t i = 0; i < n; i++) p[i] = rn_rng_uniform(&r) * 2 - 1;
  return p;
}
static float *nanf_buf(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  for (size_t i = 0; i < n; i++) p[i] = NAN;
  return p;
}

static void one(int cin, int cout, int k, int s, int p, int h, int w, int n, int chunk, uint64_t seed) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, cin, cout, k, k, s, p, h, w, &e)) {
    CHECK(0, "desc init failed: %s", e.msg);
    return;
  }
  rn_conv_set_chunk_rows(chunk);
  if (getenv("RN_TEST_VERBOSE"))
    fprintf(stderr, "case cin=%d cout=%d k=%d s=%d p=%d in=%dx%d n=%d chunk=%d\n", cin, cout, k, s, p, h, w, n, chunk);
  const int planned = 4;
  size_t wsn = rn_conv_workspace(&d, planned);
  CHECK(wsn >= rn_conv_workspace(&d, n), "workspace for n=%d exceeds planned", n);
  float *ws = wsn ? nanf_buf(wsn) : NULL;
  size_t nx = (size_t)n * h * w * cin, ny = (size_t)n * d.oh * d.ow * cout, nw = (size_t)cout * k * k * cin;
  float *x = randf(nx, seed), *wt = randf(nw, seed + 1), *dy = randf(ny, seed + 2);
  float *y = nanf_buf(ny), *yr = malloc(ny * 4), *dxr = malloc(nx * 4), *dwr = malloc(nw * 4);
  rn_conv_forward(&d, n, x, wt, y, ws);
  rn_ref_conv_forward(&d, n, x, wt, yr);
  double ef = relerr(y, yr, ny, 1e-3);
  rn_ref_conv_backward(&d, n, x, wt, dy, dxr, dwr);

  /* acc = 0, dw accumulates onto a prefilled value */
  float *dx = nanf_buf(nx), *dw = randf(nw, seed + 3), *dw0 = malloc(nw * 4), *dwx = malloc(nw * 4);
  memcpy(dw0, dw, nw * 4);
  for (size_t i = 0; i < nw; i++) dwx[i] = dw0[i] + dwr[i];
  rn_conv_backward(&d, n, x, wt, dy, dx, 0, dw, ws);
  double edx = relerr(dx, dxr, nx, 1e-3), edw = relerr(dw, dwx, nw, 1e-3);

  /* acc = 1 onto a prefilled dx, dw = NULL */
  float *dx1 = randf(nx, seed + 4), *dxx = malloc(nx * 4);
  for (size_t i = 0; i < nx; i++) dxx[i] = dx1[i] + dxr[i];
  rn_conv_backward(&d, n, x, wt, dy, dx1, 1, NULL, ws);
  double edx1 = relerr(dx1, dxx, nx, 1e-3);

  /* dx = NULL (first layer), dw only */
  memcpy(dw, dw0, nw * 4);
  rn_conv_backward(&d, n, x, wt, dy, NULL, 0, dw, ws);
  double edw2 = relerr(dw, dwx, nw, 1e-3);

  char tag[160];
  snprintf(tag, sizeof tag, "cin=%d cout=%d k=%d s=%d p=%d in=%dx%d n=%d chunk=%d(R=%d)", cin, cout, k, s, p, h,
           w, n, chunk, rn_conv_chunk_rows(&d, n));
  CHECK(ef < TOL, "%s forward rel err %.3g", tag, ef);
  CHECK(edx < TOL, "%s dx(acc=0) rel err %.3g", tag, edx);
  CHECK(edx1 < TOL, "%s dx(acc=1) rel err %.3g", tag, edx1);
  CHECK(edw < TOL, "%s dw rel err %.3g", tag, edw);
  CHECK(edw2 < TOL, "%s dw (dx=NULL) rel err %.3g", tag, edw2);
  if (ef > g_max_fwd) g_max_fwd = ef;
  if (edx > g_max_dx) g_max_dx = edx;
  if (edx1 > g_max_dx) g_max_dx = edx1;
  if (edw > g_max_dw) g_max_dw = edw;
  if (edw2 > g_max_dw) g_max_dw = edw2;
  free(ws), free(x), free(wt), free(dy), free(y), free(yr), free(dxr), free(dwr), free(dx), free(dw), free(dw0);
  free(dwx), free(dx1), free(dxx);
}

int main(int argc, char **argv) {
  rn_err e;
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  int par = argc > 2 ? atoi(argv[2]) : 1; /* 1 = chunk-parallel structure, 0 = threaded GEMM per chunk */
  rn_conv_set_parallel(par);
  if (rn_blas_init(NULL, threads, stderr, &e)) {
    fprintf(stderr, "%s\n", e.msg);
    return 1;
  }
  rn_blas_reserve(1 << 20);
  /* kernel, stride, pad */
  static const int ksp[][3] = {{1, 1, 0}, {1, 2, 0}, {3, 1, 1}, {3, 2, 1}, {3, 1, 0}, {7, 2, 3}, {7, 1, 3},
                               {5, 2, 2}, {1, 1, 1}, {3, 3, 1}, {2, 2, 0}, {3, 2, 0}};
  static const int chans[] = {3, 5, 17, 33};
  static const int sizes[][2] = {{7, 7}, {9, 9}, {13, 13}, {9, 7}, {8, 11}};
  static const int chunks[] = {0, 1, 7, 37, 100};
  int cases = 0;
  for (int a = 0; a < (int)(sizeof ksp / sizeof ksp[0]); a++)
    for (int v = 0; v < 6; v++) {
      uint64_t key = rn_key(42, (uint64_t)a, (uint64_t)v, 0);
      rn_rng r = rn_rng_make(key);
      int cin = chans[rn_rng_below(&r, 4)], cout = chans[rn_rng_below(&r, 4)];
      if (v == 0) cin = 3;
      if (v == 1) cout = 16;
      const int *hw = sizes[rn_rng_below(&r, 5)];
      int n = 1 + (int)rn_rng_below(&r, 4);
      int chunk = chunks[v % 5];
      if (hw[0] + 2 * ksp[a][2] < ksp[a][0]) continue;
      one(cin, cout, ksp[a][0], ksp[a][1], ksp[a][2], hw[0], hw[1], n, chunk, key);
      cases++;
    }
  /* Automatic chunking with several chunks (K = 576: ~912 rows per chunk, M = 4*16*16 = 1024);
   * planned batch 4, run with 4 and with 1. */
  one(64, 32, 3, 1, 1, 16, 16, 4, 0, 7), cases++;
  one(64, 32, 3, 1, 1, 16, 16, 1, 0, 8), cases++;
  one(48, 40, 3, 2, 1, 15, 15, 3, 0, 9), cases++;
  one(16, 64, 1, 2, 0, 14, 14, 4, 0, 10), cases++;
  one(32, 16, 1, 1, 0, 10, 10, 4, 0, 11), cases++;

  /* Bad shapes are refused with a message. */
  rn_conv_desc d;
  CHECK(rn_conv_desc_init(&d, 3, 8, 7, 7, 2, 0, 5, 5, &e) == RN_EINVAL, "7x7 on 5x5 without pad accepted");
  CHECK(rn_conv_desc_init(&d, 0, 8, 3, 3, 1, 1, 5, 5, &e) == RN_EINVAL, "cin 0 accepted");
  CHECK(rn_conv_desc_init(&d, 3, 8, 3, 3, 0, 1, 5, 5, &e) == RN_EINVAL, "stride 0 accepted");
  CHECK(rn_conv_desc_init(&d, 64, 64, 3, 3, 2, 1, 56, 56, &e) == RN_OK && d.oh == 28 && d.ow == 28,
        "56x56 3x3/2 pad 1 -> %dx%d", d.oh, d.ow);

  /* Batches that do not divide among the threads, several chunks per thread (image-aligned
   * backward partition). */
  one(16, 16, 3, 1, 1, 8, 8, 3, 40, 12), cases++;
  one(8, 24, 3, 2, 1, 9, 9, 3, 7, 13), cases++;
  rn_conv_set_chunk_rows(0);
  printf("test_conv_ref: structure %s; ", par ? "chunk-parallel" : "threaded GEMM per chunk");
  printf("test_conv_ref: %d shapes, %d threads; max rel err forward %.3g, dx %.3g, dw %.3g (tol %.0e)\n", cases,
         threads, g_max_fwd, g_max_dx, g_max_dw, TOL);
  return tu_done("test_conv_ref");
}
