/* rn-bench-conv: convolution-shape benchmark (a program, not a test). For each shape it times the
 * forward, dx and dW passes of rn_conv_forward / rn_conv_backward three ways:
 *   gemm    the direct kernel switched off (im2col / 1x1 GEMMs on BLIS),
 *   rules   the production choice per shape and direction (what the trainer runs; Winograd for
 *           3x3 stride-1 convolutions that qualify, src/kernels/conv_wino.c / include/rn/wino.h),
 *   direct  the direct kernel for every direction it supports (its all-widths test mode),
 * gemm and direct with Winograd off,
 * and prints GFLOP/s (2 x MACs per pass; dx and dW each count one forward's FLOPs). Times are the
 * MINIMUM over repetitions (robust to other processes stealing the CPU). These figures are the
 * measurements behind the per-shape rules in src/kernels/conv_direct.c (docs/PERF.md).
 * With --ab-dw-ip it instead pairs the dW pass (production rules) with the 1x1 dW kernel's in-place
 * path off and on (rn_conv_set_dw1x1_inplace), alternating off, on, on, off, ... R times each.
 * --ab-ukr, --ab-rules, --ab-direct and --ab-carry pair the three passes the same way (--help).
 * Usage: rn-bench-conv [--threads T] [--reps R] [--ab-dw-ip | --ab-ukr | --ab-rules | --ab-direct | --ab-carry]
 *        [CIN,COUT,K,STRIDE,HW,BATCH ...]
 *        (default: the ResNet-20 and ResNet-50 convolution shapes) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rn/kernels.h"
#include "rn/layers.h"
#include "rn/wino.h"

typedef struct {
  int cin, cout, k, stride, hw, batch;
} shape;

static const shape k_default[] = {
    {3, 16, 3, 1, 32, 128},     {16, 16, 3, 1, 32, 128},    {16, 32, 3, 2, 32, 128},  {32, 32, 3, 1, 16, 128},
    {32, 64, 3, 2, 16, 128},    {64, 64, 3, 1, 8, 128},     {3, 64, 7, 2, 224, 32},   {64, 64, 3, 1, 56, 32},
    {64, 256, 1, 1, 56, 32},    {256, 64, 1, 1, 56, 32},    {256, 128, 1, 1, 56, 32}, {128, 128, 3, 2, 56, 32},
    {256, 512, 1, 2, 56, 32},   {128, 128, 3, 1, 28, 32},   {128, 512, 1, 1, 28, 32}, {512, 128, 1, 1, 28, 32},
    {256, 256, 3, 2, 28, 32},   {256, 256, 3, 1, 14, 32},   {256, 1024, 1, 1, 14, 32}, {1024, 256, 1, 1, 14, 32},
    {512, 512, 3, 1, 7, 32},    {512, 2048, 1, 1, 7, 32},   {2048, 512, 1, 1, 7, 32},
};

static float *buf(size_t n, float v) {
  float *p = rn_alloc((n ? n : 1) * sizeof(float));
  for (size_t i = 0; i < n; i++) p[i] = v * (float)((i % 13) + 1) / 13.0f;
  return p;
}

/* mode 0 = gemm, 1 = rules, 2 = direct everywhere it applies */
static void set_mode(int mode) {
  rn_conv_set_direct(mode > 0);
  rn_conv_set_direct_all_widths(mode == 2);
  rn_conv_set_wino(mode == 1);
}

static void run(const shape *s, int reps) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, s->cin, s->cout, s->k, s->k, s->stride, s->k / 2, s->hw, s->hw, &e)) {
    fprintf(stderr, "rn-bench-conv: %s\n", e.msg);
    return;
  }
  const int n = s->batch;
  size_t nx = (size_t)n * d.h * d.w * d.cin, ny = (size_t)n * d.oh * d.ow * d.cout,
         nw = (size_t)d.cout * d.kh * d.kw * d.cin;
  size_t wsn = 0;
  for (int mode = 0; mode < 3; mode++) { /* the largest workspace any mode plans */
    set_mode(mode);
    size_t w = rn_conv_workspace(&d, n);
    if (w > wsn) wsn = w;
  }
  float *x = buf(nx, 1), *w = buf(nw, 0.1f), *dy = buf(ny, 0.01f), *y = buf(ny, 0), *dx = buf(nx, 0),
        *dw = buf(nw, 0), *ws = buf(wsn, 0);
  const double fl = 2.0 * (double)ny * d.kh * d.kw * d.cin;
  printf("%4d->%-4d %dx%d s%d @%-3d b%-3d", s->cin, s->cout, s->k, s->k, s->stride, s->hw, n);
  for (int mode = 0; mode < 3; mode++) {
    set_mode(mode);
    const int wg = mode == 1 && rn_conv_wino_ok(&d);
    const char *dir = mode == 0 ? "" : wg ? "W" : (rn_conv_direct_ok(&d) ? "D" : "g");
    double bf = 1e30, bx = 1e30, bw = 1e30;
    for (int r = 0; r < reps; r++) {
      double t0 = rn_now();
      rn_conv_forward(&d, n, x, w, y, ws);
      double t1 = rn_now();
      if (s->cin > 4) rn_conv_backward(&d, n, x, w, dy, dx, 0, NULL, ws);
      double t2 = rn_now();
      rn_conv_backward(&d, n, x, w, dy, NULL, 0, dw, ws);
      double t3 = rn_now();
      if (t1 - t0 < bf) bf = t1 - t0;
      if (t2 - t1 < bx) bx = t2 - t1;
      if (t3 - t2 < bw) bw = t3 - t2;
    }
    char fx[16] = "   -";
    if (s->cin > 4) snprintf(fx, sizeof fx, "%6.1f", fl / bx / 1e9);
    printf(" | %6.1f%s %s%s %6.1f%s", fl / bf / 1e9, dir, fx,
           mode == 0 ? "" : wg ? "W" : (s->cin > 4 ? (rn_conv_direct_dx_ok(&d) ? "D" : "g") : " "), fl / bw / 1e9,
           mode == 0 ? "" : wg ? "W" : (rn_conv_direct_bwd_ok(&d) ? "D" : "g"));
  }
  printf("\n");
  fflush(stdout);
  set_mode(1);
  free(x), free(w), free(dy), free(y), free(dx), free(dw), free(ws);
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* --ab-dw-ip / --ab-ukr: a pass (dW; or forward, dx and dW in turn) with the switch off and on in
 * turn; medians and the median of the on/off ratios of neighbouring runs. */
static void set_ab(int which, int on) {
  if (which == 1) rn_conv_set_dw1x1_inplace(on);
  else if (which == 2) rn_blas_set_ukr(on);
  else if (which == 3) set_mode(on); /* the GEMM path (off) against the production rules (on) */
  else if (which == 5) rn_conv_set_wino_carry(on);
  else set_mode(on ? 2 : 0);         /* 4: the GEMM path (off) against the direct kernel in every pass */
}
static void ab_pass(const shape *s, int reps, int which) {
  rn_conv_desc d;
  rn_err e;
  if (rn_conv_desc_init(&d, s->cin, s->cout, s->k, s->k, s->stride, s->k / 2, s->hw, s->hw, &e)) {
    fprintf(stderr, "rn-bench-conv: %s\n", e.msg);
    return;
  }
  const int n = s->batch;
  set_mode(0);
  size_t wsn = rn_conv_workspace(&d, n);
  set_mode(1);
  if (rn_conv_workspace(&d, n) > wsn) wsn = rn_conv_workspace(&d, n);
  size_t nx = (size_t)n * d.h * d.w * d.cin, ny = (size_t)n * d.oh * d.ow * d.cout,
         nw = (size_t)d.cout * d.kh * d.kw * d.cin;
  float *x = buf(nx, 1), *w = buf(nw, 0.1f), *dy = buf(ny, 0.01f), *dw = buf(nw, 0), *y = buf(ny, 0),
        *dx = buf(nx, 0), *ws = buf(wsn, 0), *ref = buf(nx > ny ? (nx > nw ? nx : nw) : (ny > nw ? ny : nw), 0);
  double *t[2] = {rn_alloc(sizeof(double) * (size_t)reps), rn_alloc(sizeof(double) * (size_t)reps)};
  double *ratio = rn_alloc(sizeof(double) * (size_t)reps);
  static const char *names[3] = {"fwd", "dx", "dW"};
  set_mode(1);
  const char kind = rn_conv_wino_ok(&d) ? 'W' : 0;
  for (int pass = which == 1 ? 2 : 0; pass < 3; pass++) {
    for (int r = 0; r < reps; r++)
      for (int k = 0; k < 2; k++) {
        const int on = (r & 1) ? 1 - k : k; /* off on, on off, ... */
        set_ab(which, on);
        double t0 = rn_now();
        if (pass == 0) rn_conv_forward(&d, n, x, w, y, ws);
        else if (pass == 1) rn_conv_backward(&d, n, x, w, dy, dx, 0, NULL, ws);
        else rn_conv_backward(&d, n, x, w, dy, NULL, 0, dw, ws);
        t[on][r] = rn_now() - t0;
      }
    /* the two settings' results compared: once more off, then on, from the same state (dW from
     * zero: the pass adds into it) */
    float *out = pass == 0 ? y : pass == 1 ? dx : dw;
    const size_t no = pass == 0 ? ny : pass == 1 ? nx : nw;
    double dmax = 0, amax = 0;
    for (int k = 0; k < 2; k++) {
      set_ab(which, k);
      if (pass == 2) memset(dw, 0, nw * sizeof(float));
      if (pass == 0) rn_conv_forward(&d, n, x, w, y, ws);
      else if (pass == 1) rn_conv_backward(&d, n, x, w, dy, dx, 0, NULL, ws);
      else rn_conv_backward(&d, n, x, w, dy, NULL, 0, dw, ws);
      if (k == 0) memcpy(ref, out, no * sizeof(float));
    }
    for (size_t i = 0; i < no; i++) {
      const double df = fabs((double)out[i] - ref[i]), a = fabs((double)ref[i]);
      if (df > dmax) dmax = df;
      if (a > amax) amax = a;
    }
    set_ab(which, 1);
    for (int r = 0; r < reps; r++) ratio[r] = t[1][r] / t[0][r];
    for (int k = 0; k < 2; k++) qsort(t[k], (size_t)reps, sizeof(double), cmp_double);
    qsort(ratio, (size_t)reps, sizeof(double), cmp_double);
    const double fl = 2.0 * (double)ny * d.kh * d.kw * d.cin;
    const int direct = pass == 2 ? rn_conv_direct_bwd_ok(&d) : pass == 1 ? rn_conv_direct_dx_ok(&d) : rn_conv_direct_ok(&d);
    const char how = which == 4 ? 'D' : kind ? kind : direct ? 'D' : 'g';
    printf("%4d->%-4d %dx%d s%d @%-3d b%-3d | %-3s (%c) off %7.2f ms %6.1f GF/s | on %7.2f ms %6.1f GF/s | "
           "on/off %.3f (%.3f-%.3f) | max |on-off| %.2e of max |off| %.2e\n",
           s->cin, s->cout, s->k, s->k, s->stride, s->hw, n, names[pass], how, t[0][reps / 2] * 1e3,
           fl / t[0][reps / 2] / 1e9, t[1][reps / 2] * 1e3, fl / t[1][reps / 2] / 1e9, ratio[reps / 2], ratio[0],
           ratio[reps - 1], dmax, amax);
    fflush(stdout);
  }
  free(x), free(w), free(dy), free(dw), free(y), free(dx), free(ws), free(ref), free(t[0]), free(t[1]), free(ratio);
}

int main(int argc, char **argv) {
  int threads = 0, reps = 5, i = 1, ab = 0;
  for (; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--ab-dw-ip")) {
      ab = 1;
    } else if (!strcmp(argv[i], "--ab-ukr")) {
      ab = 2;
    } else if (!strcmp(argv[i], "--ab-rules")) {
      ab = 3;
    } else if (!strcmp(argv[i], "--ab-direct")) {
      ab = 4;
    } else if (!strcmp(argv[i], "--ab-carry")) {
      ab = 5;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: rn-bench-conv [--threads T] [--reps R] [--ab-dw-ip | --ab-ukr | --ab-rules | --ab-direct |\n"
             "                     --ab-carry] [CIN,COUT,K,STRIDE,HW,BATCH ...]\n"
             "GFLOP/s of the forward, dx and dW passes of one convolution shape: GEMM path (direct\n"
             "kernel off), the production rules, and the direct kernel wherever it applies;\n"
             "D/g/W after a figure = that pass ran direct / on the GEMM path / Winograd (rules only;\n"
             "its GFLOP/s count the direct convolution's FLOPs). Minimum time over R\n"
             "repetitions (default 5). Default shapes: the ResNet-20 and ResNet-50 convolutions.\n"
             "--ab-dw-ip: instead, the dW pass (production rules) with the 1x1 dW kernel's in-place\n"
             "path (rn_conv_set_dw1x1_inplace) off and on in turn, R times each: median ms and GF/s of\n"
             "each, the median (range) of the on/off ratios of neighbouring runs, and the largest\n"
             "difference between the two settings' results (one more run of each) beside the largest\n"
             "value.\n"
             "--ab-ukr: the same for the forward, dx and dW passes in turn with Winograd's products on\n"
             "BLIS's micro-kernel, its kernels packed once per call (rn_blas_set_ukr) off and on.\n"
             "--ab-rules: the same with the GEMM path (im2col + BLIS; off) against the production\n"
             "rules (direct kernels, Winograd; on).\n"
             "--ab-direct: the same with the GEMM path (off) against the direct kernel in every pass,\n"
             "whatever the width rules (on; no Winograd): what a rule change would gain.\n"
             "--ab-carry: the same with Winograd F(4,3)'s input transforms carrying the two columns a\n"
             "tile shares with the next along its row (rn_conv_set_wino_carry) off and on.\n");
      return 0;
    } else {
      break;
    }
  }
  rn_err e;
  if (reps < 1) reps = 1;
  if (rn_blas_init(NULL, threads, stderr, &e)) {
    fprintf(stderr, "rn-bench-conv: %s\n", e.msg);
    return 1;
  }
  if (!ab)
    printf("GF/s, %d thread(s), min of %d         |   gemm: fwd    dx     dW |  rules: fwd    dx     dW | "
         "direct: fwd    dx     dW\n",
         rn_blas_threads(), reps);
  if (i < argc) {
    for (; i < argc; i++) {
      shape s;
      if (sscanf(argv[i], "%d,%d,%d,%d,%d,%d", &s.cin, &s.cout, &s.k, &s.stride, &s.hw, &s.batch) != 6 ||
          s.cin < 1 || s.cout < 1 || s.k < 1 || s.stride < 1 || s.hw < s.k || s.batch < 1) {
        fprintf(stderr, "rn-bench-conv: bad shape '%s' (want CIN,COUT,K,STRIDE,HW,BATCH)\n", argv[i]);
        return 2;
      }
      ab ? ab_pass(&s, reps, ab) : run(&s, reps);
    }
  } else {
    for (size_t k = 0; k < sizeof k_default / sizeof *k_default; k++) ab ? ab_pass(&k_default[k], reps, ab) : run(&k_default[k], reps);
  }
  return 0;
}
